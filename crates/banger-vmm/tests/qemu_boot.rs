//! Real boots of a Debian guest through the QEMU driver (TCG on hosts whose KVM cannot run
//! guests). Needs root (to build the cached test guest) and qemu-system-x86_64.
//!
//! Everything runs inside a network namespace the test creates: create disks → start →
//! console shows multi-user reached (marker unit, with the root and work devices) →
//! graceful stop → start again with a virtio-net NIC on a tap in that namespace (ping the
//! guest, check its MAC) and the agent's virtio-serial port (QEMU listens on its chardev
//! socket) → stop → no processes or sockets left behind.

use std::path::Path;
use std::time::{Duration, Instant};

use banger_testkit::guest::{GUEST_IP, GUEST_PEER_CIDR, READY_MARKER};
use banger_testkit::netns::TestNetns;
use banger_vmm::{
    AgentPortSpec, KernelFiles, MacAddr, NetSpec, QemuDriver, RunningVmm, StopMethod, Vmm,
    VmmChoice, VmmConfig, VmmKind, VmmSpec, clone_disk, create_work_disk, select_vmm,
};

const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

fn console_tail(path: &Path) -> String {
    banger_testkit::tail_file(path, 60)
}

/// Waits until the console shows, for the `n`th time (the log is appended across boots),
/// both the marker unit's line and systemd reaching multi-user.target; returns the marker line.
async fn wait_ready(vm: &mut RunningVmm, console: &Path, n: usize) -> String {
    let t0 = Instant::now();
    loop {
        let text =
            String::from_utf8_lossy(&std::fs::read(console).unwrap_or_default()).into_owned();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains(READY_MARKER)).collect();
        let multi_user = text
            .lines()
            .filter(|l| l.contains("Reached target") && l.contains("multi-user.target"))
            .count();
        if lines.len() >= n && multi_user >= n {
            eprintln!("boot {n}: ready after {:.1}s", t0.elapsed().as_secs_f64());
            return lines[n - 1].to_string();
        }
        if !vm.is_alive() {
            panic!(
                "qemu exited during boot {n} ({:?}); console tail:\n{}",
                vm.status(),
                console_tail(console)
            );
        }
        if t0.elapsed() > BOOT_TIMEOUT {
            panic!(
                "guest did not reach multi-user within {BOOT_TIMEOUT:?}; console tail:\n{}",
                console_tail(console)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// current_thread: the test thread enters the test netns, and the VMMs it spawns live there.
#[tokio::test(flavor = "current_thread")]
async fn debian_guest_boots_stops_and_boots_again_under_qemu() {
    if !banger_testkit::is_root() {
        eprintln!("SKIP: the QEMU boot test needs root (to build the test guest with mmdebstrap)");
        return;
    }
    let sel = match select_vmm(&VmmConfig {
        preference: VmmChoice::Qemu,
        ..Default::default()
    }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("SKIP: {e}");
            return;
        }
    };
    assert_eq!(sel.kind, VmmKind::Qemu);
    eprintln!(
        "selection: {} (accel {:?}, tsc {:?})",
        sel.reason, sel.accel, sel.tsc
    );
    let guest = banger_testkit::test_guest().expect("build/reuse the test guest");
    let netns = TestNetns::create().expect("create the test network namespace");
    let _inside = netns.enter().expect("enter the test netns");
    eprintln!("running inside netns {}", netns.name());

    let dir = tempfile::tempdir().expect("tempdir");
    let vm_dir = dir.path();
    let root = vm_dir.join("root.ext4");
    let work = vm_dir.join("work.ext4");
    let method = clone_disk(&guest.rootfs, &root).expect("clone root disk");
    eprintln!("root disk cloned by {method:?}");
    create_work_disk(&work, 256 << 20).expect("work disk");

    let driver = QemuDriver::new(sel.qemu_bin.clone().expect("qemu"), sel.accel, sel.tsc.khz);
    let kernel = KernelFiles {
        vmlinux: None,
        vmlinuz: Some(guest.vmlinuz.clone()),
        initrd: Some(guest.initrd.clone()),
    };
    let mut spec = VmmSpec::new("boot-test", vm_dir, kernel, &root);
    spec.boot_args = guest.boot_args.clone();
    spec.work_disk = Some(work.clone());
    spec.vcpus = 2;
    spec.memory_mib = 1024;
    let console = spec.console_log.clone();

    // First boot: no network, no agent port.
    let t0 = Instant::now();
    let mut vm = driver
        .start(&spec)
        .await
        .unwrap_or_else(|e| panic!("start: {e}\nconsole:\n{}", console_tail(&console)));
    eprintln!("qemu started (pid {}) in {:?}", vm.pid(), t0.elapsed());
    vm.set_kill_on_drop(true); // no leaked guest if an assertion fails
    let line = wait_ready(&mut vm, &console, 1).await;
    assert!(
        line.contains("root=/dev/vda"),
        "root is not /dev/vda: {line}"
    );
    assert!(
        line.contains("work=/dev/vdb"),
        "work disk is not /dev/vdb: {line}"
    );
    let handle = vm.handle().clone();
    let out = driver
        .stop(&mut vm, Duration::from_secs(60))
        .await
        .expect("stop");
    eprintln!("first stop: {out:?}");
    assert_eq!(
        out.method,
        StopMethod::Graceful,
        "ACPI powerdown should shut the guest down; console:\n{}",
        console_tail(&console)
    );
    assert!(!handle.process.is_alive());
    assert!(!handle.control_socket.exists(), "QMP socket left behind");

    // Second boot from the same disks, with the agent's virtio-serial port.
    let agent_sock = vm_dir.join("agent.sock");
    spec.agent_port = Some(AgentPortSpec {
        socket: agent_sock.clone(),
        name: "banger.agent".into(),
    });
    // A tap inside the test namespace, with the host side addressed; the test guest's
    // systemd-networkd gives its NIC the other address of the /30.
    let tap = "bgt0";
    netns
        .ip(&["tuntap", "add", "dev", tap, "mode", "tap"])
        .expect("create tap");
    netns
        .ip(&["addr", "add", GUEST_PEER_CIDR, "dev", tap])
        .expect("address tap");
    netns.ip(&["link", "set", tap, "up"]).expect("tap up");
    let mac = MacAddr::derive("boot-test");
    spec.net = Some(NetSpec {
        tap: tap.into(),
        mac,
    });
    let mut vm = driver
        .start(&spec)
        .await
        .unwrap_or_else(|e| panic!("restart: {e}\nconsole:\n{}", console_tail(&console)));
    vm.set_kill_on_drop(true);
    wait_ready(&mut vm, &console, 2).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = netns
            .exec(&["ping", "-c", "1", "-W", "1", GUEST_IP])
            .expect("run ping");
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "guest does not answer ping on the tap; console:\n{}",
            console_tail(&console)
        );
    }
    let neigh = netns
        .exec(&["ip", "neigh", "show", GUEST_IP])
        .expect("ip neigh");
    let neigh = String::from_utf8_lossy(&neigh.stdout).to_string();
    assert!(
        neigh.contains(&mac.to_string()),
        "guest MAC {mac} not seen on the tap: {neigh}"
    );
    eprintln!("guest answers ping on the tap with MAC {mac}");
    // QEMU accepted the port on microvm and listens on its chardev (one client at a time).
    let conn = std::os::unix::net::UnixStream::connect(&agent_sock);
    assert!(
        conn.is_ok(),
        "QEMU does not listen on {}: {conn:?}",
        agent_sock.display()
    );
    drop(conn);
    let handle = vm.handle().clone();
    let out = driver
        .stop(&mut vm, Duration::from_secs(60))
        .await
        .expect("stop");
    eprintln!("second stop: {out:?}");
    assert_ne!(
        out.method,
        StopMethod::Killed,
        "console:\n{}",
        console_tail(&console)
    );
    for h in &handle.helpers {
        assert!(!h.process.is_alive(), "{} still running after stop", h.name);
    }
    assert!(!handle.process.is_alive());
    assert!(!agent_sock.exists(), "agent socket left behind");
}
