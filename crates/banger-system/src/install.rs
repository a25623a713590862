//! `banger system install | status | restart | uninstall`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::error::{Result, SystemError};
use crate::fsutil::{copy_atomic, ensure_dir, remove_path, write_atomic};
use crate::layout::{
    BIN_DIR, BINARIES, CACHE_DIR, DAEMON_UNIT, ETC_DIR, HostFacts, LIB_DIR, Layout, Owner,
    ROOT_RUNTIME_DIR, ROOT_UNIT, RUNTIME_DIR, STATE_DIR, UNIT_DIR, kvm_group,
};
use crate::metadata::{InstallMetadata, METADATA_MODE};
use crate::sockets::{self, SocketProbe, WaitFailure};
use crate::systemctl::Systemctl;
use crate::units::{UnitParams, render_daemon_unit, render_root_unit};

pub const BINARY_MODE: u32 = 0o755;
pub const UNIT_MODE: u32 = 0o644;
pub const DIR_MODE: u32 = 0o755;

/// Both units, helper first: the daemon expects its helper to be there.
const UNITS: [&str; 2] = [ROOT_UNIT, DAEMON_UNIT];

#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// User name of the owner (`--owner`).
    pub owner: String,
    /// Root prefix (`--root DIR`); `/` on a real host.
    pub layout: Layout,
    /// Where `banger`, `bangerd` and `bangerd-root` are; `None` = the
    /// directory of the running executable.
    pub source_dir: Option<PathBuf>,
    /// The guest agent when it is not in `source_dir` (it is often built
    /// separately, statically linked).
    pub agent: Option<PathBuf>,
    pub version: String,
    /// Group granting /dev/kvm; detected by [`InstallOptions::new`].
    pub kvm_group: Option<String>,
    /// How long to wait for both sockets to answer after starting.
    pub ready_timeout: Duration,
}

impl InstallOptions {
    pub fn new(owner: impl Into<String>) -> Self {
        InstallOptions {
            owner: owner.into(),
            layout: Layout::host(),
            source_dir: None,
            agent: None,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            kvm_group: kvm_group(),
            ready_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct InstallReport {
    pub metadata: InstallMetadata,
    /// The installation this one replaced, if any.
    pub previous_version: Option<String>,
    pub upgraded: bool,
    /// Files written, under the root prefix.
    pub written: Vec<PathBuf>,
}

fn require_root(facts: &HostFacts, command: &'static str) -> Result<()> {
    if facts.is_root() {
        Ok(())
    } else {
        Err(SystemError::NotRoot { command })
    }
}

fn source_binaries(opts: &InstallOptions) -> Result<Vec<(&'static str, PathBuf, PathBuf)>> {
    let source_dir = match &opts.source_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .map_err(SystemError::CurrentExe)?
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| {
                SystemError::CurrentExe(std::io::Error::other("executable has no parent directory"))
            })?,
    };
    let mut out = Vec::new();
    for (name, dir) in BINARIES {
        let src = match (name, &opts.agent) {
            ("banger-vsock-agent", Some(agent)) => agent.clone(),
            // Running the installed banger (…/bin): its agent is in
            // …/lib/banger, where a previous install put it.
            ("banger-vsock-agent", None) if !source_dir.join(name).is_file() => source_dir
                .parent()
                .map(|p| p.join("lib/banger").join(name))
                .filter(|p| p.is_file())
                .unwrap_or_else(|| source_dir.join(name)),
            _ => source_dir.join(name),
        };
        if !src.is_file() {
            return Err(SystemError::MissingBinary { name, path: src });
        }
        out.push((name, src, opts.layout.at(dir).join(name)));
    }
    Ok(out)
}

/// Install or upgrade in place. State directories are never touched here:
/// systemd creates them on first start and keeps them across upgrades.
pub fn install(
    opts: &InstallOptions,
    systemctl: &dyn Systemctl,
    facts: &HostFacts,
) -> Result<InstallReport> {
    require_root(facts, "install")?;
    if !facts.systemd_booted {
        return Err(SystemError::SystemdRequired);
    }
    let owner = Owner::lookup(&opts.owner)?;
    // Find every input before changing anything, so a missing binary leaves
    // the host as it was.
    let binaries = source_binaries(opts)?;
    let mut params = UnitParams::standard(owner.clone(), opts.kvm_group.clone(), &opts.version);
    params.helper_args =
        crate::helper_net::helper_net_args(&crate::helper_net::owner_config(&owner)?);
    let daemon_unit = render_daemon_unit(&params)?;
    let root_unit = render_root_unit(&params)?;

    let layout = &opts.layout;
    let previous = match InstallMetadata::read(layout) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!("replacing unreadable install metadata: {e}");
            None
        }
    };
    let upgraded = previous.is_some() || UNITS.iter().any(|u| layout.unit_file(u).exists());

    let mut written = Vec::new();
    for dir in [BIN_DIR, LIB_DIR, ETC_DIR, UNIT_DIR] {
        ensure_dir(&layout.at(dir), DIR_MODE)?;
    }
    for (_, src, dst) in &binaries {
        copy_atomic(src, dst, BINARY_MODE)?;
        written.push(dst.clone());
    }
    for (unit, text) in [(ROOT_UNIT, &root_unit), (DAEMON_UNIT, &daemon_unit)] {
        let path = layout.unit_file(unit);
        write_atomic(&path, text.as_bytes(), UNIT_MODE)?;
        written.push(path);
    }
    let metadata = InstallMetadata::new(&owner, &opts.version, crate::fsutil::rfc3339_now());
    let meta_path = layout.metadata_file();
    write_atomic(&meta_path, metadata.to_json().as_bytes(), METADATA_MODE)?;
    written.push(meta_path);

    systemctl.run(&["daemon-reload"])?;
    if upgraded {
        systemctl.run(&["enable", ROOT_UNIT, DAEMON_UNIT])?;
        // KillMode=process: restarting bangerd leaves running VMs alone.
        systemctl.run(&["restart", ROOT_UNIT, DAEMON_UNIT])?;
    } else {
        systemctl.run(&["enable", "--now", ROOT_UNIT, DAEMON_UNIT])?;
    }
    wait_for_services(layout, opts.ready_timeout)?;

    Ok(InstallReport {
        metadata,
        previous_version: previous.map(|p| p.version),
        upgraded,
        written,
    })
}

