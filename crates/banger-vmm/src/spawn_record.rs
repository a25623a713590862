//! The VMM's identity on disk from the moment it is spawned, before it is
//! configured and long before the daemon writes its handle: a daemon killed
//! (kill -9) in between leaves a VMM that no handle names, and without this
//! record a restart would boot a second VMM on the same disks. The drivers
//! write `<vm dir>/vmm.spawned` right after the spawn (a VMM whose record
//! cannot be written is killed); the daemon reaps whatever live process the
//! record names before it starts a VM and when re-adoption finds no handle.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::VmmError;
use crate::process::ProcessIdentity;

/// File name of the spawn record in a VM directory.
pub const SPAWN_RECORD: &str = "vmm.spawned";

fn path(vm_dir: &Path) -> PathBuf {
    vm_dir.join(SPAWN_RECORD)
}

/// Writes the record (temp file, fsync, rename: never half-written).
pub(crate) fn record_spawn(vm_dir: &Path, id: &ProcessIdentity) -> Result<(), VmmError> {
    use std::io::Write;
    let tmp = vm_dir.join(format!("{SPAWN_RECORD}.tmp"));
    let text = serde_json::to_vec(id)
        .map_err(|e| VmmError::io("encode spawn record")(std::io::Error::other(e)))?;
    let mut f = std::fs::File::create(&tmp).map_err(VmmError::io("write spawn record"))?;
    f.write_all(&text)
        .and_then(|_| f.sync_all())
        .map_err(VmmError::io("write spawn record"))?;
    std::fs::rename(&tmp, path(vm_dir)).map_err(VmmError::io("write spawn record"))
}

/// The VMM last spawned in `vm_dir`, if a record exists and is readable.
pub fn spawn_record(vm_dir: &Path) -> Option<ProcessIdentity> {
    let bytes = std::fs::read(path(vm_dir)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Kills (SIGKILL, bounded wait) the VMM the record names if that exact
/// process still runs, and removes the record. Call only when no VMM may
/// run for this VM: before a start, or when re-adoption found no handle.
/// Returns the process it killed.
pub fn reap_spawned(vm_dir: &Path) -> Option<ProcessIdentity> {
    let id = spawn_record(vm_dir);
    let _ = std::fs::remove_file(path(vm_dir));
    let id = id.filter(ProcessIdentity::is_alive)?;
    id.signal(libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while id.is_alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    Some(id)
}
