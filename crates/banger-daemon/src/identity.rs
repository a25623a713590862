//! A restored VM's identity, given through the guest agent before readiness.
//!
//! A VM restored from a warm snapshot wakes up as the VM the snapshot was taken from:
//! same hostname, MAC, address, ssh host key, machine-id and RNG state. One agent round
//! trip makes it its own: a fixed script (constant text; every value reaches it as an
//! argument, the private host key on stdin) rewrites hostname, /etc/hosts, machine-id,
//! the host key (sshd's per-connection re-exec reads it), authorized_keys, re-addresses eth0 with the VM's own
//! MAC and lease (then a gratuitous ARP), and mixes host entropy into the guest RNG; the
//! agent's `SyncTime` sets the clock. `[[file_sync]]` entries follow as one tar upload.
//! Nothing edits a disk the restored guest has mounted.

use std::io::Read;
use std::path::Path;

use banger_agent::client::AgentClient;
use banger_proto::agent::{ExecRequest, ExitStatus};

use crate::DaemonError;

/// The guest-side script. `$1` is a root prefix (empty in a guest; a temp dir in tests).
pub const IDENTITY_SCRIPT: &str = r#"set -eu
R=$1 name=$2 mac=$3 ip=$4 prefix=$5 gw=$6 mid=$7 pub=$8 auth=$9 seed=${10}
umask 022
printf '%s\n' "$name" > "$R/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s.vm %s\n::1\tlocalhost ip6-localhost ip6-loopback\n' "$name" "$name" > "$R/etc/hosts"
command -v hostname >/dev/null 2>&1 && hostname "$name" || printf '%s' "$name" > "$R/proc/sys/kernel/hostname"
printf '%s\n' "$mid" > "$R/etc/machine-id"
mkdir -p "$R/etc/ssh"
(umask 077; cat > "$R/etc/ssh/ssh_host_ed25519_key.new")
mv "$R/etc/ssh/ssh_host_ed25519_key.new" "$R/etc/ssh/ssh_host_ed25519_key"
printf '%s\n' "$pub" > "$R/etc/ssh/ssh_host_ed25519_key.pub"
if [ -n "$auth" ]; then
  mkdir -p "$R/root/.ssh"; chmod 700 "$R/root/.ssh"
  printf '%s\n' "$auth" > "$R/root/.ssh/authorized_keys"; chmod 600 "$R/root/.ssh/authorized_keys"
else
  rm -f "$R/root/.ssh/authorized_keys"
fi
printf '%s' "$seed" > "$R/dev/urandom" 2>/dev/null || true
if [ -n "$ip" ]; then
  ip link set dev eth0 down
  ip link set dev eth0 address "$mac"
  ip addr flush dev eth0
  ip addr add "$ip/$prefix" dev eth0
  ip link set dev eth0 up
  if [ -n "$gw" ]; then ip route replace default via "$gw" dev eth0; fi
  # Announce the new MAC: arping where the image has it, else a datagram to the
  # gateway (discard port) makes the guest ARP for it, which refreshes the host's
  # neighbour entry and the bridge's forwarding table.
  arping -c 1 -U -I eth0 "$ip" >/dev/null 2>&1 ||
    { [ -z "$gw" ] || bash -c 'echo > "/dev/udp/$0/9"' "$gw"; } >/dev/null 2>&1 || true
fi
# No sshd restart (seconds under TCG, most of this round trip): sshd re-executes itself
# for every connection and that child loads the host key files, so the next connection
# already presents the new key (e2e_warm checks it with strict host-key checking).
echo identity-ok
"#;

/// Run in a booted guest before it becomes a warm snapshot: what the identity script
/// needs beyond `sh` (OCI images may lack `ip`). A guest that fails it is not
/// snapshotted, so its restores would not fail the identity round trip every time.
const PREFLIGHT: &str =
    r#"command -v ip >/dev/null 2>&1 || { echo "it has no ip command (iproute2)"; exit 1; }"#;

/// Whether the guest behind `agent` can take an identity after a restore; why not.
pub async fn preflight(agent: &AgentClient, networked: bool) -> Result<(), String> {
    let script = if networked { PREFLIGHT } else { "true" };
    let req = ExecRequest::new(["sh", "-c", script]);
    let out = agent
        .exec_capture(&req, b"")
        .await
        .map_err(|e| format!("the agent cannot run sh: {e}"))?;
    if out.status == (ExitStatus::Exited { code: 0 }) {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

/// What a restored VM must become.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub mac: String,
    /// `None` for a VM without host networking.
    pub ip: Option<std::net::Ipv4Addr>,
    pub prefix: u8,
    pub gateway: Option<std::net::Ipv4Addr>,
    pub host_key_private: Vec<u8>,
    pub host_key_public: String,
    pub authorized_key: Option<String>,
}

fn random_hex(bytes: usize) -> Result<String, DaemonError> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| DaemonError::internal(format!("cannot read /dev/urandom: {e}")))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

impl Identity {
    /// The argv of the script (after `sh -c SCRIPT`), for a guest (`root` = "") or a
    /// test's root prefix. A fresh machine-id and RNG seed each call.
    pub fn argv(&self, root: &str) -> Result<Vec<String>, DaemonError> {
        let opt = |v: Option<String>| v.unwrap_or_default();
        Ok(vec![
            "sh".into(),
            "-c".into(),
            IDENTITY_SCRIPT.into(),
            "banger-identity".into(),
            root.into(),
            self.name.clone(),
            self.mac.clone(),
            opt(self.ip.map(|i| i.to_string())),
            self.prefix.to_string(),
            opt(self.gateway.map(|g| g.to_string())),
            random_hex(16)?,
            self.host_key_public.trim().to_string(),
            opt(self.authorized_key.as_ref().map(|k| k.trim().to_string())),
            random_hex(64)?,
        ])
    }

