//! What a driver needs to start a VM.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::VmmError;

/// Which VMM runs a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmmKind {
    Firecracker,
    Qemu,
}

impl fmt::Display for VmmKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmmKind::Firecracker => "firecracker",
            VmmKind::Qemu => "qemu",
        })
    }
}

/// The `vmm` config key: banger-core's one enum.
pub use banger_core::VmmChoice;

/// A MAC address. banger uses locally administered unicast addresses (02:...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A deterministic, locally administered unicast MAC for `seed` (e.g. the VM name or id):
    /// the same VM always gets the same MAC, so the guest's network identity survives restarts.
    pub fn derive(seed: &str) -> MacAddr {
        let digest = Sha256::digest(seed.as_bytes());
        let mut b = [0u8; 6];
        b.copy_from_slice(&digest[..6]);
        // Clear multicast bit, set locally administered bit.
        b[0] = (b[0] & 0xfc) | 0x02;
        MacAddr(b)
    }
    pub fn is_local_unicast(&self) -> bool {
        self.0[0] & 0x03 == 0x02
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = VmmError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || VmmError::InvalidSpec(format!("{s:?} is not a MAC address like 02:ab:cd:ef:01:23"));
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = VmmError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        m.to_string()
    }
}

/// The kernel files an image provides. Firecracker boots only the ELF `vmlinux`; QEMU
/// prefers `vmlinuz` (+ initrd) and can also boot a PVH `vmlinux`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelFiles {
    pub vmlinux: Option<PathBuf>,
    pub vmlinuz: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
}

/// A tap device the guest's NIC is attached to (created by the root helper beforehand).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSpec {
    pub tap: String,
    pub mac: MacAddr,
}

/// A vsock device. Host side: connect to `uds_path`, send `CONNECT <port>\n`, read `OK `;
/// guest-initiated connections arrive at `<uds_path>_<port>` (same for both drivers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockSpec {
    pub guest_cid: u32,
    pub uds_path: PathBuf,
}

/// A virtio-serial port for the guest agent (QEMU; Firecracker has no virtio-serial and
/// uses vsock). QEMU listens on `socket` (`-chardev socket,server=on,wait=off`); the guest
/// sees the port as `/dev/virtio-ports/<name>`. Unlike vhost-user vsock, it migrates, so
/// such a VM can be snapshotted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentPortSpec {
    pub socket: PathBuf,
    pub name: String,
}

/// Everything a driver needs to start one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmSpec {
    /// VM name (a DNS label); also Firecracker's `--id`.
    pub name: String,
    /// Per-VM directory: control sockets and VMM logs live here.
    pub vm_dir: PathBuf,
    pub vcpus: u8,
    pub memory_mib: u32,
    pub kernel: KernelFiles,
    /// Kernel command line. Drivers append what they require and the args lack
    /// (`console=ttyS0`, and under QEMU/TCG `tsc_early_khz=`).
    pub boot_args: String,
    /// Becomes /dev/vda (the guest's root).
    pub root_disk: PathBuf,
    /// Becomes /dev/vdb (mounted at /root by the guest).
    pub work_disk: Option<PathBuf>,
    pub net: Option<NetSpec>,
    /// QEMU: the agent's virtio-serial port. Firecracker ignores it.
    #[serde(default)]
    pub agent_port: Option<AgentPortSpec>,
    pub vsock: Option<VsockSpec>,
    /// Where the guest's serial console goes (appended to across boots).
    pub console_log: PathBuf,
    /// QEMU: keep guest RAM in this file (on tmpfs), mapped shared, so a snapshot copies
    /// the file instead of streaming RAM and restores map it privately. Removed when the
    /// VM stops. `None`: anonymous RAM (a snapshot then carries RAM in its state stream).
    /// Firecracker ignores it.
    #[serde(default)]
    pub memory_file: Option<PathBuf>,
}

impl VmmSpec {
    /// A spec with the conventional layout under `vm_dir` (console log at
    /// `<vm_dir>/console.log`), no network, no vsock, no work disk.
    pub fn new(name: &str, vm_dir: &Path, kernel: KernelFiles, root_disk: &Path) -> VmmSpec {
        VmmSpec {
            name: name.to_string(),
            vm_dir: vm_dir.to_path_buf(),
            vcpus: 2,
            memory_mib: 1024,
            kernel,
            boot_args: "root=/dev/vda rw".to_string(),
            root_disk: root_disk.to_path_buf(),
            work_disk: None,
            net: None,
            agent_port: None,
            vsock: None,
            console_log: vm_dir.join("console.log"),
            memory_file: None,
        }
    }

