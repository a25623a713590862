//! Unit tests of the snapshot layout: atomic commit, cleanup, and the checks `open` makes.

use super::*;

fn manifest(mem_bytes: u64, disks: Vec<SnapshotDisk>) -> SnapshotManifest {
    SnapshotManifest {
        format: SNAPSHOT_FORMAT,
        vmm: VmmKind::Qemu,
        vmm_fingerprint: "qemu size=1 mtime=1.0".into(),
        vcpus: 2,
        memory_mib: 128,
        kernel: KernelFiles::default(),
        boot_args: "root=/dev/vda".into(),
        memory: MemoryMode::File,
        disks,
        mac: None,
        vsock_cid: None,
        agent_port: None,
        state_bytes: 0,
        state_sha256: String::new(),
        mem_bytes,
        created_unix: 0,
        save_ms: 1,
        disk_copy_ms: 1,
    }
}

/// A committed snapshot with a 4 KiB state, a 64 KiB memory file and one disk.
fn make(root: &Path) -> Snapshot {
    let dest = root.join("snap-1");
    let p = Partial::create(&dest).expect("partial");
    std::fs::write(p.path.join(STATE_FILE), vec![5u8; 4096]).expect("state");
    std::fs::write(p.path.join(MEM_FILE), vec![0u8; 65536]).expect("mem");
    std::fs::write(p.path.join("root.ext4"), vec![1u8; 1000]).expect("disk");
    let disks = vec![SnapshotDisk {
        id: "root".into(),
        file: "root.ext4".into(),
        bytes: 1000,
    }];
    p.commit(manifest(65536, disks)).expect("commit")
}

#[test]
fn a_committed_snapshot_opens_and_its_partial_dir_is_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let snap = make(dir.path());
    assert!(snap.dir.join(MANIFEST_FILE).is_file());
    assert!(!dir.path().join("snap-1.partial").exists());
    let opened = Snapshot::open(&snap.dir).expect("open");
    assert_eq!(opened.manifest.state_bytes, 4096);
    assert_eq!(opened.manifest.state_sha256.len(), 64);
    assert!(Partial::create(&snap.dir).is_err(), "must not overwrite");
}

#[test]
fn an_uncommitted_snapshot_leaves_nothing_and_a_stale_partial_is_discarded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("s");
    {
        let p = Partial::create(&dest).expect("partial");
        std::fs::write(p.path.join(STATE_FILE), b"x").expect("state");
    }
    assert!(!dir.path().join("s.partial").exists());
    assert!(!dest.exists());
    // A crash (no Drop) leaves the partial dir: open refuses it, create replaces it.
    let p = Partial::create(&dest).expect("partial");
    std::fs::write(p.path.join(STATE_FILE), b"x").expect("state");
    std::mem::forget(p);
    assert!(Snapshot::open(&dir.path().join("s.partial")).is_err());
    let p = Partial::create(&dest).expect("partial again");
    assert!(
        !p.path.join(STATE_FILE).exists(),
        "stale partial not discarded"
    );
}

#[test]
fn corrupt_or_truncated_files_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let snap = make(dir.path());
    let state = snap.state_path();
    // One flipped byte: same length, different checksum.
    let mut bytes = std::fs::read(&state).expect("read");
    bytes[100] ^= 0xff;
    std::fs::write(&state, &bytes).expect("write");
    let err = Snapshot::open(&snap.dir).expect_err("corrupt").to_string();
    assert!(err.contains("corrupt or truncated"), "{err}");
    bytes[100] ^= 0xff;
    std::fs::write(&state, &bytes[..2000]).expect("truncate");
    let err = Snapshot::open(&snap.dir)
        .expect_err("truncated")
        .to_string();
    assert!(err.contains("2000 bytes, expected 4096"), "{err}");
    std::fs::write(&state, &bytes).expect("restore");
    Snapshot::open(&snap.dir).expect("whole again");
    std::fs::write(snap.mem_path(), vec![0u8; 100]).expect("truncate mem");
    let err = Snapshot::open(&snap.dir).expect_err("mem").to_string();
    assert!(err.contains("memory file has 100 bytes"), "{err}");
    std::fs::write(snap.mem_path(), vec![0u8; 65536]).expect("mem back");
    std::fs::remove_file(snap.dir.join("root.ext4")).expect("rm disk");
    let err = Snapshot::open(&snap.dir).expect_err("disk").to_string();
    assert!(err.contains("root disk"), "{err}");
    std::fs::write(snap.dir.join(MANIFEST_FILE), b"{").expect("bad manifest");
    assert!(Snapshot::open(&snap.dir).is_err());
}

#[test]
fn a_snapshot_refuses_another_vmm_binary_or_shape() {
    let dir = tempfile::tempdir().expect("tempdir");
    let snap = make(dir.path());
    let vm_dir = dir.path().join("vm");
    std::fs::create_dir(&vm_dir).expect("mkdir");
    let mut spec = VmmSpec::new(
        "r",
        &vm_dir,
        KernelFiles::default(),
        &vm_dir.join("root.ext4"),
    );
    spec.vcpus = 2;
    spec.memory_mib = 128;
    let fp = snap.manifest.vmm_fingerprint.clone();
    snap.check_restorable(&spec, VmmKind::Qemu, &fp)
        .expect("same shape");
    let e = snap
        .check_restorable(&spec, VmmKind::Firecracker, &fp)
        .expect_err("kind");
    assert!(e.to_string().contains("made by qemu"), "{e}");
    let e = snap
        .check_restorable(&spec, VmmKind::Qemu, "qemu size=2 mtime=2.0")
        .expect_err("binary");
    assert!(e.to_string().contains("another qemu binary"), "{e}");
    // The agent's serial port is part of the device set: a VM with one cannot take a
    // snapshot without one (its guest agent would never be reached), nor the reverse.
    spec.agent_port = Some(crate::AgentPortSpec {
        socket: "/tmp/agent.sock".into(),
        name: "banger.agent".into(),
    });
    let e = snap
        .check_restorable(&spec, VmmKind::Qemu, &fp)
        .expect_err("agent port");
    assert!(e.to_string().contains("agent serial port"), "{e}");
    spec.agent_port = None;
    spec.memory_mib = 256;
    let e = snap
        .check_restorable(&spec, VmmKind::Qemu, &fp)
        .expect_err("shape");
    assert!(e.to_string().contains("128 MiB"), "{e}");
}

#[test]
fn only_plain_absolute_paths_reach_a_shell_command_line() {
    for ok in ["/var/lib/banger/snapshots/a-1.b_2", "/tmp/x"] {
        check_plain_path("p", Path::new(ok)).expect(ok);
    }
    for bad in [
        "relative/path",
        "/tmp/a b",
        "/tmp/$(reboot)",
        "/tmp/a;b",
        "/tmp/a'b",
        "/tmp/../etc",
        "/tmp/a>b",
        "/tmp/ü",
    ] {
        assert!(check_plain_path("p", Path::new(bad)).is_err(), "{bad}");
    }
}
