//! The configuration the daemon runs with, where it came from, and its
//! reload (SIGHUP, or `banger config reload`).
//!
//! Why a module: `config show` and `doctor` must report what the *running*
//! daemon uses, not what the file says now, and a changed file must be
//! noticed and applied without restarting VMs where that is safe.
//!
//! Keys split in two. Those read each time they are used (default image,
//! VM sizes, the default egress policy, file_sync, the catalog, insecure
//! registries) apply on reload. Those wired into the running host when the
//! daemon started ([`RESTART_KEYS`]: bridge, subnet, guest isolation, the
//! DNS listener and its upstreams, the VMM and its binaries) need a
//! restart; a reload that changes any of them applies nothing and names
//! them, so the daemon never runs with half of a file. An invalid file is
//! refused with its error and the running values stay.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use banger_core::Config;
use banger_core::config::HostFacts;
use banger_proto::{ConfigReload, ConfigValue, DaemonConfig};

/// Keys that take effect only when the daemon starts.
pub const RESTART_KEYS: &[&str] = &[
    "firecracker_bin",
    "qemu_bin",
    "vmm",
    "network.bridge",
    "network.subnet",
    "network.isolate_vms",
    "network.block_lan",
    "dns.port",
    "dns.listen",
    "dns.auto_resolved",
    "dns.upstream_resolv_conf",
];

struct Loaded {
    config: Arc<Config>,
    /// The file's bytes when loaded (`None`: there was no file).
    bytes: Option<Vec<u8>>,
    at: SystemTime,
    last_reload: Option<ConfigReload>,
}

/// The running configuration; cheap to read from any task.
pub struct Settings {
    file: Option<PathBuf>,
    inner: RwLock<Loaded>,
}

fn read_bytes(file: Option<&Path>) -> Option<Vec<u8>> {
    file.and_then(|f| std::fs::read(f).ok())
}

/// Rows as the daemon sees them (the home it expands `~` against, the
/// host facts its VM sizes come from).
fn rows(config: &Config, facts: HostFacts, home: &Path) -> Vec<ConfigValue> {
    config
        .show(facts, home)
        .into_iter()
        .map(Into::into)
        .collect()
}

impl Settings {
    /// `config` was loaded from `file` (which may not exist).
    pub fn new(config: Config, file: Option<PathBuf>) -> Settings {
        let bytes = read_bytes(file.as_deref());
        Settings {
            file,
            inner: RwLock::new(Loaded {
                config: Arc::new(config),
                bytes,
                at: SystemTime::now(),
                last_reload: None,
            }),
        }
    }

    /// The values in force now.
    pub fn get(&self) -> Arc<Config> {
        Arc::clone(&self.inner.read().unwrap_or_else(|e| e.into_inner()).config)
    }

    /// Reads the file again and applies it if only live keys changed.
    pub fn reload(&self, facts: HostFacts, home: &Path) -> ConfigReload {
        let bytes = read_bytes(self.file.as_deref());
        let parsed = match (&self.file, &bytes) {
            (Some(f), Some(b)) => match std::str::from_utf8(b) {
                Ok(text) => Config::parse(text, f).map_err(|e| e.to_string()),
                Err(_) => Err(format!("{} is not UTF-8 text", f.display())),
            },
            _ => Ok(Config::default()),
        };
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let outcome = match parsed {
            Err(error) => ConfigReload::Invalid { error },
            Ok(mut new) => {
                new.source = inner.config.source.clone();
                let old = rows(&inner.config, facts, home);
                let changed: Vec<String> = rows(&new, facts, home)
                    .into_iter()
                    .filter(|r| !old.contains(r))
                    .map(|r| r.key)
                    .collect();
                let restart: Vec<String> = changed
                    .iter()
                    .filter(|k| RESTART_KEYS.contains(&k.as_str()))
                    .cloned()
                    .collect();
                if changed.is_empty() {
                    inner.bytes = bytes;
                    ConfigReload::Unchanged
                } else if !restart.is_empty() {
                    ConfigReload::NeedsRestart { keys: restart }
                } else {
                    inner.config = Arc::new(new);
                    inner.bytes = bytes;
                    inner.at = SystemTime::now();
                    ConfigReload::Applied { keys: changed }
                }
            }
        };
        match &outcome {
            ConfigReload::Invalid { .. } | ConfigReload::NeedsRestart { .. } => {
                tracing::warn!("config reload: {outcome}")
            }
            _ => tracing::info!("config reload: {outcome}"),
        }
        inner.last_reload = Some(outcome.clone());
        outcome
    }

    /// What `GET /v1/config` answers.
    pub fn report(&self, facts: HostFacts, home: &Path) -> DaemonConfig {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let now = read_bytes(self.file.as_deref());
        DaemonConfig {
            file: self
                .file
                .as_ref()
                .map_or_else(|| "(none)".into(), |f| f.display().to_string()),
            file_exists: now.is_some(),
            loaded_at_unix: inner
                .at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            changed_since_load: now != inner.bytes,
            values: rows(&inner.config, facts, home),
            last_reload: inner.last_reload.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> HostFacts {
        HostFacts::probe()
    }

    fn value(s: &Settings, key: &str) -> serde_json::Value {
        s.report(facts(), Path::new("/home/u"))
            .values
            .into_iter()
            .find(|v| v.key == key)
            .map(|v| v.value)
            .unwrap_or_else(|| panic!("no {key}"))
    }

    #[test]
    fn live_keys_apply_restart_keys_wait_invalid_files_change_nothing() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("config.toml");
        std::fs::write(&f, "default_image_name = \"one\"\n").expect("write");
        let s = Settings::new(Config::load(&f).expect("load"), Some(f.clone()));
        let home = Path::new("/home/u");
        assert!(!s.report(facts(), home).changed_since_load);
        assert_eq!(s.reload(facts(), home), ConfigReload::Unchanged);

        std::fs::write(&f, "default_image_name = \"two\"\n").expect("write");
        assert!(s.report(facts(), home).changed_since_load, "noticed");
        assert_eq!(value(&s, "default_image_name"), "one", "not yet applied");
        assert_eq!(
            s.reload(facts(), home),
            ConfigReload::Applied {
                keys: vec!["default_image_name".into()]
            }
        );
        assert_eq!(s.get().image_name().value, "two");
        assert!(!s.report(facts(), home).changed_since_load);

        std::fs::write(
            &f,
            "default_image_name = \"three\"\n[network]\nbridge = \"banger1\"\n",
        )
        .expect("write");
        assert_eq!(
            s.reload(facts(), home),
            ConfigReload::NeedsRestart {
                keys: vec!["network.bridge".into()]
            }
        );
        assert_eq!(s.get().image_name().value, "two", "nothing half-applied");
        assert!(s.report(facts(), home).changed_since_load);

        std::fs::write(&f, "default_image_name = 3\n").expect("write");
        let r = s.reload(facts(), home);
        assert!(
            matches!(&r, ConfigReload::Invalid { error } if error.contains("default_image_name")),
            "{r:?}"
        );
        assert_eq!(s.get().image_name().value, "two");
        assert_eq!(s.report(facts(), home).last_reload, Some(r));

        // The file removed: every value back to built in (live ones only).
        std::fs::remove_file(&f).expect("rm");
        let r = s.reload(facts(), home);
        assert!(matches!(r, ConfigReload::Applied { .. }), "{r:?}");
        assert!(!s.report(facts(), home).file_exists);
    }
}
