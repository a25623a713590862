//! The Firecracker driver's snapshot flows against the FAKE firecracker: pause → create →
//! disks copied → resume; restore into a new VM dir (own disks, tap and vsock overrides,
//! resume), and the failures: a refused create leaves no snapshot and a running source, a
//! refused or unreadable load leaves no process and no disks, a shape mismatch is refused
//! before anything starts.

use std::path::Path;
use std::time::Duration;

use banger_testkit::fake::{FakeFirecrackerConfig, read_fake_calls, write_fake_config};
use banger_testkit::openapi::{OpenApi, firecracker_spec_path};
use banger_vmm::firecracker_snapshot::restore_requests;
use banger_vmm::{
    AfterSnapshot, FirecrackerDriver, KernelFiles, MacAddr, NetSpec, Snapshot, Vmm, VmmError,
    VmmSpec, VsockSpec,
};

fn driver() -> FirecrackerDriver {
    let mut d = FirecrackerDriver::new(env!("CARGO_BIN_EXE_fake-firecracker").into());
    d.socket_timeout = Duration::from_millis(1500);
    d
}

fn spec(dir: &Path, name: &str) -> VmmSpec {
    let kernel = KernelFiles {
        vmlinux: Some(dir.join("vmlinux")),
        vmlinuz: None,
        initrd: None,
    };
    let mut s = VmmSpec::new(name, dir, kernel, &dir.join("root.ext4"));
    s.memory_mib = 256;
    s.work_disk = Some(dir.join("work.ext4"));
    s.net = Some(NetSpec {
        tap: format!("tap-{name}"),
        mac: MacAddr::derive(name),
    });
    s.vsock = Some(VsockSpec {
        guest_cid: 3,
        uds_path: dir.join("v.sock"),
    });
    s
}

/// A source VM dir with distinct disk contents, and the fake's behaviour file.
fn source(dir: &Path, config: &FakeFirecrackerConfig) -> VmmSpec {
    std::fs::write(dir.join("vmlinux"), b"").expect("kernel");
    std::fs::write(dir.join("root.ext4"), vec![0x5au8; 8192]).expect("root");
    std::fs::write(dir.join("work.ext4"), vec![0x77u8; 4096]).expect("work");
    write_fake_config(dir, config).expect("config");
    spec(dir, "fc-src")
}

/// Processes whose working directory is `dir` (firecracker runs in its VM dir).
fn processes_in(dir: &Path) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd"))
                .ok()
                .as_deref()
                == Some(dir)
        })
        .collect()
}

#[tokio::test]
async fn snapshot_then_restore_into_a_new_vm_with_its_own_disks_tap_and_vsock() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src_dir = tmp.path().join("src");
    let new_dir = tmp.path().join("new");
    std::fs::create_dir_all(&src_dir).expect("mkdir");
    std::fs::create_dir_all(&new_dir).expect("mkdir");
    let d = driver();
    let src_spec = source(&src_dir, &FakeFirecrackerConfig::default());
    let mut src = d.start(&src_spec).await.expect("start");
    src.set_kill_on_drop(true);
    let snap_dir = tmp.path().join("snap");
    let snap = d
        .snapshot(&mut src, &src_spec, &snap_dir, AfterSnapshot::Resume)
        .await
        .expect("snapshot");
    let calls = read_fake_calls(&src_dir).expect("calls");
    let tail: Vec<(String, String)> = calls[calls.len() - 3..]
        .iter()
        .map(|c| (c.method.clone(), c.path.clone()))
        .collect();
    assert_eq!(
        tail,
        [
            ("PATCH".to_string(), "/vm".to_string()),
            ("PUT".into(), "/snapshot/create".into()),
            ("PATCH".into(), "/vm".into()),
        ]
    );
    assert_eq!(calls[calls.len() - 1].body["state"], "Resumed");
    assert!(src.is_alive(), "the source must keep running");
    assert_eq!(snap.manifest.mem_bytes, 256 << 20);
    assert_eq!(
        std::fs::read(snap.dir.join("root.ext4")).expect("disk"),
        std::fs::read(&src_spec.root_disk).expect("disk")
    );
    let snap = Snapshot::open(&snap.dir).expect("open");

    let mut new_spec = spec(&new_dir, "fc-new");
    write_fake_config(&new_dir, &FakeFirecrackerConfig::default()).expect("config");
    new_spec.kernel = src_spec.kernel.clone();
    let restored = d.restore(&snap, &new_spec).await.expect("restore");
    let mut vm = restored.vm;
    vm.set_kill_on_drop(true);
    assert!(vm.is_alive());
    let calls = read_fake_calls(&new_dir).expect("calls");
    let got: Vec<_> = calls
        .iter()
        .map(|c| (c.method.clone(), c.path.clone(), c.body.clone()))
        .collect();
    let want: Vec<_> = restore_requests(&snap.dir, &new_spec)
        .into_iter()
        .map(|r| (r.method.to_string(), r.path, r.body))
        .collect();
    assert_eq!(
        got, want,
        "the fake must have received exactly the restore requests"
    );
    assert!(calls.iter().all(|c| c.status == 204), "{calls:?}");
    if firecracker_spec_path().exists() {
        let api = OpenApi::load(&firecracker_spec_path()).expect("spec");
        for c in &calls {
            api.validate(&c.method, &c.path, &c.body)
                .unwrap_or_else(|e| panic!("{} {}: {e:?}", c.method, c.path));
        }
    }
    let console = std::fs::read_to_string(&new_spec.console_log).expect("console");
    assert!(console.contains("snapshot loaded"), "{console}");
    assert!(
        console.contains("tap-fc-new"),
        "tap override not applied: {console}"
    );
    assert!(
        console.contains(&new_dir.join("v.sock").display().to_string()),
        "vsock override not applied: {console}"
    );
    assert!(console.contains("vm resumed"), "{console}");
    assert_eq!(
        std::fs::read(new_dir.join("work.ext4")).expect("disk"),
        vec![0x77u8; 4096],
        "the restored VM must get its own copy of the snapshot's disks"
    );
    d.stop(&mut vm, Duration::from_secs(5)).await.expect("stop");
    d.stop(&mut src, Duration::from_secs(5))
        .await
        .expect("stop");
}

