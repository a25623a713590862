//! The daemon's lifecycle logic in-process, on real SQLite and real disk
//! images (no guest boots): concurrent creates and deletes never collide on
//! names, files, MACs or addresses, and leave nothing behind.

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;

use banger_core::{Config, Paths};
use banger_daemon::{Daemon, Options};
use banger_proto::{CreateVmRequest, VmState};

fn have(tool: &str) -> bool {
    Command::new(tool).arg("-V").output().is_ok()
}

/// A daemon on a temp dir with a tiny registered image (a small ext4 root).
fn daemon_with_image(dir: &std::path::Path) -> Arc<Daemon> {
    let paths = Paths::under(dir);
    let d = Daemon::open(
        paths.clone(),
        Config::default(),
        &Options {
            no_network: true,
            dns_listen: None,
        },
    )
    .expect("open");
    banger_testkit::tiny::register_tiny_image(&d.store, &paths).expect("tiny image");
    Arc::new(d)
}

fn skip() -> bool {
    for t in ["mkfs.ext4", "debugfs", "e2fsck", "ssh-keygen"] {
        if !have(t) && Command::new(t).output().is_err() {
            eprintln!("SKIP: {t} is not installed");
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_parallel_creates_and_deletes_never_collide() {
    if skip() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let d = daemon_with_image(tmp.path());
    let mut tasks = Vec::new();
    for i in 0..20 {
        let d = Arc::clone(&d);
        tasks.push(tokio::spawn(async move {
            let req = CreateVmRequest {
                // half named, half random
                name: (i % 2 == 0).then(|| format!("vm-{i}")),
                image: Some("tiny".into()),
                disk_bytes: Some(256 << 20),
                ssh_public_key: Some(
                    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTestsOnly test".into(),
                ),
                ..Default::default()
            };
            d.create_vm(req)
                .await
                .map(|(rec, _)| rec)
                .map_err(|e| e.message)
        }));
    }
    let mut recs = Vec::new();
    for t in tasks {
        recs.push(t.await.expect("task").expect("create"));
    }
    let names: HashSet<_> = recs.iter().map(|r| r.name.clone()).collect();
    let macs: HashSet<_> = recs.iter().map(|r| r.mac.clone()).collect();
    let ips: HashSet<_> = recs.iter().map(|r| r.ip.clone().expect("leased")).collect();
    assert_eq!((names.len(), macs.len(), ips.len()), (20, 20, 20));
    for r in &recs {
        assert_eq!(r.state, VmState::Stopped);
        let dir = d.vm_dir(&r.name);
        for f in ["root.ext4", "work.ext4", "ssh_host_ed25519_key"] {
            assert!(dir.join(f).exists(), "{} has {f}", r.name);
        }
        // the work disk is a valid ext4 whose root is the guest's /root
        let st = banger_image::ext4::stat(&dir.join("work.ext4"), "/.ssh/authorized_keys")
            .expect("stat")
            .expect("authorized_keys present");
        assert_eq!(st.mode & 0o777, 0o600);
    }
    let kh = std::fs::read_to_string(d.paths.known_hosts()).expect("known_hosts");
    assert_eq!(kh.lines().count(), 20, "one pinned key per VM");

    // a taken name is refused, not overwritten
    let dup = d
        .create_vm(CreateVmRequest {
            name: Some("vm-0".into()),
            image: Some("tiny".into()),
            ..Default::default()
        })
        .await
        .expect_err("duplicate");
    assert!(dup.message.contains("already exists"), "{}", dup.message);

    let mut tasks = Vec::new();
    for r in recs {
        let d = Arc::clone(&d);
        tasks.push(tokio::spawn(async move {
            d.delete_vm(&r.name).await.map_err(|e| e.message)
        }));
    }
    for t in tasks {
        t.await.expect("task").expect("delete");
    }
    assert!(d.store.list_vms().expect("list").is_empty());
    assert!(d.store.leased_ips().expect("leases").is_empty());
    assert_eq!(
        std::fs::read_dir(d.paths.vms_dir()).expect("vms").count(),
        0,
        "no VM files left"
    );
    assert_eq!(
        std::fs::read_to_string(d.paths.known_hosts()).expect("kh"),
        ""
    );
}

#[tokio::test]
async fn create_failures_roll_back() {
    if skip() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let d = daemon_with_image(tmp.path());
    let e = d
        .create_vm(CreateVmRequest {
            name: Some("bad".into()),
            image: Some("tiny".into()),
            ssh_public_key: Some("not a key\nsecond line".into()),
            ..Default::default()
        })
        .await
        .expect_err("bad key");
    assert!(
        e.message.contains("not a single OpenSSH public key line"),
        "{}",
        e.message
    );
    assert!(d.store.list_vms().expect("list").is_empty(), "row removed");
    assert!(!d.vm_dir("bad").exists(), "files removed");
    assert!(
        d.store.leased_ips().expect("leases").is_empty(),
        "lease freed"
    );

    let e = d
        .create_vm(CreateVmRequest {
            image: Some("missing".into()),
            ..Default::default()
        })
        .await
        .expect_err("no image");
    assert!(
        e.message.contains("banger image build missing"),
        "{}",
        e.message
    );
    let e = d
        .create_vm(CreateVmRequest {
            name: Some("Bad_Name".into()),
            image: Some("tiny".into()),
            ..Default::default()
        })
        .await
        .expect_err("bad name");
    assert!(e.message.contains("invalid VM name"), "{}", e.message);
}

#[tokio::test]
async fn the_egress_policy_is_kept_per_vm() {
    if skip() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let d = daemon_with_image(tmp.path());
    let allow: banger_proto::EgressPolicy = "allow:github.com,pypi.org".parse().expect("policy");
    for (name, egress, no_egress, want) in [
        ("e-allow", Some(allow.clone()), false, allow.clone()),
        ("e-none", None, true, banger_proto::EgressPolicy::None),
        ("e-default", None, false, banger_proto::EgressPolicy::All),
    ] {
        d.create_vm(CreateVmRequest {
            name: Some(name.into()),
            image: Some("tiny".into()),
            egress,
            no_egress,
            ..Default::default()
        })
        .await
        .expect("create");
        let rec = d.store.get_vm(name).expect("get");
        assert_eq!(banger_daemon::vms::egress_of(&rec), want, "{name}");
        assert_eq!(rec.no_egress, want == banger_proto::EgressPolicy::None);
    }
}
