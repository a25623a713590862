//! Smoke boot of the cached minimal image under QEMU TCG (microvm), as the
//! daemon would prepare it: per-VM host key, authorized_keys written with
//! `ext4::write_files`, network from `ip=` on the command line. The NIC
//! sits on a QEMU hub with no host side: nothing leaves the process.
//! Checks the console: banger-net ran, the hostname from `ip=` is set,
//! sshd started with the written key, the agent unit started.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use banger_image::GuestEntry;
use banger_image::{ext4, store};

use crate::build::{cached_minimal, can_build};
use crate::support::have;

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn minimal_image_boots_under_qemu() {
    if !can_build() {
        return;
    }
    for t in ["qemu-system-x86_64", "ssh-keygen"] {
        if !have(t) {
            eprintln!("SKIP: {t} not found (apt-get install qemu-system-x86 openssh-client)");
            return;
        }
    }
    let built = cached_minimal();
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk.ext4");
    store::sparse_copy(&built.rootfs, &disk).expect("copy disk");
    let key = dir.path().join("hk");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen");
    assert!(st.success());
    let read = |p: &std::path::Path| std::fs::read(p).expect("read key");
    let pubkey = read(&key.with_extension("pub"));
    ext4::write_files(
        &disk,
        &[
            GuestEntry::file("/etc/ssh/ssh_host_ed25519_key", read(&key), 0o600),
            GuestEntry::file("/etc/ssh/ssh_host_ed25519_key.pub", pubkey.clone(), 0o644),
            GuestEntry::file("/root/.ssh/authorized_keys", pubkey, 0o600),
        ],
    )
    .expect("personalise disk");

    let tsc = banger_vmm::host::host_tsc().khz;
    let console = dir.path().join("console.log");
    let append = format!(
        "console=ttyS0 reboot=t panic=-1 root=/dev/vda rw loglevel=4 systemd.show_status=1 \
         tsc_early_khz={tsc} ip=10.231.0.2::10.231.0.1:255.255.255.0:bangerboot:eth0:off:10.231.0.1"
    );
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-accel", "tcg", "-M", "microvm", "-cpu", "qemu64", "-smp", "2", "-m", "1G",
        ])
        .args(["-nographic", "-no-reboot", "-nodefaults", "-serial"])
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(&built.kernel.vmlinuz)
        .arg("-initrd")
        .arg(built.kernel.initrd.as_ref().expect("initrd"))
        .args(["-append", &append])
        .arg("-drive")
        .arg(format!(
            "id=root,file={},format=raw,if=none",
            disk.display()
        ))
        .args(["-device", "virtio-blk-device,drive=root"])
        .args([
            "-netdev",
            "hubport,id=n0,hubid=0",
            "-device",
            "virtio-net-device,netdev=n0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start qemu");
    let mut qemu = Kill(child);

    let want = [
        "Finished banger-net",
        "Started ssh.service",
        "Started banger-vsock-agent",
        "bangerboot login:",
    ];
    let start = Instant::now();
    let mut text = String::new();
    while start.elapsed() < Duration::from_secs(300) {
        text = strip_ansi(&String::from_utf8_lossy(
            &std::fs::read(&console).unwrap_or_default(),
        ));
        if want.iter().all(|w| text.contains(w)) {
            break;
        }
        if let Ok(Some(status)) = qemu.0.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = qemu.0.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!(
                "qemu exited early ({status}): {err}\nconsole tail:\n{}",
                tail(&text)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let missing: Vec<&&str> = want.iter().filter(|w| !text.contains(**w)).collect();
    assert!(
        missing.is_empty(),
        "guest did not show {missing:?} within 300 s; console tail:\n{}",
        tail(&text)
    );
    assert!(!text.contains("FAILED"), "a unit failed:\n{}", tail(&text));
    eprintln!(
        "minimal image booted to login in {:.1}s",
        start.elapsed().as_secs_f64()
    );
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
