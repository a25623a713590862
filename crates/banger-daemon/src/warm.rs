//! Warm snapshots: one booted snapshot per VM shape, so `vm run`/`vm create` restore in
//! about a second instead of booting for a minute under TCG.
//!
//! Layout: `<state>/snapshots/warm/<key>/` with `key.json` ([`WarmKey`]) and generations
//! `g<unix-nanos>/`, each a complete VMM snapshot (written atomically by banger-vmm: a
//! kill -9 leaves only `g….partial`, which [`Daemon::warm_gc`] removes). The key names the
//! image, a hash of what the snapshot depends on (the image's root filesystem, the
//! kernel's files, the VMM binary: when one changes the key changes and the old snapshot
//! is stale) and the shape (VMM, vCPUs, memory, disk size). A generation in use as the
//! backing file of restored VMs' disks (their `warm_from`) is never removed: a stale or
//! broken one is marked `retired` and removed once no VM uses it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use banger_store::VmRecord;
use banger_vmm::{AfterSnapshot, Driver, RunningVmm, Snapshot, Vmm, VmmSpec};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Daemon, DaemonError};

const KEY_FILE: &str = "key.json";
const RETIRED: &str = "retired";

/// What a warm snapshot is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmKey {
    pub image: String,
    /// Hash of the image rootfs, kernel files and VMM binary (size + mtime each).
    pub identity: String,
    pub vmm: banger_vmm::VmmKind,
    pub vcpu: u32,
    pub memory_mib: u64,
    pub disk_bytes: u64,
}

impl WarmKey {
    pub fn dir_name(&self) -> String {
        let image: String = self
            .image
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!(
            "{image}-{}-{}-c{}-m{}-d{}",
            self.identity,
            self.vmm,
            self.vcpu,
            self.memory_mib,
            self.disk_bytes >> 20
        )
    }
}

/// Keys whose snapshot is being made by this daemon process, and how long a restored
/// guest's agent may take to answer.
pub struct WarmState {
    making: std::sync::Mutex<HashSet<String>>,
    pub agent_timeout: std::time::Duration,
}

impl Default for WarmState {
    fn default() -> Self {
        WarmState {
            making: Default::default(),
            agent_timeout: std::time::Duration::from_secs(30),
        }
    }
}

fn stamp(path: &Path, h: &mut Sha256) {
    let m = std::fs::metadata(path).ok();
    let mtime = m
        .as_ref()
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.update(format!(
        "{}:{}:{mtime};",
        path.display(),
        m.map(|m| m.len()).unwrap_or(0)
    ));
}

fn vmm_bin(driver: &Driver) -> &Path {
    match driver {
        Driver::Firecracker(d) => &d.bin,
        Driver::Qemu(d) => &d.bin,
    }
}

impl Daemon {
    pub fn warm_root(&self) -> PathBuf {
        self.paths.state_dir.join("snapshots").join("warm")
    }

    /// The identity hash of `image` under `driver`.
    fn warm_identity(&self, image: &str, driver: &Driver) -> Result<String, DaemonError> {
        let img = self.store.get_image(image)?;
        let kernel = self.store.get_kernel(&img.kernel)?;
        let mut h = Sha256::new();
        stamp(
            &Path::new(&img.dir).join(banger_image::store::ROOTFS),
            &mut h,
        );
        if let Ok(k) = banger_image::kernel::KernelRecord::load(Path::new(&kernel.dir)) {
            for p in [Some(&k.vmlinuz), k.vmlinux.as_ref(), k.initrd.as_ref()]
                .into_iter()
                .flatten()
            {
                stamp(p, &mut h);
            }
        }
        stamp(vmm_bin(driver), &mut h);
        Ok(h.finalize()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect())
    }

