//! One VM's directory under the state dir: the names of the files in it and
//! the I/O of its VMM handle. Every module that touches a VM's files asks a
//! [`VmDir`] for their paths instead of joining names of its own.

use std::ops::Deref;
use std::path::{Path, PathBuf};

use banger_vmm::VmmHandle;

const ROOT_DISK: &str = "root.ext4";
const WORK_DISK: &str = "work.ext4";
const HANDLE_FILE: &str = "vmm.json";
const CONSOLE_LOG: &str = "console.log";
const VSOCK: &str = "v.sock";
const AGENT_SOCKET: &str = "agent.sock";
const HOST_KEY: &str = "ssh_host_ed25519_key";
const AUTHORIZED_KEY: &str = "authorized_key.pub";

/// `<state>/vms/<name>/`. Derefs to its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDir(PathBuf);

impl VmDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        VmDir(path.into())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The VM's own copy of its image's root filesystem (`/dev/vda`).
    pub fn root_disk(&self) -> PathBuf {
        self.0.join(ROOT_DISK)
    }

    /// The work disk, mounted as the guest's /root (`/dev/vdb`).
    pub fn work_disk(&self) -> PathBuf {
        self.0.join(WORK_DISK)
    }

    /// The serial console's output.
    pub fn console_log(&self) -> PathBuf {
        self.0.join(CONSOLE_LOG)
    }

    /// The Unix socket the guest agent is reached through with the
    /// hybrid-vsock protocol: Firecracker's vsock socket, or under QEMU the
    /// daemon's gateway to the serial channel (see `vms::agent`).
    pub fn vsock(&self) -> PathBuf {
        self.0.join(VSOCK)
    }

    /// QEMU's chardev socket of the agent's virtio-serial port.
    pub fn agent_socket(&self) -> PathBuf {
        self.0.join(AGENT_SOCKET)
    }

    /// The VM's ssh host private key (its `.pub` beside it).
    pub fn host_key(&self) -> PathBuf {
        self.0.join(HOST_KEY)
    }

    /// The public key authorized at create, kept for the readiness checks.
    pub fn authorized_key(&self) -> PathBuf {
        self.0.join(AUTHORIZED_KEY)
    }

    /// Creates the directory, private to the owner.
    pub fn create(&self) -> anyhow::Result<()> {
        crate::ensure_private_dir(&self.0)
    }

    /// Removes the directory and everything in it (absent is fine).
    pub fn remove(&self) -> std::io::Result<()> {
        match std::fs::remove_dir_all(&self.0) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Records the live VMM's identity (atomically: a temp file renamed),
    /// so a restarted daemon can re-adopt it.
    pub fn write_handle(&self, h: &VmmHandle) -> std::io::Result<()> {
        let tmp = self.0.join(format!("{HANDLE_FILE}.tmp"));
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(h).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(tmp, self.0.join(HANDLE_FILE))
    }

    /// The recorded VMM identity, if any (an unreadable file counts as none).
    pub fn read_handle(&self) -> Option<VmmHandle> {
        let text = std::fs::read(self.0.join(HANDLE_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Forgets the VMM identity (the VMM is gone).
    pub fn remove_handle(&self) {
        let _ = std::fs::remove_file(self.0.join(HANDLE_FILE));
    }
}

impl Deref for VmDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for VmDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}
