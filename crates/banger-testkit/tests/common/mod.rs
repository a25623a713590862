//! What the in-process daemon tests share: a daemon on a temp dir wired to
//! the FAKE firecracker and a FakeNetwork, VM creation, process checks.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use banger_core::{Config, Paths};
use banger_daemon::host_net::FakeNetwork;
use banger_daemon::{Daemon, Wiring};
use banger_proto::{CreateVmRequest, VmState};
use banger_testkit::fake::{FakeFirecrackerConfig, write_fake_config};
use banger_vmm::host::{Accel, KvmReport, Selection, TscRate, TscSource};

pub const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTestsOnly test";

pub fn skip() -> bool {
    for t in ["mkfs.ext4", "debugfs", "ssh-keygen"] {
        if Command::new(t).arg("-V").output().is_err() && Command::new(t).output().is_err() {
            eprintln!("SKIP: {t} is not installed (apt-get install e2fsprogs openssh-client)");
            return true;
        }
    }
    false
}

pub fn fake_selection(bin: PathBuf) -> Selection {
    Selection {
        kind: banger_vmm::VmmKind::Firecracker,
        reason: "the FAKE firecracker of banger-testkit".into(),
        firecracker_bin: Some(bin),
        qemu_bin: None,
        accel: Accel::Tcg,
        kvm: KvmReport {
            usable: false,
            findings: Vec::new(),
        },
        tsc: TscRate {
            khz: 0,
            source: TscSource::Measured,
        },
    }
}

pub struct World {
    pub _tmp: tempfile::TempDir,
    pub paths: Paths,
    pub d: Arc<Daemon>,
    pub net: Arc<FakeNetwork>,
}

/// Opens a daemon on `paths` with a fresh fake network.
pub fn open(paths: &Paths, fc: PathBuf) -> (Arc<Daemon>, Arc<FakeNetwork>) {
    let net = Arc::new(FakeNetwork::new());
    let wiring = Wiring {
        selection: Ok(fake_selection(fc)),
        network: net.clone(),
        stop_grace: Duration::from_secs(2),
        guest_dns: None,
    };
    // A daemon just dropped can still hold its state-dir lock for a moment:
    // a process another test thread forks at that instant can hold a copy
    // of the lock's descriptor until it execs. Wait for that, bounded.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let d = loop {
        let wiring = Wiring {
            selection: wiring.selection.clone(),
            network: wiring.network.clone(),
            stop_grace: wiring.stop_grace,
            guest_dns: wiring.guest_dns,
        };
        match Daemon::open_with(paths.clone(), Config::default(), wiring) {
            Ok(d) => break d,
            Err(e)
                if e.to_string().contains("is using the state directory")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("open: {e:#}"),
        }
    };
    (Arc::new(d), net)
}

/// A daemon on a temp dir with the tiny image registered.
pub fn world_with(fc: PathBuf) -> World {
    let tmp = tempfile::tempdir().expect("tmp");
    let paths = Paths::under(tmp.path());
    let (d, net) = open(&paths, fc);
    banger_testkit::tiny::register_tiny_image(&d.store, &paths).expect("tiny image");
    World {
        _tmp: tmp,
        paths,
        d,
        net,
    }
}

pub fn world() -> World {
    world_with(banger_testkit::fake::fake_firecracker_bin().expect("fake firecracker"))
}

pub async fn create(w: &World, name: &str, fake: &FakeFirecrackerConfig) -> banger_store::VmRecord {
    let (rec, _) =
        w.d.create_vm(CreateVmRequest {
            name: Some(name.into()),
            image: Some("tiny".into()),
            disk_bytes: Some(256 << 20),
            ssh_public_key: Some(KEY.into()),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("create {name}: {}", e.message));
    assert_eq!(rec.state, VmState::Stopped);
    write_fake_config(&w.d.vm_dir(name), fake).expect("fake config");
    rec
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with(['Z', 'X'])))
        .is_some_and(|zombie| !zombie)
}

/// Runs `f` on a runtime of its own and shuts that runtime down afterwards,
/// as a daemon process exiting would: its tasks (the VMM watcher) end.
pub fn on_own_runtime<T>(f: impl std::future::Future<Output = T>) -> T {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let out = rt.block_on(f);
    rt.shutdown_timeout(Duration::from_secs(5));
    out
}