    pub(crate) fn warm_key(&self, rec: &VmRecord, driver: &Driver) -> Result<WarmKey, DaemonError> {
        Ok(WarmKey {
            image: rec.image.clone(),
            identity: self.warm_identity(&rec.image, driver)?,
            vmm: driver.kind(),
            vcpu: rec.vcpu,
            memory_mib: rec.memory_mib,
            disk_bytes: rec.disk_bytes,
        })
    }

    /// Whether a create of `image` with `spec` would restore from a warm snapshot.
    pub(crate) fn warm_available(&self, image: &str, spec: &banger_proto::VmSpec) -> bool {
        self.warm_for(image, spec).is_some()
    }

    /// The warm snapshot a create of `image` with `spec` would restore from.
    pub(crate) fn warm_for(
        &self,
        image: &str,
        spec: &banger_proto::VmSpec,
    ) -> Option<(WarmKey, Snapshot)> {
        let driver = self.driver_for(None).ok()?;
        let identity = self.warm_identity(image, &driver).ok()?;
        let key = WarmKey {
            image: image.to_string(),
            identity,
            vmm: driver.kind(),
            vcpu: spec.vcpu.value,
            memory_mib: spec.memory_mib.value,
            disk_bytes: spec.disk_bytes.value,
        };
        let snap = self.warm_lookup(&key)?;
        Some((key, snap))
    }

    /// The newest usable generation for `key`. One that fails its checks is retired
    /// with a warning (and made again later).
    pub(crate) fn warm_lookup(&self, key: &WarmKey) -> Option<Snapshot> {
        let dir = self.warm_root().join(key.dir_name());
        let mut gens = generations(&dir);
        gens.retain(|g| !g.join(RETIRED).exists());
        let newest = gens.pop()?;
        match Snapshot::open(&newest) {
            Ok(s) => Some(s),
            Err(e) => {
                self.warm_discard(&newest, &e.to_string());
                None
            }
        }
    }

    /// Takes a generation out of use: removed now unless restored VMs' disks back onto
    /// it, else marked retired and removed by [`Daemon::warm_gc`] once they are gone.
    pub fn warm_discard(&self, generation: &Path, why: &str) {
        tracing::warn!(snapshot = %generation.display(), "discarding warm snapshot: {why}");
        if self.warm_users(generation).is_empty() {
            let _ = std::fs::remove_dir_all(generation);
        } else if let Err(e) = std::fs::write(generation.join(RETIRED), why) {
            tracing::warn!(snapshot = %generation.display(), "cannot retire it: {e}");
        }
    }

    /// VMs whose disks are overlays on `generation`.
    fn warm_users(&self, generation: &Path) -> Vec<String> {
        let g = generation.display().to_string();
        self.store
            .list_vms()
            .unwrap_or_default()
            .into_iter()
            .filter(|v| crate::vms::extra_of(v).warm_from.as_deref() == Some(g.as_str()))
            .map(|v| v.name)
            .collect()
    }

