//! Per-VM guest disk contents, written without mounting and without root:
//! hostname, fstab, the VM's own ssh host key (pinned in known_hosts), and
//! the work disk that becomes the guest's /root.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, bail};
use banger_image::ext4::{self, Ext4Fixups, GuestEntry};

use crate::file_sync::SyncPlan;

pub struct HostKey {
    pub private: Vec<u8>,
    pub public: String,
}

/// A fresh ed25519 host key for one VM at `path`.
pub fn generate_host_key(path: &Path, vm: &str) -> anyhow::Result<HostKey> {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("pub"));
    banger_core::ssh::keygen_ed25519(path, &format!("{vm}.vm"))?;
    let private = std::fs::read(path)?;
    let public = std::fs::read_to_string(path.with_extension("pub"))?;
    Ok(HostKey {
        private,
        public: public.trim().to_string(),
    })
}

/// The work disk is the guest's /root. systemd waits for its device as
/// long as the boot takes (a 1-vCPU TCG guest's udev settled after the old
/// 10 s device timeout, leaving /root on the root disk without
/// authorized_keys); nofail keeps a broken work disk from sending the guest
/// to emergency mode, where the agent could not say what is wrong. Whether
/// /root really is the work disk is checked before the VM counts as ready
/// (`crate::readiness`).
pub fn fstab_line() -> String {
    format!(
        "# banger: the VM's work disk\n{} /root ext4 defaults,nofail,x-systemd.device-timeout=infinity 0 2\n",
        crate::readiness::WORK_DEVICE
    )
}

/// Writes the VM's identity into its root disk.
pub fn personalise_root(root_disk: &Path, vm: &str, key: &HostKey) -> anyhow::Result<()> {
    let hosts = format!(
        "127.0.0.1\tlocalhost\n127.0.1.1\t{vm}.vm {vm}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    );
    let fstab = fstab_line();
    ext4::write_files(
        root_disk,
        &[
            GuestEntry::file("/etc/hostname", format!("{vm}\n"), 0o644),
            GuestEntry::file("/etc/hosts", hosts, 0o644),
            GuestEntry::file("/etc/fstab", fstab, 0o644),
            GuestEntry::file("/etc/ssh/ssh_host_ed25519_key", key.private.clone(), 0o600),
            GuestEntry::file(
                "/etc/ssh/ssh_host_ed25519_key.pub",
                format!("{}\n", key.public),
                0o644,
            ),
        ],
    )
    .with_context(|| format!("cannot personalise {}", root_disk.display()))?;
    Ok(())
}

/// `key` trimmed, when it is a single OpenSSH public key line (what authorized_keys
/// gets, on a work disk or through the agent after a restore).
pub fn check_ssh_public_key(key: &str) -> anyhow::Result<&str> {
    let k = key.trim();
    if k.contains('\n')
        || !k.starts_with("ssh-") && !k.starts_with("ecdsa-") && !k.starts_with("sk-")
    {
        bail!("the ssh public key is not a single OpenSSH public key line");
    }
    Ok(k)
}

/// Builds the work disk (the guest's /root): the owner's key in
/// authorized_keys, the image's shell dotfiles, and `[[file_sync]]` entries.
/// Everything is root-owned inside the guest whoever the daemon runs as;
/// /root, /root/.ssh and authorized_keys get the modes sshd's StrictModes wants.
pub fn make_work_disk(
    path: &Path,
    size: u64,
    root_disk: &Path,
    ssh_key: Option<&str>,
    plan: &SyncPlan,
    tmp_parent: &Path,
) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("work-")
        .tempdir_in(tmp_parent)
        .context("cannot create a scratch directory")?;
    let tree = tmp.path().join("root");
    std::fs::create_dir(&tree)?;
    std::fs::set_permissions(&tree, std::fs::Permissions::from_mode(0o700))?;
    let mut fixups = Ext4Fixups::new();
    fixups.set_mode("/", 0o040700);
    // The image's own /root dotfiles would be hidden by the mount.
    for dot in [".bashrc", ".profile"] {
        if let Ok(bytes) = ext4::read_file(root_disk, &format!("/root/{dot}")) {
            std::fs::write(tree.join(dot), bytes)?;
            std::fs::set_permissions(tree.join(dot), std::fs::Permissions::from_mode(0o644))?;
            fixups.set_owner(format!("/{dot}"), 0, 0);
        }
    }
    let ssh = tree.join(".ssh");
    std::fs::create_dir(&ssh)?;
    std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o700))?;
    fixups.set_owner("/.ssh", 0, 0);
    if let Some(k) = ssh_key {
        let k = check_ssh_public_key(k)?;
        let ak = ssh.join("authorized_keys");
        let mut f = std::fs::File::create(&ak)?;
        writeln!(f, "{k}")?;
        std::fs::set_permissions(&ak, std::fs::Permissions::from_mode(0o600))?;
        fixups.set_owner("/.ssh/authorized_keys", 0, 0);
    }
    let written = crate::file_sync::materialise(plan, &tree)?;
    for rel in written {
        let mut p = String::new();
        for c in rel.components() {
            p.push('/');
            p.push_str(&c.as_os_str().to_string_lossy());
            fixups.set_owner(p.clone(), 0, 0);
        }
    }
    ext4::make_ext4(&tree, path, size, &fixups)
        .with_context(|| format!("cannot build the work disk {}", path.display()))?;
    Ok(())
}