    /// Checks what every driver needs; drivers check their own extra requirements.
    pub fn validate(&self) -> Result<(), VmmError> {
        let bad = |m: String| Err(VmmError::InvalidSpec(m));
        // The VM-name rule of the CLI and daemon (one home: banger-core).
        if let Err(e) = banger_core::names::validate_vm_name(&self.name) {
            return bad(e.to_string());
        }
        // The limits config, CLI and daemon check too (one home).
        if let Err(e) = banger_core::limits::check_vcpu(u32::from(self.vcpus))
            .and_then(|_| banger_core::limits::check_memory_mib(u64::from(self.memory_mib)))
        {
            return bad(e.to_string());
        }
        if !self.vm_dir.is_dir() {
            return bad(format!(
                "VM directory {} does not exist",
                self.vm_dir.display()
            ));
        }
        for (what, p) in std::iter::once(("root disk", &self.root_disk))
            .chain(self.work_disk.iter().map(|p| ("work disk", p)))
        {
            if !p.is_file() {
                return bad(format!("{what} {} does not exist", p.display()));
            }
        }
        // sun_path holds 107 bytes + NUL; longer socket paths fail at bind time with an
        // unhelpful EINVAL, so refuse them here. Guest-initiated vsock connections land on
        // `<uds_path>_<port>` (up to 11 more bytes).
        let longest = ["fc.sock", "qmp.sock"]
            .iter()
            .map(|f| self.vm_dir.join(f).as_os_str().len())
            .chain(self.vsock.iter().map(|v| v.uds_path.as_os_str().len() + 11))
            .chain(self.agent_port.iter().map(|p| p.socket.as_os_str().len()))
            .max()
            .unwrap_or(0);
        if longest > 107 {
            return bad(format!(
                "VM directory {} is too deep: its Unix socket paths would exceed 107 bytes; \
                 use a shorter state/runtime directory",
                self.vm_dir.display()
            ));
        }
        if let Some(p) = &self.agent_port
            && (p.name.is_empty()
                || p.name.len() > 64
                || !p
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)))
        {
            return bad(format!(
                "agent port name {:?} must be 1-64 characters of letters, digits, '.', '_' and '-'",
                p.name
            ));
        }
        if let Some(v) = &self.vsock
            && v.guest_cid < 3
        {
            return bad(format!(
                "vsock guest_cid = {} must be at least 3",
                v.guest_cid
            ));
        }
        if let Some(n) = &self.net
            && (n.tap.is_empty() || n.tap.len() > 15)
        {
            return bad(format!("tap name {:?} must be 1-15 characters", n.tap));
        }
        Ok(())
    }
}

/// `args` plus `key=value` unless `args` already sets `key`.
pub(crate) fn ensure_arg(args: &str, key: &str, value: &str) -> String {
    let present = args
        .split_whitespace()
        .any(|a| a == key || a.split_once('=').is_some_and(|(k, _)| k == key));
    if present {
        args.to_string()
    } else if args.trim().is_empty() {
        format!("{key}={value}")
    } else {
        format!("{} {key}={value}", args.trim_end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn derived_macs_are_stable_local_unicast_and_roundtrip(seed in ".{0,40}") {
            let a = MacAddr::derive(&seed);
            prop_assert_eq!(a, MacAddr::derive(&seed));
            prop_assert!(a.is_local_unicast());
            prop_assert_eq!(a.to_string().parse::<MacAddr>().expect("parse"), a);
        }

        #[test]
        fn mac_parse_never_panics(s in "\\PC{0,24}") {
            let _ = s.parse::<MacAddr>();
        }

        #[test]
        fn ensure_arg_adds_exactly_once(args in "[a-z=0-9 ]{0,40}") {
            let once = ensure_arg(&args, "console", "ttyS0");
            let twice = ensure_arg(&once, "console", "ttyS0");
            prop_assert_eq!(&once, &twice);
            prop_assert!(once.split_whitespace().any(|a| a.starts_with("console")));
        }
    }

    #[test]
    fn too_long_socket_paths_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let deep = dir.path().join("x".repeat(100));
        std::fs::create_dir(&deep).expect("mkdir");
        std::fs::write(deep.join("root"), b"").expect("write");
        let spec = VmmSpec::new("vm", &deep, KernelFiles::default(), &deep.join("root"));
        let err = spec.validate().expect_err("too deep");
        assert!(err.to_string().contains("107 bytes"), "{err}");
        let root = dir.path().join("root");
        std::fs::write(&root, b"").expect("write");
        VmmSpec::new("vm", dir.path(), KernelFiles::default(), &root)
            .validate()
            .expect("short path is fine");
    }

    #[test]
    fn agent_port_names_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::write(&root, b"").expect("write");
        let mut spec = VmmSpec::new("vm", dir.path(), KernelFiles::default(), &root);
        for (name, ok) in [
            ("banger.agent", true),
            ("", false),
            ("a,b", false),
            ("a b", false),
        ] {
            spec.agent_port = Some(AgentPortSpec {
                socket: dir.path().join("agent.sock"),
                name: name.into(),
            });
            assert_eq!(spec.validate().is_ok(), ok, "{name:?}");
        }
    }

    #[test]
    fn mac_rejects_malformed() {
        for s in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "zz:00:00:00:00:00",
            "2:0:0:0:0:0",
        ] {
            assert!(s.parse::<MacAddr>().is_err(), "{s:?} parsed");
        }
    }

    #[test]
    fn ensure_arg_respects_existing_value() {
        assert_eq!(
            ensure_arg("console=hvc0 quiet", "console", "ttyS0"),
            "console=hvc0 quiet"
        );
        assert_eq!(
            ensure_arg("quiet", "tsc_early_khz", "2000000"),
            "quiet tsc_early_khz=2000000"
        );
    }
}