    /// Snapshots the running `vm` (booted from `spec`, not yet used by anyone) as the
    /// warm snapshot of `key`, unless one exists or is being made. The guest is paused
    /// while its state, memory and disks are copied, then resumed. `Ok(true)` when made.
    pub(crate) async fn warm_make(
        &self,
        key: &WarmKey,
        driver: &Driver,
        vm: &mut RunningVmm,
        spec: &VmmSpec,
    ) -> Result<bool, DaemonError> {
        let name = key.dir_name();
        {
            let mut making = self.warm.making.lock().unwrap_or_else(|p| p.into_inner());
            if self.warm_lookup(key).is_some() || !making.insert(name.clone()) {
                return Ok(false);
            }
        }
        let result = async {
            let dir = self.warm_root().join(&name);
            crate::ensure_private_dir(&dir).map_err(DaemonError::internal)?;
            let text = serde_json::to_vec_pretty(key).map_err(DaemonError::internal)?;
            std::fs::write(dir.join(KEY_FILE), text).map_err(DaemonError::internal)?;
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let dest = dir.join(format!("g{nanos}"));
            let snap = driver
                .snapshot(vm, spec, &dest, AfterSnapshot::Resume)
                .await
                .map_err(|e| {
                    DaemonError::internal(format!("warm snapshot of {}: {e}", spec.name))
                })?;
            tracing::info!(vm = %spec.name, snapshot = %snap.dir.display(),
                save_ms = snap.manifest.save_ms, disk_ms = snap.manifest.disk_copy_ms,
                "warm snapshot made");
            Ok(true)
        }
        .await;
        self.warm
            .making
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&name);
        result
    }

    /// Removes interrupted (`.partial`) generations, and stale or retired ones no VM
    /// uses: their image is gone, or its rootfs, kernel or the VMM binary changed.
    /// Returns what it removed.
    pub fn warm_gc(&self) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        let Ok(keys) = std::fs::read_dir(self.warm_root()) else {
            return removed;
        };
        for key_dir in keys.flatten().map(|e| e.path()) {
            let key: Option<WarmKey> = std::fs::read(key_dir.join(KEY_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let stale = match &key {
                None => true,
                Some(k) => self
                    .selection
                    .as_ref()
                    .ok()
                    .and_then(|sel| Driver::for_kind(k.vmm, sel).ok())
                    .and_then(|d| self.warm_identity(&k.image, &d).ok())
                    .is_none_or(|id| id != k.identity),
            };
            for entry in std::fs::read_dir(&key_dir).into_iter().flatten().flatten() {
                let g = entry.path();
                let n = entry.file_name().to_string_lossy().into_owned();
                let partial = n.ends_with(".partial");
                let is_gen = n.starts_with('g') && g.is_dir();
                let drop_it = partial
                    || is_gen
                        && (stale || g.join(RETIRED).exists())
                        && self.warm_users(&g).is_empty();
                if drop_it && std::fs::remove_dir_all(&g).is_ok() {
                    removed.push(g);
                }
            }
            if generations(&key_dir).is_empty() && stale {
                let _ = std::fs::remove_dir_all(&key_dir);
            }
        }
        for r in &removed {
            tracing::info!(snapshot = %r.display(), "removed a stale or interrupted warm snapshot");
        }
        removed
    }

    /// Every complete generation, newest last within each key.
    pub fn warm_list(&self) -> Vec<(WarmKey, Snapshot, bool)> {
        let mut out = Vec::new();
        for key_dir in std::fs::read_dir(self.warm_root())
            .into_iter()
            .flatten()
            .flatten()
        {
            let Some(key) = std::fs::read(key_dir.path().join(KEY_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice::<WarmKey>(&b).ok())
            else {
                continue;
            };
            for g in generations(&key_dir.path()) {
                if let Ok(s) = Snapshot::open(&g) {
                    out.push((key.clone(), s, g.join(RETIRED).exists()));
                }
            }
        }
        out
    }
}

/// The wire form of one generation.
pub fn warm_info(
    key: &WarmKey,
    snap: &Snapshot,
    made: bool,
    retired: bool,
) -> banger_proto::WarmSnapshotInfo {
    let m = &snap.manifest;
    banger_proto::WarmSnapshotInfo {
        image: key.image.clone(),
        vmm: key.vmm.to_string(),
        vcpu: key.vcpu,
        memory_mib: key.memory_mib,
        disk_bytes: key.disk_bytes,
        dir: snap.dir.display().to_string(),
        created_unix: m.created_unix,
        state_bytes: m.state_bytes,
        save_ms: m.save_ms,
        disk_copy_ms: m.disk_copy_ms,
        made,
        retired,
    }
}

/// Complete generation dirs of a key dir, oldest first.
fn generations(key_dir: &Path) -> Vec<PathBuf> {
    let mut g: Vec<PathBuf> = std::fs::read_dir(key_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('g') && !n.ends_with(".partial"))
        })
        .collect();
    g.sort();
    g
}

#[cfg(test)]
#[path = "warm_tests.rs"]
mod tests;
