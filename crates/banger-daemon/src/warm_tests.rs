//! Warm snapshots in-process, on real SQLite, real ext4 images and the FAKE firecracker
//! (no guest runs, so no agent answers): one snapshot per shape even when ten are asked
//! at once; a create of that shape restores, and when the restored guest does not answer
//! the snapshot is discarded and the VM boots cold with disks of its own; interrupted,
//! stale and orphaned snapshots are removed at start, and one that restored VMs' disks
//! back onto is kept until they are gone.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use banger_core::{Config, Paths};
use banger_proto::CreateVmRequest;
use banger_vmm::host::TscSource;
use banger_vmm::{Accel, KvmReport, Selection, TscRate, Vmm, VmmKind, VmmSpec};

use crate::{Daemon, Options};

fn tools_missing() -> bool {
    for t in ["mkfs.ext4", "debugfs", "ssh-keygen"] {
        if banger_vmm::host::find_program(t).is_none() {
            eprintln!("SKIP: {t} is not installed");
            return true;
        }
    }
    false
}

/// A daemon whose VMM is the fake firecracker, with image `tiny` and a kernel record.
fn daemon(root: &Path) -> Option<Arc<Daemon>> {
    let fake = match banger_testkit::fake::fake_firecracker_bin() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("SKIP: {e}");
            return None;
        }
    };
    let paths = Paths::under(root);
    let opts = Options {
        no_network: true,
        dns_listen: None,
    };
    let mut d = Daemon::open(paths.clone(), Config::default(), &opts).expect("open");
    d.selection = Ok(Selection {
        kind: VmmKind::Firecracker,
        reason: "test: the FAKE firecracker".into(),
        firecracker_bin: Some(fake),
        qemu_bin: None,
        accel: Accel::Tcg,
        kvm: KvmReport {
            usable: false,
            findings: Vec::new(),
        },
        tsc: TscRate {
            khz: 1,
            source: TscSource::Measured,
        },
    });
    d.warm.agent_timeout = Duration::from_millis(500);
    let kdir = paths.kernels_dir().join("k");
    std::fs::create_dir_all(&kdir).expect("mkdir");
    for f in ["vmlinux", "vmlinuz"] {
        std::fs::write(kdir.join(f), b"kernel").expect("kernel");
    }
    let krec = serde_json::json!({
        "name": "k", "version": "test", "vmlinuz": kdir.join("vmlinuz"), "initrd": null,
        "vmlinux": kdir.join("vmlinux"), "has_vmlinux": true, "pvh": false, "boot_args": ""
    });
    std::fs::write(kdir.join("kernel.json"), krec.to_string()).expect("kernel.json");
    let tree = root.join("tree");
    for sub in ["etc/ssh", "root"] {
        std::fs::create_dir_all(tree.join(sub)).expect("mkdir");
    }
    let img = paths.images_dir().join("tiny");
    std::fs::create_dir_all(&img).expect("mkdir");
    banger_image::ext4::make_ext4(
        &tree,
        &img.join("rootfs.ext4"),
        32 << 20,
        &banger_image::Ext4Fixups::new(),
    )
    .expect("mkfs");
    d.store
        .insert_kernel(&banger_store::KernelRecord {
            name: "k".into(),
            version: "test".into(),
            dir: kdir.display().to_string(),
            has_vmlinux: true,
            pvh: false,
            created_at: 0,
        })
        .expect("kernel");
    d.store
        .insert_image(&banger_store::ImageRecord {
            name: "tiny".into(),
            digest: "sha256:00".into(),
            kernel: "k".into(),
            size_bytes: 0,
            origin: "test".into(),
            dir: img.display().to_string(),
            created_at: 0,
        })
        .expect("image");
    Some(Arc::new(d))
}

fn req(name: &str) -> CreateVmRequest {
    CreateVmRequest {
        name: Some(name.into()),
        image: Some("tiny".into()),
        vcpu: Some(2),
        memory_mib: Some(256),
        disk_bytes: Some(256 << 20),
        ssh_public_key: Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake test".into()),
        ..Default::default()
    }
}

