//! Snapshots on disk: what a VMM-level snapshot holds, how it is written atomically, and
//! how it is checked before a restore.
//!
//! A snapshot is one directory:
//! - `state`: the device state (QEMU: the migration stream; Firecracker: its vmstate file);
//! - `mem`: guest RAM (QEMU `memory = file`, Firecracker always); absent when QEMU streamed
//!   RAM inside `state` (`memory = stream`, a VM without a RAM file);
//! - one raw file per disk (`root.ext4`, `work.ext4`: the names the source VM used);
//! - `snapshot.json`: the [`SnapshotManifest`], written last.
//!
//! It is built in `<dir>.partial` and renamed into place only when complete, so a crash
//! mid-snapshot leaves no directory that [`Snapshot::open`] accepts. `open` refuses a
//! snapshot of another VMM kind or binary, and a truncated or corrupted state file
//! (SHA-256) or memory file (length; its content is not hashed: that would cost a full
//! read on every restore).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::VmmError;
use crate::spec::{KernelFiles, MacAddr, VmmKind, VmmSpec};

/// Bumped when the layout or the manifest changes incompatibly.
pub const SNAPSHOT_FORMAT: u32 = 1;
pub const MANIFEST_FILE: &str = "snapshot.json";
pub const STATE_FILE: &str = "state";
pub const MEM_FILE: &str = "mem";

/// How guest RAM is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryMode {
    /// In `mem`, mapped privately by each restored VM (nothing copied up front).
    File,
    /// Inside `state` (QEMU VMs without a RAM file): loaded in full by each restore.
    Stream,
}

/// One disk of the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotDisk {
    /// `root` (/dev/vda) or `work` (/dev/vdb).
    pub id: String,
    /// File name, both inside the snapshot and in the source VM's directory.
    pub file: String,
    pub bytes: u64,
}

/// What was saved, and what a restore must match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    pub format: u32,
    pub vmm: VmmKind,
    /// [`vmm_fingerprint`] of the VMM binary that wrote it.
    pub vmm_fingerprint: String,
    pub vcpus: u8,
    pub memory_mib: u32,
    pub kernel: KernelFiles,
    pub boot_args: String,
    pub memory: MemoryMode,
    pub disks: Vec<SnapshotDisk>,
    /// The source's NIC MAC (the guest still has it until it is re-addressed).
    pub mac: Option<MacAddr>,
    /// The source's vsock CID, when it had vsock (Firecracker).
    pub vsock_cid: Option<u32>,
    /// The source's virtio-serial agent port name, when it had one (QEMU): a restored VM
    /// needs the same port for the guest's agent to reach it.
    #[serde(default)]
    pub agent_port: Option<String>,
    pub state_bytes: u64,
    pub state_sha256: String,
    pub mem_bytes: u64,
    pub created_unix: u64,
    /// Time the guest was paused while state and memory were written.
    pub save_ms: u64,
    /// Time spent copying disks (the source stays paused during it).
    pub disk_copy_ms: u64,
}

/// A complete snapshot on disk, checked by [`Snapshot::open`].
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub dir: PathBuf,
    pub manifest: SnapshotManifest,
}

/// What [`crate::Vmm::snapshot`] does with the source VM afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterSnapshot {
    Resume,
    StayPaused,
}

/// Timings of a restore, for `--timings`.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub disks: Vec<(String, crate::disk::RestoreDiskMethod)>,
    pub disk_ms: u64,
    /// From spawning the VMM to the guest running again.
    pub restore_ms: u64,
}

fn bad(dir: &Path, why: String) -> VmmError {
    VmmError::Snapshot {
        dir: dir.to_path_buf(),
        reason: why,
    }
}

/// Identifies a VMM binary (path, size, mtime): a snapshot is restored only by the same
/// binary, since device state formats change between versions.
pub fn vmm_fingerprint(bin: &Path) -> Result<String, VmmError> {
    let m = std::fs::metadata(bin).map_err(VmmError::io(format!("stat {}", bin.display())))?;
    let mtime = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .unwrap_or(Duration::ZERO);
    Ok(format!(
        "{} size={} mtime={}.{:09}",
        bin.display(),
        m.len(),
        mtime.as_secs(),
        mtime.subsec_nanos()
    ))
}

