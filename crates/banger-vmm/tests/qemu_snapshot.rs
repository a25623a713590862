//! Real snapshots of a booted Debian guest through the QEMU driver (TCG here). Needs root
//! (test guest, network namespaces) and qemu-system-x86_64.
//!
//! Boot the cached test guest with its RAM in a file and a NIC on a tap in namespace A →
//! snapshot it (it keeps running) → restore two VMs from the snapshot, each with its own
//! disk, console log and a tap in its own namespace (B, C: the guests keep the same
//! static address) → all three answer ping → a snapshot whose state file is truncated is
//! refused by `Snapshot::open`, and one that passes the checksum but holds a bad stream is
//! refused by QEMU with nothing left behind (no process, disks or sockets).

use std::path::Path;
use std::time::{Duration, Instant};

use banger_testkit::guest::{GUEST_IP, GUEST_PEER_CIDR, READY_MARKER};
use banger_testkit::netns::TestNetns;
use banger_vmm::snapshot::STATE_FILE;
use banger_vmm::{
    AfterSnapshot, KernelFiles, MacAddr, MemoryMode, NetSpec, QemuDriver, RunningVmm, Snapshot,
    Vmm, VmmChoice, VmmConfig, VmmError, VmmSpec, clone_disk, create_work_disk, select_vmm,
};

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

fn tail(p: &Path) -> String {
    banger_testkit::tail_file(p, 40)
}