/// The spec `boot` gives a VM without network (what its snapshot must match).
fn spec_of(d: &Daemon, name: &str) -> VmmSpec {
    let dir = d.vm_dir(name);
    let k = d.paths.kernels_dir().join("k");
    let kernel = banger_vmm::KernelFiles {
        vmlinux: Some(k.join("vmlinux")),
        vmlinuz: Some(k.join("vmlinuz")),
        initrd: None,
    };
    let mut s = VmmSpec::new(name, dir.path(), kernel, &dir.root_disk());
    s.vcpus = 2;
    s.memory_mib = 256;
    s.work_disk = Some(dir.work_disk());
    s.vsock = Some(banger_vmm::VsockSpec {
        guest_cid: crate::vms::GUEST_CID,
        uds_path: dir.vsock(),
    });
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_snapshot_per_shape_restore_falls_back_to_a_cold_boot_and_gc_keeps_what_is_used() {
    if tools_missing() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(d) = daemon(tmp.path()) else { return };
    let driver = d.driver_for(None).expect("driver");

    // Ten booted VMs of one shape all ask for the warm snapshot at once: one is made.
    // src-0 goes through the daemon; the other nine are fakes started on copies of its
    // disks (ten full creates cost a minute on this machine and test nothing more).
    d.create_vm(CreateVmRequest {
        start: false,
        ..req("src-0")
    })
    .await
    .expect("create");
    d.start_vm("src-0").await.expect("start (fake)");
    let rec = d.store.get_vm("src-0").expect("rec");
    let key = d.warm_key(&rec, &driver).expect("key");
    let mut vms = Vec::new();
    for i in 1..10 {
        let name = format!("src-{i}");
        let dir = d.vm_dir(&name);
        dir.create().expect("mkdir");
        let src = d.vm_dir("src-0");
        banger_vmm::clone_disk(&src.root_disk(), &dir.root_disk()).expect("root");
        banger_vmm::clone_disk(&src.work_disk(), &dir.work_disk()).expect("work");
        let spec = spec_of(&d, &name);
        let mut vm = driver.start(&spec).await.expect("fake start");
        vm.set_kill_on_drop(true);
        vms.push((vm, spec));
    }
    let mut tasks = Vec::new();
    {
        let (d, key, driver) = (Arc::clone(&d), key.clone(), driver.clone());
        tasks.push(tokio::spawn(async move {
            let slot = d.slots.get("src-0");
            let mut guard = slot.vmm.lock().await;
            let vm = guard.as_mut().expect("running");
            d.warm_make(&key, &driver, vm, &spec_of(&d, "src-0")).await
        }));
    }
    for (mut vm, spec) in vms {
        let (d, key, driver) = (Arc::clone(&d), key.clone(), driver.clone());
        tasks.push(tokio::spawn(async move {
            let r = d.warm_make(&key, &driver, &mut vm, &spec).await;
            let _ = driver.stop(&mut vm, Duration::from_secs(2)).await;
            r
        }));
    }
    let mut made = 0;
    for t in tasks {
        if t.await.expect("join").expect("warm_make") {
            made += 1;
        }
    }
    assert_eq!(made, 1, "exactly one snapshot for ten concurrent requests");
    let list = d.warm_list();
    assert_eq!(
        list.len(),
        1,
        "{:?}",
        list.iter().map(|l| &l.1.dir).collect::<Vec<_>>()
    );
    let snap_dir = list[0].1.dir.clone();
    d.stop_vm("src-0").await.expect("stop");

    // A create of that shape restores; the fake's guest never answers the agent, so the
    // snapshot is discarded and the VM boots cold with its own (raw) disks.
    d.create_vm(req("warm-1")).await.expect("create warm-1");
    assert!(crate::vms::extra_of(&d.store.get_vm("warm-1").expect("rec")).warm_pending);
    let started = d
        .start_vm("warm-1")
        .await
        .expect("start warm-1 (falls back)");
    assert_eq!(started.state, banger_proto::VmState::Running);
    let dir = d.vm_dir("warm-1");
    assert!(dir.root_disk().is_file() && dir.work_disk().is_file());
    assert_eq!(
        banger_vmm::disk_format(&dir.root_disk()),
        banger_vmm::DiskFormat::Raw
    );
    let extra = crate::vms::extra_of(&d.store.get_vm("warm-1").expect("rec"));
    assert!(
        !extra.warm_pending && extra.warm_from.is_none(),
        "{extra:?}"
    );
    assert!(
        !snap_dir.exists(),
        "the snapshot that failed to restore must be discarded"
    );
    assert!(d.warm_list().is_empty());
    let calls = banger_testkit::fake::read_fake_calls(dir.path()).expect("calls");
    assert_eq!(
        calls.last().map(|c| c.body["action_type"].clone()),
        Some("InstanceStart".into())
    );
    // --cold: no warm pending even with a snapshot.
    let slot = d.slots.get("src-0");
    d.start_vm("src-0").await.expect("start");
    {
        let mut g = slot.vmm.lock().await;
        let vm = g.as_mut().expect("running");
        assert!(
            d.warm_make(&key, &driver, vm, &spec_of(&d, "src-0"))
                .await
                .expect("make")
        );
    }
    let mut cold = req("cold-1");
    cold.cold = true;
    cold.start = false;
    d.create_vm(cold).await.expect("create cold");
    assert!(!crate::vms::extra_of(&d.store.get_vm("cold-1").expect("rec")).warm_pending);
    assert!(
        d.vm_dir("cold-1").root_disk().is_file(),
        "a cold create makes its disks"
    );
    let mut warm = req("warm-2");
    warm.start = false;
    d.create_vm(warm).await.expect("create warm-2");
    assert!(crate::vms::extra_of(&d.store.get_vm("warm-2").expect("rec")).warm_pending);
    assert!(
        !d.vm_dir("warm-2").root_disk().exists(),
        "a warm create waits for the restore"
    );

    // GC: an interrupted snapshot goes; a used stale one stays until its user is gone.
    let gen_dir = d.warm_list()[0].1.dir.clone();
    let partial = gen_dir.parent().expect("key dir").join("g1.partial");
    std::fs::create_dir_all(&partial).expect("partial");
    let mut extra = crate::vms::extra_of(&d.store.get_vm("cold-1").expect("rec"));
    extra.warm_from = Some(gen_dir.display().to_string());
    d.save_extra("cold-1", &extra).expect("extra");
    // The image's rootfs changes: every snapshot of it is stale.
    let rootfs = Path::new(&d.store.get_image("tiny").expect("img").dir).join("rootfs.ext4");
    let f = std::fs::OpenOptions::new()
        .append(true)
        .open(&rootfs)
        .expect("open");
    f.set_len(33 << 20).expect("grow");
    drop(f);
    let removed = d.warm_gc();
    assert_eq!(
        removed,
        vec![partial.clone()],
        "only the partial goes while cold-1 uses it"
    );
    assert!(gen_dir.exists());
    d.delete_vm("cold-1").await.expect("delete");
    d.warm_gc();
    assert!(!gen_dir.exists(), "a stale snapshot nobody uses is removed");
    d.delete_vm("src-0").await.expect("delete");
}

#[tokio::test]
async fn an_interrupted_snapshot_is_gone_after_a_restart() {
    if tools_missing() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(d) = daemon(tmp.path()) else { return };
    let partial = d
        .warm_root()
        .join("tiny-000000000000-firecracker-c2-m256-d256");
    std::fs::create_dir_all(partial.join("g5.partial")).expect("mkdir");
    std::fs::write(partial.join("g5.partial/state"), b"half").expect("write");
    drop(d);
    // kill -9 and restart: the next daemon finds nothing registered.
    let d = Daemon::open(
        Paths::under(tmp.path()),
        Config::default(),
        &Options {
            no_network: true,
            dns_listen: None,
        },
    )
    .expect("reopen");
    assert!(!partial.join("g5.partial").exists());
    assert!(d.warm_list().is_empty());
}
