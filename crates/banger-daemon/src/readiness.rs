//! When a started VM counts as ready, checked rather than assumed.
//!
//! The agent's announcement only says the guest's userspace runs. Ready
//! means the user's next step works: the boot finished, `/root` is the
//! work disk with banger's key in `authorized_keys` and StrictModes-proof
//! modes, the network is configured (all judged from the agent's report by
//! `banger_agent::readiness`), and the guest's sshd really accepts banger's
//! key, asked over the network the user's ssh will take. A guest that
//! cannot get there fails with every part that is missing and a pointer to
//! `banger vm logs NAME`, never a later ssh "Permission denied".

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_agent::client::AgentClient;
use banger_agent::readiness::{Expect, judge};
use banger_proto::agent::{ExecRequest, ExitStatus};
use tokio::time::Instant;

use crate::vm_dir::VmDir;

/// Where the guest sees the VM's work disk (the second virtio disk).
pub const WORK_DEVICE: &str = "/dev/vdb";
/// After the boot finished, how long the checks may keep failing (sshd
/// still binding, the NIC still settling) before the VM is declared failed.
const SETTLE: Duration = Duration::from_secs(45);
const RETRY: Duration = Duration::from_secs(1);
/// One sshd probe (a TCG guest's sshd answers in about a second).
const SSH_PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// Keeps the key authorized at create (already validated by the work
/// disk's build) for the readiness checks of every later boot.
pub fn remember_key(vm_dir: &VmDir, key: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(vm_dir.authorized_key())?;
    writeln!(f, "{}", key.trim())
}

/// What a readiness check of one VM needs; built before the guest boots.
#[derive(Debug, Clone)]
pub struct Probe {
    pub vm: String,
    /// The VM's hybrid-vsock socket (agent channel).
    pub uds: PathBuf,
    pub expect: Expect,
    /// Ask sshd at this address whether it takes the key (`None`: no
    /// network from here, or no key was authorized).
    pub ssh: Option<SshProbe>,
    /// Bound on waiting for systemd to finish the boot.
    pub boot_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct SshProbe {
    pub ip: Ipv4Addr,
    pub public_key: PathBuf,
    pub known_hosts: PathBuf,
}

impl Probe {
    /// The parts `vm` needs, from its directory and lease.
    pub fn new(vm: &str, dir: &VmDir, ip: Option<Ipv4Addr>, known_hosts: &Path) -> Probe {
        let key_file = dir.authorized_key();
        let key = std::fs::read_to_string(&key_file)
            .ok()
            .map(|k| k.trim().to_string());
        Probe {
            vm: vm.to_string(),
            uds: dir.vsock(),
            ssh: match (ip, &key) {
                (Some(ip), Some(_)) => Some(SshProbe {
                    ip,
                    public_key: key_file,
                    known_hosts: known_hosts.to_path_buf(),
                }),
                _ => None,
            },
            expect: Expect {
                work_device: Some(WORK_DEVICE.into()),
                key,
                ip,
                gateway: ip.is_some(),
            },
            boot_timeout: crate::vms::READY_TIMEOUT,
        }
    }

    fn agent(&self) -> AgentClient {
        AgentClient::hybrid(&self.uds).with_connect_timeout(Duration::from_secs(10))
    }