/// Snapshot paths end up inside a shell command line in QEMU (`exec:cat > PATH`), so only
/// absolute paths of plain characters are accepted: letters, digits, `/ . _ -`.
pub fn check_plain_path(what: &str, p: &Path) -> Result<(), VmmError> {
    let s = p.to_str().unwrap_or("");
    let plain = p.is_absolute()
        && !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-'));
    if plain && !s.contains("..") {
        Ok(())
    } else {
        Err(VmmError::InvalidSpec(format!(
            "{what} {} must be an absolute path of letters, digits, '/', '.', '_' and '-' only",
            p.display()
        )))
    }
}

/// The file name of a disk of `spec`, which must be directly inside its VM directory (a
/// restore recreates disks under the same names in the new VM's directory).
pub(crate) fn disk_file_name(spec: &VmmSpec, disk: &Path) -> Result<String, VmmError> {
    let name = disk
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|_| disk.parent() == Some(spec.vm_dir.as_path()))
        .ok_or_else(|| {
            VmmError::InvalidSpec(format!(
                "disk {} must be directly inside the VM directory {} to be snapshotted",
                disk.display(),
                spec.vm_dir.display()
            ))
        })?;
    Ok(name.to_string())
}

/// The disks of `spec` as (id, path).
pub(crate) fn spec_disks(spec: &VmmSpec) -> Vec<(&'static str, &Path)> {
    let mut d = vec![("root", spec.root_disk.as_path())];
    if let Some(w) = &spec.work_disk {
        d.push(("work", w.as_path()));
    }
    d
}

/// `(id, path, file name)` of each disk of `source`; checked before the source is paused.
pub(crate) fn source_disks(
    source: &VmmSpec,
) -> Result<Vec<(&'static str, &Path, String)>, VmmError> {
    spec_disks(source)
        .into_iter()
        .map(|(id, p)| disk_file_name(source, p).map(|f| (id, p, f)))
        .collect()
}

/// What a driver measured while saving, for [`Partial::finish`].
pub(crate) struct Saved<'a> {
    pub vmm: VmmKind,
    pub bin: &'a Path,
    pub memory: MemoryMode,
    pub mem_bytes: u64,
    pub save_ms: u64,
    pub qemu_img: Option<&'a Path>,
}

/// Disks a restore created for the new VM; removed on drop unless [`kept`](Self::keep).
pub(crate) struct RestoredDisks {
    pub methods: Vec<(String, crate::disk::RestoreDiskMethod)>,
    paths: Vec<PathBuf>,
    keep: bool,
}

impl RestoredDisks {
    /// Creates `spec`'s disks from the snapshot's. With `same_names`, each must have the
    /// file name the source used (Firecracker's vmstate reopens disks by name).
    pub fn create(
        snap: &Snapshot,
        spec: &VmmSpec,
        qemu_img: Option<&Path>,
        same_names: bool,
    ) -> Result<RestoredDisks, VmmError> {
        let mut out = RestoredDisks {
            methods: Vec::new(),
            paths: Vec::new(),
            keep: false,
        };
        for (id, path) in spec_disks(spec) {
            let file = disk_file_name(spec, path)?;
            let d = snap
                .manifest
                .disks
                .iter()
                .find(|d| d.id == id && (!same_names || d.file == file))
                .ok_or_else(|| {
                    bad(
                        &snap.dir,
                        format!(
                            "it has no {id} disk{}",
                            if same_names {
                                format!(
                                    " named {file:?} (the VMM reopens disks by the source's names)"
                                )
                            } else {
                                String::new()
                            }
                        ),
                    )
                })?;
            let m = crate::disk::restore_disk(&snap.dir.join(&d.file), path, qemu_img)?;
            out.paths.push(path.to_path_buf());
            out.methods.push((id.to_string(), m));
        }
        spec.validate()?;
        Ok(out)
    }

    pub fn keep(mut self) -> Vec<(String, crate::disk::RestoreDiskMethod)> {
        self.keep = true;
        std::mem::take(&mut self.methods)
    }
}

