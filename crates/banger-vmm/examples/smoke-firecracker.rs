//! End-to-end smoke test of the Firecracker driver against the REAL firecracker.
//!
//! `smoke-firecracker probe` exits 0 when this host can run it (firecracker on PATH and a
//! /dev/kvm that runs guests), 3 otherwise, printing why.
//! `smoke-firecracker boot [vmlinux]` boots the cached test guest (banger-testkit) with
//! that kernel (default: the ELF extracted from the guest's own vmlinuz): waits for multi-user on the serial console, does a host→guest vsock round
//! trip, stops with Ctrl-Alt-Del, boots again and stops. Used by scripts/smoke-firecracker.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use banger_testkit::guest::{GUEST_HOSTNAME, READY_MARKER, VSOCK_ECHO_PORT};
use banger_vmm::{
    Driver, KernelFiles, RunningVmm, Vmm, VmmChoice, VmmConfig, VmmKind, VmmSpec, VsockSpec,
    clone_disk, create_work_disk, select_vmm,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("smoke-firecracker: FAIL: {msg}");
    std::process::exit(1);
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let sel = select_vmm(&VmmConfig {
        preference: VmmChoice::Auto,
        ..Default::default()
    });
    match args.get(1).map(String::as_str) {
        Some("probe") => match sel {
            Ok(s) if s.kind == VmmKind::Firecracker => {
                println!("firecracker usable: {}", s.reason);
                std::process::exit(0);
            }
            Ok(s) => {
                println!("{}", s.reason);
                for f in s.kvm.findings.iter().filter(|f| !f.ok) {
                    println!(
                        "  {}: {} (fix: {})",
                        f.check,
                        f.detail,
                        f.fix.as_deref().unwrap_or("-")
                    );
                }
                std::process::exit(3);
            }
            Err(e) => {
                println!("{e}");
                std::process::exit(3);
            }
        },
        Some("boot") => {
            let vmlinux = args.get(2).map(PathBuf::from);
            let sel = sel.unwrap_or_else(|e| fail(e));
            let driver = Driver::for_kind(VmmKind::Firecracker, &sel).unwrap_or_else(|e| fail(e));
            boot(&driver, vmlinux).await;
        }
        _ => {
            eprintln!("usage: smoke-firecracker probe | boot [vmlinux]");
            std::process::exit(2);
        }
    }
}

async fn boot(driver: &Driver, vmlinux: Option<PathBuf>) {
    let guest = banger_testkit::test_guest().unwrap_or_else(|e| fail(e));
    let dir = tempfile::tempdir().unwrap_or_else(|e| fail(e));
    let vmlinux = vmlinux.unwrap_or_else(|| {
        let out = dir.path().join("vmlinux");
        banger_testkit::extract_vmlinux(&guest.vmlinuz, &out).unwrap_or_else(|e| fail(e));
        out
    });
    let root = dir.path().join("root.ext4");
    let work = dir.path().join("work.ext4");
    clone_disk(&guest.rootfs, &root).unwrap_or_else(|e| fail(e));
    create_work_disk(&work, 256 << 20).unwrap_or_else(|e| fail(e));
    let kernel = KernelFiles {
        vmlinux: Some(vmlinux),
        vmlinuz: None,
        initrd: Some(guest.initrd.clone()),
    };
    let mut spec = VmmSpec::new("smoke", dir.path(), kernel, &root);
    spec.boot_args = guest.boot_args.clone();
    spec.work_disk = Some(work);
    spec.vsock = Some(VsockSpec {
        guest_cid: 3,
        uds_path: dir.path().join("v.sock"),
    });
    for n in 1..=2 {
        let t0 = Instant::now();
        let mut vm = driver.start(&spec).await.unwrap_or_else(|e| fail(e));
        wait_ready(&mut vm, &spec.console_log, n).await;
        println!(
            "boot {n}: multi-user after {:.1}s",
            t0.elapsed().as_secs_f64()
        );
        let reply = vsock(&dir.path().join("v.sock")).await;
        if reply != GUEST_HOSTNAME {
            fail(format!("vsock reply {reply:?}"));
        }
        println!("boot {n}: vsock round trip OK");
        let out = driver
            .stop(&mut vm, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| fail(e));
        println!("boot {n}: stop {out:?}");
    }
    println!("smoke-firecracker: PASS");
}

async fn wait_ready(vm: &mut RunningVmm, console: &Path, n: usize) {
    let t0 = Instant::now();
    loop {
        let text =
            String::from_utf8_lossy(&std::fs::read(console).unwrap_or_default()).into_owned();
        if text.matches(READY_MARKER).count() >= n {
            return;
        }
        if !vm.is_alive() || t0.elapsed() > Duration::from_secs(120) {
            fail(format!(
                "guest did not reach multi-user (status {:?}); console tail:\n{}",
                vm.status(),
                banger_testkit::tail_file(console, 60)
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn vsock(uds: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = async {
            let mut s = tokio::net::UnixStream::connect(uds)
                .await
                .map_err(|e| e.to_string())?;
            s.write_all(format!("CONNECT {VSOCK_ECHO_PORT}\n").as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut r = BufReader::new(s);
            let mut ok = String::new();
            r.read_line(&mut ok).await.map_err(|e| e.to_string())?;
            if !ok.starts_with("OK ") {
                return Err(format!("expected OK, got {ok:?}"));
            }
            let mut reply = String::new();
            r.read_line(&mut reply).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(reply.trim().to_string())
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(r)) => return r,
            Ok(Err(e)) if Instant::now() < deadline => eprintln!("vsock not ready: {e}"),
            Err(_) if Instant::now() < deadline => eprintln!("vsock timed out; retrying"),
            other => fail(format!("vsock: {other:?}")),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