fn known_hosts_lines(text: &str, vm: &str) -> Vec<String> {
    let alias = format!("{vm}.vm");
    text.lines()
        .filter(|l| {
            let hosts = l.split_whitespace().next().unwrap_or("");
            !hosts.split(',').any(|h| h == alias)
        })
        .map(str::to_string)
        .collect()
}

/// known_hosts is edited read-modify-write; creates and deletes run
/// concurrently, so edits are serialised or one would lose the other's line.
static KNOWN_HOSTS_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Pins `<vm>.vm` (and its address) to the VM's host key. No trust on first
/// use: the key is known before the guest ever boots.
pub fn pin_host_key(
    known_hosts: &Path,
    vm: &str,
    ip: Option<&str>,
    public: &str,
) -> anyhow::Result<()> {
    let _guard = KNOWN_HOSTS_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(dir) = known_hosts.parent() {
        crate::ensure_private_dir(dir)?;
    }
    let text = std::fs::read_to_string(known_hosts).unwrap_or_default();
    let mut lines = known_hosts_lines(&text, vm);
    let key: Vec<&str> = public.split_whitespace().take(2).collect();
    if key.len() != 2 {
        bail!("malformed host public key");
    }
    let hosts = match ip {
        Some(ip) => format!("{vm}.vm,{ip}"),
        None => format!("{vm}.vm"),
    };
    lines.push(format!("{hosts} {} {}", key[0], key[1]));
    write_atomic(known_hosts, &(lines.join("\n") + "\n"), 0o644)
}

pub fn unpin_host_key(known_hosts: &Path, vm: &str) -> anyhow::Result<()> {
    let _guard = KNOWN_HOSTS_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let Ok(text) = std::fs::read_to_string(known_hosts) else {
        return Ok(());
    };
    let lines = known_hosts_lines(&text, vm);
    let body = if lines.is_empty() {
        String::new()
    } else {
        lines.join("\n") + "\n"
    };
    write_atomic(known_hosts, &body, 0o644)
}

fn write_atomic(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// The guest's own systemd turns the fstab line into units: the work
    /// disk's device is waited for without a timeout.
    #[test]
    fn systemd_waits_for_the_work_disk_without_a_timeout() {
        let generator = Path::new("/usr/lib/systemd/system-generators/systemd-fstab-generator");
        if !generator.exists() {
            eprintln!("SKIP: no systemd-fstab-generator (Debian package systemd)");
            return;
        }
        let dir = tempfile::tempdir().expect("tmp");
        let fstab = dir.path().join("fstab");
        std::fs::write(&fstab, fstab_line()).expect("fstab");
        let out: Vec<_> = ["normal", "early", "late"]
            .iter()
            .map(|d| dir.path().join(d))
            .collect();
        for d in &out {
            std::fs::create_dir(d).expect("mkdir");
        }
        let st = Command::new(generator)
            .args(&out)
            .env("SYSTEMD_FSTAB", &fstab)
            .env("SYSTEMD_PROC_CMDLINE", "")
            .status()
            .expect("run the generator");
        assert!(st.success());
        let mount = std::fs::read_to_string(out[0].join("root.mount")).expect("root.mount");
        assert!(
            mount.contains("What=/dev/vdb") && mount.contains("Where=/root"),
            "{mount}"
        );
        let timeout =
            std::fs::read_to_string(out[0].join("dev-vdb.device.d/50-device-timeout.conf"))
                .expect("device timeout drop-in");
        assert!(
            timeout.contains("JobRunningTimeoutSec=infinity"),
            "{timeout}"
        );
    }

    #[test]
    fn pinning_replaces_only_this_vms_line() {
        let dir = tempfile::tempdir().expect("tmp");
        let kh = dir.path().join("ssh/known_hosts");
        pin_host_key(&kh, "a", Some("172.16.0.2"), "ssh-ed25519 AAAAkeyA a.vm").expect("pin a");
        pin_host_key(&kh, "b", None, "ssh-ed25519 AAAAkeyB b.vm").expect("pin b");
        pin_host_key(&kh, "a", Some("172.16.0.9"), "ssh-ed25519 AAAAkeyA2 a.vm").expect("re-pin a");
        let text = std::fs::read_to_string(&kh).expect("read");
        assert_eq!(
            text,
            "b.vm ssh-ed25519 AAAAkeyB\na.vm,172.16.0.9 ssh-ed25519 AAAAkeyA2\n"
        );
        unpin_host_key(&kh, "b").expect("unpin");
        assert_eq!(
            std::fs::read_to_string(&kh).expect("read"),
            "a.vm,172.16.0.9 ssh-ed25519 AAAAkeyA2\n"
        );
        // "ab" is not "a"
        pin_host_key(&kh, "ab", None, "ssh-ed25519 K").expect("pin ab");
        unpin_host_key(&kh, "a").expect("unpin a");
        assert_eq!(
            std::fs::read_to_string(&kh).expect("read"),
            "ab.vm ssh-ed25519 K\n"
        );
    }
}