    /// Runs the identity script in the guest, syncs its clock, and uploads the
    /// `[[file_sync]]` tree (a local directory, materialised by the caller) into /root.
    pub async fn apply(
        &self,
        agent: &AgentClient,
        file_sync_tree: Option<&Path>,
    ) -> Result<(), DaemonError> {
        let t0 = std::time::Instant::now();
        let req = ExecRequest::new(self.argv("")?);
        let out = agent
            .exec_capture(&req, &self.host_key_private)
            .await
            .map_err(|e| DaemonError::internal(format!("identity round trip failed: {e}")))?;
        if out.status != (ExitStatus::Exited { code: 0 })
            || !String::from_utf8_lossy(&out.stdout).contains("identity-ok")
        {
            return Err(DaemonError::internal(format!(
                "the guest could not take its identity ({:?}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let script_ms = t0.elapsed().as_millis() as u64;
        if let Err(e) = agent.sync_time().await {
            tracing::warn!(vm = %self.name, "cannot set the restored guest's clock: {e}");
        }
        tracing::info!(vm = %self.name, script_ms, clock_ms = t0.elapsed().as_millis() as u64 - script_ms,
            "identity script and clock");
        if let Some(tree) = file_sync_tree {
            upload_tree(agent, tree, "/root").await?;
        }
        Ok(())
    }
}

/// Tars `tree` (entries owned by root, their modes kept) and unpacks it at `dest` in
/// the guest.
async fn upload_tree(agent: &AgentClient, tree: &Path, dest: &str) -> Result<(), DaemonError> {
    let tree = tree.to_path_buf();
    let file = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
        use std::io::Seek;
        let mut tmp = tempfile::tempfile()?;
        banger_agent::transfer::pack_tree_as_root(&tree, &mut tmp)?;
        tmp.rewind()?;
        Ok(tmp)
    })
    .await
    .map_err(|e| DaemonError::internal(format!("worker failed: {e}")))?
    .map_err(|e| DaemonError::internal(format!("cannot pack the file_sync entries: {e}")))?;
    agent
        .upload_tar(tokio::fs::File::from_std(file), dest)
        .await
        .map_err(|e| DaemonError::internal(format!("cannot copy file_sync entries in: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real script, run by the host's sh against a temp root, with `ip`, `arping`,
    /// `hostname` and `systemctl` shims that record their argv.
    #[test]
    fn the_script_writes_every_file_and_readdresses_eth0() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        let bin = dir.path().join("bin");
        for d in [
            root.join("etc"),
            root.join("dev"),
            root.join("proc/sys/kernel"),
            bin.clone(),
        ] {
            std::fs::create_dir_all(&d).expect("mkdir");
        }
        let log = dir.path().join("calls");
        for tool in ["ip", "arping", "hostname", "systemctl"] {
            let p = bin.join(tool);
            std::fs::write(
                &p,
                format!("#!/bin/sh\necho \"{tool} $*\" >> {}\n", log.display()),
            )
            .expect("shim");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let id = Identity {
            name: "web-2".into(),
            mac: "02:aa:bb:cc:dd:ee".into(),
            ip: Some("172.30.0.7".parse().expect("ip")),
            prefix: 24,
            gateway: Some("172.30.0.1".parse().expect("gw")),
            host_key_private: b"PRIVATE KEY\n".to_vec(),
            host_key_public: "ssh-ed25519 AAAA web-2.vm".into(),
            authorized_key: Some("ssh-ed25519 BBBB me@host".into()),
        };
        let argv = id.argv(&root.display().to_string()).expect("argv");
        let path = format!("{}:/usr/bin:/bin", bin.display());
        let mut child = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .env("PATH", path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("sh");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&id.host_key_private)
            .expect("stdin");
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("identity-ok"));
        let read = |p: &str| std::fs::read_to_string(root.join(p)).expect(p);
        assert_eq!(read("etc/hostname"), "web-2\n");
        assert!(read("etc/hosts").contains("127.0.1.1\tweb-2.vm web-2"));
        assert_eq!(read("etc/ssh/ssh_host_ed25519_key"), "PRIVATE KEY\n");
        assert_eq!(
            read("etc/ssh/ssh_host_ed25519_key.pub"),
            "ssh-ed25519 AAAA web-2.vm\n"
        );
        assert_eq!(
            read("root/.ssh/authorized_keys"),
            "ssh-ed25519 BBBB me@host\n"
        );
        let mid = read("etc/machine-id");
        assert_eq!(mid.trim().len(), 32, "{mid}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(root.join("etc/ssh/ssh_host_ed25519_key"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let calls = std::fs::read_to_string(&log).expect("calls");
        for want in [
            "hostname web-2",
            "ip link set dev eth0 address 02:aa:bb:cc:dd:ee",
            "ip addr add 172.30.0.7/24 dev eth0",
            "ip route replace default via 172.30.0.1 dev eth0",
            "arping -c 1 -U -I eth0 172.30.0.7",
        ] {
            assert!(calls.contains(want), "missing {want:?} in:\n{calls}");
        }
        // A second identity gets another machine-id.
        let again = id.argv("/x").expect("argv");
        assert_ne!(again[10], argv[10]);
        // Hostile values stay arguments: the script text is constant.
        let mut evil = id.clone();
        evil.name = "$(touch /tmp/pwned)".into();
        let evil_argv = evil.argv("").expect("argv");
        assert_eq!(evil_argv.get(2).map(String::as_str), Some(IDENTITY_SCRIPT));
    }
}