async fn wait_ready(vm: &mut RunningVmm, console: &Path) {
    let t0 = Instant::now();
    loop {
        let text =
            String::from_utf8_lossy(&std::fs::read(console).unwrap_or_default()).into_owned();
        if text.contains(READY_MARKER) && text.contains("multi-user.target") {
            eprintln!("cold boot: ready after {:.1}s", t0.elapsed().as_secs_f64());
            return;
        }
        assert!(vm.is_alive(), "qemu exited during boot:\n{}", tail(console));
        assert!(
            t0.elapsed() < BOOT_TIMEOUT,
            "no multi-user within {BOOT_TIMEOUT:?}:\n{}",
            tail(console)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A namespace with tap `bgt0` addressed as the guest's peer.
fn netns_with_tap() -> TestNetns {
    let ns = TestNetns::create().expect("create netns");
    ns.ip(&["tuntap", "add", "dev", "bgt0", "mode", "tap"])
        .expect("tap");
    ns.ip(&["addr", "add", GUEST_PEER_CIDR, "dev", "bgt0"])
        .expect("addr");
    ns.ip(&["link", "set", "bgt0", "up"]).expect("up");
    ns
}

fn pings(ns: &TestNetns, console: &Path, within: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let out = ns
            .exec(&["ping", "-c", "1", "-W", "1", GUEST_IP])
            .expect("ping");
        if out.status.success() {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < within,
            "guest in {} does not answer ping:\n{}",
            ns.name(),
            tail(console)
        );
    }
}

fn spec_in(dir: &Path, name: &str, kernel: &KernelFiles, boot_args: &str) -> VmmSpec {
    let mut s = VmmSpec::new(name, dir, kernel.clone(), &dir.join("root.ext4"));
    s.boot_args = boot_args.to_string();
    s.work_disk = Some(dir.join("work.ext4"));
    s.vcpus = 2;
    s.memory_mib = 512;
    s.net = Some(NetSpec {
        tap: "bgt0".into(),
        mac: MacAddr::derive(name),
    });
    s
}

// current_thread: the thread switches namespaces, and each VMM starts in the one it is in.
#[tokio::test(flavor = "current_thread")]
async fn a_booted_guest_is_snapshotted_and_restored_twice_and_bad_state_is_refused() {
    if !banger_testkit::is_root() {
        eprintln!("SKIP: the QEMU snapshot test needs root (test guest, network namespaces)");
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
    let guest = banger_testkit::test_guest().expect("test guest");
    let driver = QemuDriver::new(sel.qemu_bin.clone().expect("qemu"), sel.accel, sel.tsc.khz);
    eprintln!("qemu-img: {:?}", driver.qemu_img);
    let kernel = KernelFiles {
        vmlinux: None,
        vmlinuz: Some(guest.vmlinuz.clone()),
        initrd: Some(guest.initrd.clone()),
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let ram = tempfile::tempdir_in("/dev/shm").expect("tmpfs dir for guest RAM");
    let mk = |n: &str| {
        let d = tmp.path().join(n);
        std::fs::create_dir(&d).expect("mkdir");
        d
    };
    let (src_dir, a_dir, b_dir, bad_dir) = (mk("src"), mk("a"), mk("b"), mk("bad"));

    // Source: cold boot in namespace A.
    let ns_src = netns_with_tap();
    let mut src_spec = spec_in(&src_dir, "snap-src", &kernel, &guest.boot_args);
    src_spec.memory_file = Some(ram.path().join("snap-src.mem"));
    clone_disk(&guest.rootfs, &src_spec.root_disk).expect("root disk");
    create_work_disk(&src_dir.join("work.ext4"), 64 << 20).expect("work disk");
    let mut src = {
        let _in = ns_src.enter().expect("enter");
        driver.start(&src_spec).await.expect("start source")
    };
    src.set_kill_on_drop(true);
    wait_ready(&mut src, &src_spec.console_log).await;
    pings(&ns_src, &src_spec.console_log, Duration::from_secs(60));

    // Snapshot; the source keeps running.
    let snap_dir = tmp.path().join("snapshot-1");
    let t0 = Instant::now();
    let snap = driver
        .snapshot(&mut src, &src_spec, &snap_dir, AfterSnapshot::Resume)
        .await
        .unwrap_or_else(|e| panic!("snapshot: {e}\n{}", tail(&src_dir.join("qemu.log"))));
    let m = &snap.manifest;
    eprintln!(
        "snapshot: {:.0} ms total, guest paused for save {} ms + disk copy {} ms; state {} KB, \
         RAM file {} MB apparent",
        t0.elapsed().as_secs_f64() * 1000.0,
        m.save_ms,
        m.disk_copy_ms,
        m.state_bytes / 1024,
        m.mem_bytes >> 20
    );
    assert_eq!(m.memory, MemoryMode::File);
    assert_eq!(m.mem_bytes, 512 << 20);
    assert!(
        m.state_bytes < 8 << 20,
        "RAM leaked into the state stream: {} bytes",
        m.state_bytes
    );
    assert!(!tmp.path().join("snapshot-1.partial").exists());
    let snap = Snapshot::open(&snap.dir).expect("reopen the snapshot");
    pings(&ns_src, &src_spec.console_log, Duration::from_secs(30));
    eprintln!("source still answers after the snapshot");

    // Two restores, each in its own namespace with its own disks and console.
    let mut restored = Vec::new();
    for (dir, name) in [(&a_dir, "snap-a"), (&b_dir, "snap-b")] {
        let ns = netns_with_tap();
        let spec = spec_in(dir, name, &kernel, &guest.boot_args);
        let r = {
            let _in = ns.enter().expect("enter");
            driver
                .restore(&snap, &spec)
                .await
                .unwrap_or_else(|e| panic!("restore {name}: {e}\n{}", tail(&dir.join("qemu.log"))))
        };
        let mut vm = r.vm;
        vm.set_kill_on_drop(true);
        eprintln!(
            "restore {name}: disks {:?} in {} ms, restore {} ms",
            r.report.disks, r.report.disk_ms, r.report.restore_ms
        );
        let answered = pings(&ns, &spec.console_log, Duration::from_secs(30));
        eprintln!(
            "{name} answers ping {} ms after restore",
            answered.as_millis()
        );
        assert!(vm.is_alive());
        restored.push((vm, spec, ns));
    }
    assert_ne!(restored[0].0.pid(), restored[1].0.pid());
    // Both keep running side by side (and the source too).
    for (vm, spec, ns) in &mut restored {
        pings(ns, &spec.console_log, Duration::from_secs(10));
        assert!(vm.is_alive());
    }
    pings(&ns_src, &src_spec.console_log, Duration::from_secs(10));

    // A truncated state file: refused before any VMM starts.
    let state = snap.dir.join(STATE_FILE);
    let good = std::fs::read(&state).expect("state");
    std::fs::write(&state, &good[..good.len() / 2]).expect("truncate");
    let err = Snapshot::open(&snap.dir).expect_err("truncated state must be refused");
    eprintln!("truncated: {err}");
    assert!(err.to_string().contains("truncated"), "{err}");
    // The same truncated stream handed to QEMU (a `Snapshot` opened before the damage):
    // QEMU refuses it, and nothing of the new VM remains.
    let forged = snap.clone();
    let spec = spec_in(&bad_dir, "snap-bad", &kernel, &guest.boot_args);
    let ns_bad = netns_with_tap();
    let err = {
        let _in = ns_bad.enter().expect("enter");
        driver
            .restore(&forged, &spec)
            .await
            .map(|_| ())
            .expect_err("a bad stream must fail")
    };
    eprintln!("bad stream: {err}");
    assert!(matches!(err, VmmError::Snapshot { .. }), "{err}");
    let left: Vec<_> = std::fs::read_dir(&bad_dir)
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".ext4") || n.ends_with(".sock"))
        .collect();
    assert!(left.is_empty(), "a failed restore left {left:?}");
    std::fs::write(&state, &good).expect("put the state back");
    Snapshot::open(&snap.dir).expect("whole again");

    for (mut vm, _spec, _ns) in restored {
        let h = vm.handle().clone();
        driver
            .stop(&mut vm, Duration::from_secs(30))
            .await
            .expect("stop restored");
        assert!(!h.process.is_alive());
    }
    driver
        .stop(&mut src, Duration::from_secs(30))
        .await
        .expect("stop source");
    assert!(
        !ram.path().join("snap-src.mem").exists(),
        "the source's RAM file outlived it"
    );
}