    /// Runs after the agent announced itself: `Ok` once everything holds,
    /// else the message the user sees.
    pub async fn run(&self) -> Result<(), String> {
        let vm = &self.vm;
        let boot = self.wait_boot_finished().await;
        let deadline = Instant::now() + SETTLE;
        let mut agent_can_report = true;
        loop {
            let mut missing = Vec::new();
            let mut sshd_installed = true;
            if agent_can_report {
                match self.agent().readiness().await {
                    Ok(r) => {
                        sshd_installed = r.sshd_installed;
                        missing = judge(&r, &self.expect);
                    }
                    Err(banger_agent::AgentError::Guest(e))
                        if e.kind == banger_proto::agent::AgentErrorKind::BadRequest =>
                    {
                        // An agent from before the readiness request.
                        tracing::warn!(
                            vm,
                            "the guest agent cannot report readiness ({e}); update the image; checking ssh only"
                        );
                        agent_can_report = false;
                    }
                    Err(e) => missing.push(format!("the guest agent does not answer: {e}")),
                }
            }
            if missing.is_empty()
                && sshd_installed
                && let Some(p) = &self.ssh
                && let Err(e) = sshd_accepts_key(p).await
            {
                missing.push(e);
            }
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let mut msg = format!("VM {vm} booted but is not ready: {}", missing.join("; "));
                if let Some(b) = boot {
                    msg.push_str(&format!(" ({b})"));
                }
                msg.push_str(&format!("; see `banger vm logs {vm}`"));
                return Err(msg);
            }
            tracing::debug!(vm, ?missing, "guest not ready yet");
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Waits (bounded) until systemd in the guest reports the boot
    /// finished; guests without systemd (banger-init) count as finished.
    /// Returns a note for a failure message when the boot did not end well.
    async fn wait_boot_finished(&self) -> Option<String> {
        let vm = &self.vm;
        let req = ExecRequest::new(["systemctl", "is-system-running", "--wait"]);
        let client = self.agent();
        match tokio::time::timeout(self.boot_timeout, client.exec_capture(&req, b"")).await {
            Ok(Ok(out)) if out.status == ExitStatus::Exited { code: 127 } => {
                tracing::debug!(vm, "no systemd in the guest: its boot is finished");
                None
            }
            Ok(Ok(out)) => {
                let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if state == "running" || state.is_empty() {
                    return None;
                }
                tracing::warn!(vm, state, "guest finished booting with failed units");
                Some(format!("systemd says the system is {state}"))
            }
            Ok(Err(e)) => {
                tracing::warn!(vm, "cannot ask the guest whether it finished booting: {e}");
                None
            }
            Err(_) => {
                tracing::warn!(vm, "the guest did not finish booting in time");
                Some(format!(
                    "the boot had not finished after {}s",
                    self.boot_timeout.as_secs()
                ))
            }
        }
    }
}

/// What OpenSSH's client printed, as a verdict.
fn ssh_verdict(stderr: &str, ip: Ipv4Addr) -> Result<(), String> {
    // sshd answered SSH_MSG_USERAUTH_PK_OK to the key offered without a
    // signature (RFC 4252 §7): it would accept a login with that key.
    if stderr.contains("Server accepts key") {
        return Ok(());
    }
    let why = if stderr.contains("Host key verification failed")
        || stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
    {
        "sshd's host key is not the one banger pinned for this VM".to_string()
    } else if stderr.contains("Permission denied") {
        "sshd refused banger's ssh key for root".to_string()
    } else {
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.starts_with("debug"))
            .unwrap_or("no answer")
            .trim()
            .to_string();
        format!("sshd is not reachable at {ip}:22 ({last})")
    };
    Err(why)
}

/// Asks the guest's sshd whether it would let banger's key log in as root,
/// without the private key (the daemon never has it): OpenSSH's client
/// offers the public key as a query and logs "Server accepts key" when sshd
/// would take it; the login itself then fails for want of a signature,
/// which is expected. Host key checking is strict against banger's pins.
pub async fn sshd_accepts_key(p: &SshProbe) -> Result<(), String> {
    let opt = |k: &str, v: &Path| format!("{k}={}", v.display());
    let mut cmd = tokio::process::Command::new("ssh");
    cmd.args(["-v", "-F", "/dev/null", "-p", "22", "-T"])
        .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
        .args(["-o", "IdentityAgent=none", "-o", "ControlPath=none"])
        .args(["-o", "PreferredAuthentications=publickey"])
        .args(["-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10"])
        .arg("-o")
        .arg(opt("IdentityFile", &p.public_key))
        .arg("-o")
        .arg(opt("UserKnownHostsFile", &p.known_hosts))
        .arg(format!("root@{}", p.ip))
        .arg("true")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(SSH_PROBE_TIMEOUT, cmd.output()).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            // No OpenSSH client on this host: the user's ssh would fail too.
            return Err(format!(
                "cannot run ssh to check the guest's sshd: {e} (install openssh-client)"
            ));
        }
        Err(_) => return Err(format!("sshd at {}:22 did not answer in time", p.ip)),
    };
    ssh_verdict(&String::from_utf8_lossy(&out.stderr), p.ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 2);

    #[test]
    fn verdicts_from_openssh_output() {
        let ok = "debug1: Offering public key: /s/authorized_key.pub ED25519 SHA256:x explicit\ndebug1: Server accepts key: /s/authorized_key.pub ED25519 SHA256:x explicit\nLoad key \"/s/authorized_key.pub\": invalid format\nroot@172.16.0.2: Permission denied (publickey).\n";
        assert_eq!(ssh_verdict(ok, IP), Ok(()));
        let refused = "debug1: Offering public key: /s/k.pub\ndebug1: Authentications that can continue: publickey\nroot@172.16.0.2: Permission denied (publickey).\n";
        assert_eq!(
            ssh_verdict(refused, IP),
            Err("sshd refused banger's ssh key for root".into())
        );
        let hk = "@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\nHost key verification failed.\n";
        assert!(ssh_verdict(hk, IP).unwrap_err().contains("pinned"));
        let down = "debug1: Connecting to 172.16.0.2 [172.16.0.2] port 22.\nssh: connect to host 172.16.0.2 port 22: Connection refused\n";
        assert_eq!(
            ssh_verdict(down, IP),
            Err("sshd is not reachable at 172.16.0.2:22 (ssh: connect to host 172.16.0.2 port 22: Connection refused)".into())
        );
    }

    #[test]
    fn probe_expects_what_the_vm_was_given() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = VmDir::new(tmp.path());
        let kh = tmp.path().join("known_hosts");
        let p = Probe::new("box", &dir, Some(IP), &kh);
        assert_eq!(p.expect.work_device.as_deref(), Some(WORK_DEVICE));
        assert!(
            p.ssh.is_none() && p.expect.key.is_none(),
            "no key authorized"
        );
        remember_key(&dir, " ssh-ed25519 AAAAk u@h\n").expect("w");
        let p = Probe::new("box", &dir, Some(IP), &kh);
        assert_eq!(p.expect.key.as_deref(), Some("ssh-ed25519 AAAAk u@h"));
        assert_eq!(p.ssh.as_ref().map(|s| s.ip), Some(IP));
        assert!(p.expect.gateway);
        let p = Probe::new("box", &dir, None, &kh);
        assert!(p.ssh.is_none() && !p.expect.gateway, "no network from here");
    }
}