impl Drop for RestoredDisks {
    fn drop(&mut self) {
        if !self.keep {
            for p in &self.paths {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// A snapshot being written: `<dir>.partial`, renamed to `<dir>` by [`Partial::commit`];
/// removed when dropped uncommitted.
pub(crate) struct Partial {
    pub path: PathBuf,
    dest: PathBuf,
    done: bool,
}

impl Partial {
    pub fn create(dest: &Path) -> Result<Partial, VmmError> {
        check_plain_path("snapshot directory", dest)?;
        if dest.exists() {
            return Err(VmmError::InvalidSpec(format!(
                "snapshot directory {} already exists",
                dest.display()
            )));
        }
        let path = PathBuf::from(format!("{}.partial", dest.display()));
        if path.exists() {
            // Left by a crash mid-snapshot: never registered, safe to discard.
            std::fs::remove_dir_all(&path)
                .map_err(VmmError::io(format!("remove stale {}", path.display())))?;
        }
        std::fs::create_dir_all(&path)
            .map_err(VmmError::io(format!("create {}", path.display())))?;
        Ok(Partial {
            path,
            dest: dest.to_path_buf(),
            done: false,
        })
    }

    /// With the source still stopped: copies its disks in and builds the manifest.
    pub fn finish(&self, source: &VmmSpec, saved: Saved<'_>) -> Result<SnapshotManifest, VmmError> {
        let t0 = std::time::Instant::now();
        let mut disks = Vec::new();
        for (id, path, file) in source_disks(source)? {
            let dst = self.path.join(&file);
            crate::disk::snapshot_disk(path, &dst, saved.qemu_img)?;
            let bytes = std::fs::metadata(&dst)
                .map_err(VmmError::io(format!("stat {}", dst.display())))?
                .len();
            disks.push(SnapshotDisk {
                id: id.to_string(),
                file,
                bytes,
            });
        }
        Ok(SnapshotManifest {
            format: SNAPSHOT_FORMAT,
            vmm: saved.vmm,
            vmm_fingerprint: vmm_fingerprint(saved.bin)?,
            vcpus: source.vcpus,
            memory_mib: source.memory_mib,
            kernel: source.kernel.clone(),
            boot_args: source.boot_args.clone(),
            memory: saved.memory,
            disks,
            mac: source.net.as_ref().map(|n| n.mac),
            vsock_cid: source.vsock.as_ref().map(|v| v.guest_cid),
            agent_port: source.agent_port.as_ref().map(|p| p.name.clone()),
            state_bytes: 0,
            state_sha256: String::new(),
            mem_bytes: saved.mem_bytes,
            created_unix: 0,
            save_ms: saved.save_ms,
            disk_copy_ms: t0.elapsed().as_millis() as u64,
        })
    }

    /// Hashes the state file, writes the manifest (fsynced), and renames into place.
    pub fn commit(mut self, mut manifest: SnapshotManifest) -> Result<Snapshot, VmmError> {
        let state = self.path.join(STATE_FILE);
        let (bytes, sha) = hash_file(&state)?;
        manifest.state_bytes = bytes;
        manifest.state_sha256 = sha;
        manifest.created_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let text = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| VmmError::io("encode snapshot manifest")(std::io::Error::other(e)))?;
        let mf = self.path.join(MANIFEST_FILE);
        std::fs::write(&mf, text).map_err(VmmError::io(format!("write {}", mf.display())))?;
        for f in std::fs::read_dir(&self.path)
            .map_err(VmmError::io(format!("list {}", self.path.display())))?
            .flatten()
        {
            if let Ok(file) = std::fs::File::open(f.path()) {
                file.sync_all()
                    .map_err(VmmError::io(format!("fsync {}", f.path().display())))?;
            }
        }
        std::fs::rename(&self.path, &self.dest).map_err(VmmError::io(format!(
            "rename {} to {}",
            self.path.display(),
            self.dest.display()
        )))?;
        if let Some(parent) = self.dest.parent()
            && let Ok(d) = std::fs::File::open(parent)
        {
            let _ = d.sync_all();
        }
        self.done = true;
        Ok(Snapshot {
            dir: self.dest.clone(),
            manifest,
        })
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn hash_file(path: &Path) -> Result<(u64, String), VmmError> {
    let mut f =
        std::fs::File::open(path).map_err(VmmError::io(format!("open {}", path.display())))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(VmmError::io(format!("read {}", path.display())))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
    let hex = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((total, hex))
}

impl Snapshot {
    /// Reads and checks a snapshot directory: manifest format, state checksum, memory
    /// file length, disk files present with their recorded sizes.
    pub fn open(dir: &Path) -> Result<Snapshot, VmmError> {
        let mf = dir.join(MANIFEST_FILE);
        let text = std::fs::read(&mf).map_err(|e| {
            bad(
                dir,
                format!("cannot read {MANIFEST_FILE} ({e}); it is incomplete or not a snapshot"),
            )
        })?;
        let manifest: SnapshotManifest = serde_json::from_slice(&text)
            .map_err(|e| bad(dir, format!("{MANIFEST_FILE} is not valid: {e}")))?;
        if manifest.format != SNAPSHOT_FORMAT {
            return Err(bad(
                dir,
                format!(
                    "it has format {} but this banger reads format {SNAPSHOT_FORMAT}; remake it",
                    manifest.format
                ),
            ));
        }
        let (bytes, sha) = hash_file(&dir.join(STATE_FILE))
            .map_err(|e| bad(dir, format!("its state file is unreadable: {e}")))?;
        if bytes != manifest.state_bytes || sha != manifest.state_sha256 {
            return Err(bad(
                dir,
                format!(
                    "its state file is corrupt or truncated ({bytes} bytes, expected {}; \
                     checksum {}); delete the snapshot and make it again",
                    manifest.state_bytes,
                    if sha == manifest.state_sha256 {
                        "matches"
                    } else {
                        "differs"
                    }
                ),
            ));
        }
        if manifest.memory == MemoryMode::File {
            let len = std::fs::metadata(dir.join(MEM_FILE))
                .map(|m| m.len())
                .map_err(|e| bad(dir, format!("its memory file is unreadable: {e}")))?;
            if len != manifest.mem_bytes {
                return Err(bad(
                    dir,
                    format!(
                        "its memory file has {len} bytes, expected {}; it is truncated",
                        manifest.mem_bytes
                    ),
                ));
            }
        }
        for d in &manifest.disks {
            let ok_name = !d.file.is_empty() && !d.file.contains('/') && d.file != "..";
            let len = std::fs::metadata(dir.join(&d.file)).map(|m| m.len()).ok();
            if !ok_name || len != Some(d.bytes) {
                return Err(bad(
                    dir,
                    format!("its {} disk {:?} is missing or truncated", d.id, d.file),
                ));
            }
        }
        Ok(Snapshot {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    pub fn mem_path(&self) -> PathBuf {
        self.dir.join(MEM_FILE)
    }

    /// Checks that `spec` (the new VM) and `vmm`/`fingerprint` (the driver that will
    /// restore it) match what was saved.
    pub fn check_restorable(
        &self,
        spec: &VmmSpec,
        vmm: VmmKind,
        fingerprint: &str,
    ) -> Result<(), VmmError> {
        let m = &self.manifest;
        let why = if m.vmm != vmm {
            Some(format!(
                "it was made by {} and this VM runs under {vmm}",
                m.vmm
            ))
        } else if m.vmm_fingerprint != fingerprint {
            Some(format!(
                "it was made by another {vmm} binary ({}; now {fingerprint}); \
                 device state does not carry across VMM versions, so make it again",
                m.vmm_fingerprint
            ))
        } else if m.vcpus != spec.vcpus || m.memory_mib != spec.memory_mib {
            Some(format!(
                "it has {} vCPUs and {} MiB but the VM asks for {} vCPUs and {} MiB",
                m.vcpus, m.memory_mib, spec.vcpus, spec.memory_mib
            ))
        } else if m.disks.len() != spec_disks(spec).len() {
            Some(format!(
                "it has {} disks but the VM has {}",
                m.disks.len(),
                spec_disks(spec).len()
            ))
        } else if m.mac.is_some() != spec.net.is_some() {
            Some("the VM's network device does not match the snapshot's".into())
        } else if m.vsock_cid.is_some() != spec.vsock.is_some() {
            Some("the VM's vsock device does not match the snapshot's".into())
        } else if m.agent_port.as_deref() != spec.agent_port.as_ref().map(|p| p.name.as_str()) {
            Some(format!(
                "its agent serial port is {:?} but the VM's is {:?}",
                m.agent_port,
                spec.agent_port.as_ref().map(|p| &p.name)
            ))
        } else {
            None
        };
        match why {
            Some(w) => Err(bad(&self.dir, w)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
#[path = "snapshot_tests.rs"]
mod tests;