fn wait_for_services(layout: &Layout, timeout: Duration) -> Result<()> {
    let root_socket = layout.root_socket();
    let socket = layout.socket();
    match sockets::wait_all(&[&root_socket, &socket], timeout, || Ok(())) {
        Ok(()) => Ok(()),
        Err(WaitFailure::Timeout(i)) => {
            let (what, unit, path) = if i == 0 {
                ("bangerd-root", ROOT_UNIT, root_socket)
            } else {
                ("bangerd", DAEMON_UNIT, socket)
            };
            Err(SystemError::SocketTimeout {
                what,
                path,
                waited: timeout,
                hint: format!(
                    "see `systemctl status {unit}` and `journalctl -u {unit}` for why it did not start"
                ),
            })
        }
        // The closure above never reports a death.
        Err(WaitFailure::Died(why)) => Err(SystemError::Systemctl {
            args: "start".into(),
            detail: why,
        }),
    }
}

/// `sudo banger system restart`: both services, helper first. VMs survive
/// (KillMode=process); the new daemon re-adopts them.
pub fn restart(
    layout: &Layout,
    systemctl: &dyn Systemctl,
    facts: &HostFacts,
    ready_timeout: Duration,
) -> Result<()> {
    require_root(facts, "restart")?;
    if !facts.systemd_booted {
        return Err(SystemError::SystemdRequired);
    }
    systemctl.run(&["restart", ROOT_UNIT, DAEMON_UNIT])?;
    wait_for_services(layout, ready_timeout)
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    pub unit: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub main_pid: Option<u32>,
    /// Why the service manager could not be asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub socket: SocketProbe,
}

impl ServiceStatus {
    pub fn is_active(&self) -> bool {
        self.active_state.as_deref() == Some("active")
    }
}

/// `banger system status` (`--json` serializes this).
#[derive(Debug, Clone, Serialize)]
pub struct SystemStatus {
    pub installed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<InstallMetadata>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata_error: Option<String>,
    pub systemd_booted: bool,
    /// bangerd-root first, then bangerd.
    pub services: Vec<ServiceStatus>,
}

impl SystemStatus {
    /// Both services active and both sockets answering.
    pub fn healthy(&self) -> bool {
        self.services
            .iter()
            .all(|s| s.is_active() && s.socket.answering)
    }

    /// The human-readable form of `banger system status`.
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        match &self.metadata {
            Some(m) => {
                let _ = writeln!(
                    out,
                    "banger {} installed {} for {} (uid {}, group {})",
                    m.version, m.installed_at, m.owner, m.uid, m.group
                );
            }
            None => out.push_str(
                "banger is not installed as a system service \
                 (`sudo banger system install --owner USER`)\n",
            ),
        }
        if let Some(e) = &self.metadata_error {
            let _ = writeln!(out, "install metadata: {e}");
        }
        for s in &self.services {
            let state = match (&s.active_state, &s.sub_state) {
                (Some(a), Some(sub)) => format!("{a} ({sub})"),
                (Some(a), None) => a.clone(),
                _ => "unknown".to_owned(),
            };
            let pid = s
                .main_pid
                .map(|p| format!("pid {p}"))
                .unwrap_or_else(|| "no pid".to_owned());
            let _ = writeln!(out, "{:<21} {state}, {pid}", s.unit);
            if let Some(e) = &s.error {
                let _ = writeln!(out, "{:<21} {e}", "");
            }
            let sock = if s.socket.answering {
                "answering".to_owned()
            } else {
                format!(
                    "not answering: {}",
                    s.socket.error.as_deref().unwrap_or("unknown")
                )
            };
            let _ = writeln!(out, "{:<21} socket {} {sock}", "", s.socket.path.display());
        }
        out
    }
}