#[tokio::test]
async fn failures_leave_no_snapshot_no_process_and_no_disks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src_dir = tmp.path().join("src");
    std::fs::create_dir_all(&src_dir).expect("mkdir");
    let d = driver();
    // A create that firecracker refuses: no snapshot dir, source resumed.
    let mut reject = FakeFirecrackerConfig::default();
    reject.reject.insert(
        "PUT /snapshot/create".into(),
        "No space left on device".into(),
    );
    let src_spec = source(&src_dir, &reject);
    let mut src = d.start(&src_spec).await.expect("start");
    src.set_kill_on_drop(true);
    let err = d
        .snapshot(
            &mut src,
            &src_spec,
            &tmp.path().join("s1"),
            AfterSnapshot::Resume,
        )
        .await
        .expect_err("create refused");
    assert!(err.to_string().contains("No space left on device"), "{err}");
    assert!(!tmp.path().join("s1").exists() && !tmp.path().join("s1.partial").exists());
    let calls = read_fake_calls(&src_dir).expect("calls");
    assert_eq!(
        calls.last().map(|c| c.body["state"].clone()),
        Some("Resumed".into())
    );
    // A good snapshot for the restore failures.
    write_fake_config(&src_dir, &FakeFirecrackerConfig::default()).expect("config");
    d.stop(&mut src, Duration::from_secs(5))
        .await
        .expect("stop");
    let mut src = d.start(&src_spec).await.expect("start again");
    src.set_kill_on_drop(true);
    let snap = d
        .snapshot(
            &mut src,
            &src_spec,
            &tmp.path().join("s2"),
            AfterSnapshot::StayPaused,
        )
        .await
        .expect("snapshot");
    let calls = read_fake_calls(&src_dir).expect("calls");
    assert_eq!(
        calls.last().map(|c| c.path.clone()),
        Some("/snapshot/create".into())
    );

    // Load refused by firecracker.
    let dir = tmp.path().join("r1");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mut reject = FakeFirecrackerConfig::default();
    reject
        .reject
        .insert("PUT /snapshot/load".into(), "Cannot restore devices".into());
    write_fake_config(&dir, &reject).expect("config");
    let err = d
        .restore(&snap, &spec(&dir, "r1"))
        .await
        .map(|_| ())
        .expect_err("refused load");
    assert!(matches!(err, VmmError::Snapshot { .. }), "{err}");
    assert!(err.to_string().contains("Cannot restore devices"), "{err}");
    assert!(!dir.join("root.ext4").exists() && !dir.join("work.ext4").exists());
    assert!(!dir.join("fc.sock").exists());
    assert!(
        processes_in(&dir).is_empty(),
        "a firecracker is left in {}",
        dir.display()
    );

    // A state file damaged after the snapshot was opened: the VMM refuses it.
    std::fs::write(snap.dir.join("state"), b"garbage").expect("damage");
    let dir = tmp.path().join("r2");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let err = d
        .restore(&snap, &spec(&dir, "r2"))
        .await
        .map(|_| ())
        .expect_err("bad state");
    assert!(err.to_string().contains("Cannot deserialize"), "{err}");
    assert!(processes_in(&dir).is_empty());
    assert!(
        Snapshot::open(&snap.dir).is_err(),
        "open must catch it first"
    );

    // Another shape: refused before anything starts.
    let dir = tmp.path().join("r3");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mut big = spec(&dir, "r3");
    big.memory_mib = 512;
    let err = d.restore(&snap, &big).await.map(|_| ()).expect_err("shape");
    assert!(err.to_string().contains("256 MiB"), "{err}");
    assert!(std::fs::read_dir(&dir).expect("ls").next().is_none());
    d.stop(&mut src, Duration::from_secs(5))
        .await
        .expect("stop");
}