fn parse_show(out: &str) -> std::collections::HashMap<&str, &str> {
    out.lines().filter_map(|l| l.split_once('=')).collect()
}

/// Needs no privilege: anyone may look. A root-helper socket that answers
/// "permission denied" to a non-owner is reported as such.
pub fn status(layout: &Layout, systemctl: &dyn Systemctl, facts: &HostFacts) -> SystemStatus {
    let (metadata, metadata_error) = match InstallMetadata::read(layout) {
        Ok(m) => (m, None),
        Err(e) => (None, Some(e.to_string())),
    };
    let services = [
        (ROOT_UNIT, layout.root_socket()),
        (DAEMON_UNIT, layout.socket()),
    ]
    .into_iter()
    .map(|(unit, socket)| {
        let mut s = ServiceStatus {
            unit: unit.to_owned(),
            load_state: None,
            active_state: None,
            sub_state: None,
            main_pid: None,
            error: None,
            socket: sockets::probe(&socket),
        };
        if !facts.systemd_booted {
            s.error = Some("systemd is not running on this host".into());
            return s;
        }
        let props = [
            "-p",
            "LoadState",
            "-p",
            "ActiveState",
            "-p",
            "SubState",
            "-p",
            "MainPID",
        ];
        let mut args = vec!["show"];
        args.extend(props);
        args.push(unit);
        match systemctl.run(&args) {
            Ok(out) => {
                let kv = parse_show(&out);
                let get = |k: &str| kv.get(k).map(|v| (*v).to_owned()).filter(|v| !v.is_empty());
                s.load_state = get("LoadState");
                s.active_state = get("ActiveState");
                s.sub_state = get("SubState");
                s.main_pid = kv
                    .get("MainPID")
                    .and_then(|v| v.parse().ok())
                    .filter(|p| *p != 0);
            }
            Err(e) => s.error = Some(e.to_string()),
        }
        s
    })
    .collect();
    SystemStatus {
        installed: metadata.is_some(),
        owner: metadata.as_ref().map(|m| m.owner.clone()),
        version: metadata.as_ref().map(|m| m.version.clone()),
        metadata,
        metadata_error,
        systemd_booted: facts.systemd_booted,
        services,
    }
}

#[derive(Debug, Clone)]
pub struct UninstallOptions {
    pub layout: Layout,
    /// Also remove /var/lib/banger, /var/cache/banger, /run/banger and
    /// /run/banger-root.
    pub purge: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct UninstallReport {
    /// Paths removed, under the root prefix.
    pub removed: Vec<PathBuf>,
    /// State left in place (without --purge).
    pub kept: Vec<PathBuf>,
    /// Steps that could not be done but did not stop the uninstall.
    pub warnings: Vec<String>,
}

/// Stop and remove both services and everything install wrote. User files
/// under any home directory are never touched: nothing here names one.
///
/// Running VMs are stopped: every process left in bangerd's cgroup gets
/// SIGTERM (KillMode=process would otherwise leave VMMs behind an
/// uninstalled daemon). A caller that wants VMs shut down cleanly asks the
/// daemon first.
pub fn uninstall(
    opts: &UninstallOptions,
    systemctl: &dyn Systemctl,
    facts: &HostFacts,
) -> Result<UninstallReport> {
    require_root(facts, "uninstall")?;
    let layout = &opts.layout;
    let mut report = UninstallReport::default();
    if facts.systemd_booted {
        // Best effort: a unit that is already gone or stopped is fine.
        let steps: [&[&str]; 2] = [
            &["kill", "--kill-who=all", "--signal=SIGTERM", DAEMON_UNIT],
            &["disable", "--now", DAEMON_UNIT, ROOT_UNIT],
        ];
        for step in steps {
            if let Err(e) = systemctl.run(step) {
                report.warnings.push(e.to_string());
            }
        }
    } else {
        report.warnings.push(
            "systemd is not running: no service was stopped; stop any foreground \
             `banger system run` yourself"
                .into(),
        );
    }

    let mut remove = |p: PathBuf| -> Result<()> {
        if remove_path(&p)? {
            report.removed.push(p);
        }
        Ok(())
    };
    for unit in UNITS {
        remove(layout.unit_file(unit))?;
    }
    for (name, dir) in BINARIES {
        remove(layout.at(dir).join(name))?;
    }
    remove(layout.at(LIB_DIR))?;
    remove(layout.at(ETC_DIR))?;
    if facts.systemd_booted
        && let Err(e) = systemctl.run(&["daemon-reload"])
    {
        report.warnings.push(e.to_string());
    }
    for dir in [STATE_DIR, CACHE_DIR, RUNTIME_DIR, ROOT_RUNTIME_DIR] {
        let p = layout.at(dir);
        if opts.purge {
            remove(p)?;
        } else if p.exists() {
            report.kept.push(p);
        }
    }
    Ok(report)
}
