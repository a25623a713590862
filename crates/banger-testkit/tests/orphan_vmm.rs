//! A daemon killed between the VMM's spawn and the handle write (issue 13
//! item 8): the start is cut off while the FAKE firecracker is still coming
//! up (its API socket is delayed), as kill -9 would, leaving a live VMM no
//! handle names. The restarted daemon kills it; a new start runs exactly
//! one VMM for the VM, never two.

mod common;

use std::time::Duration;

use banger_proto::VmState;
use banger_testkit::fake::{FakeFirecrackerConfig, write_fake_config};
use common::*;

#[test]
fn a_vmm_spawned_before_the_daemon_died_is_killed_not_doubled() {
    if skip() {
        return;
    }
    let fc = banger_testkit::fake::fake_firecracker_bin().expect("fake firecracker");
    let w = world_with(fc.clone());
    let slow = FakeFirecrackerConfig {
        socket_delay_ms: 60_000,
        ..Default::default()
    };
    on_own_runtime(async {
        create(&w, "a", &slow).await;
        // The start is cut off mid-way (no rollback runs, as with kill -9).
        let cut = tokio::time::timeout(Duration::from_secs(3), w.d.start_vm("a")).await;
        assert!(
            cut.is_err(),
            "the start finished despite the delayed socket"
        );
    });
    let dir = w.d.vm_dir("a");
    assert!(dir.read_handle().is_none(), "no handle was written");
    let orphan = banger_vmm::spawn_record::spawn_record(dir.path()).expect("spawn record");
    assert!(alive(orphan.pid), "the spawned VMM outlived its daemon");
    let paths = w.paths.clone();
    drop(w.d);

    let (d, _net) = open(&paths, fc);
    on_own_runtime(async {
        d.readopt().await.expect("readopt");
        assert!(!alive(orphan.pid), "re-adoption killed the unrecorded VMM");
        assert_eq!(d.store.get_vm("a").expect("row").state, VmState::Stopped);
        write_fake_config(&d.vm_dir("a"), &FakeFirecrackerConfig::default()).expect("fake");
        let pid = d.start_vm("a").await.expect("start").pid.expect("pid");
        assert_ne!(pid, orphan.pid);
        let running: Vec<u32> = fake_vmms_of(&d.vm_dir("a").path().to_string_lossy());
        assert_eq!(running, [pid], "exactly one VMM for the VM");
        d.delete_vm("a").await.expect("delete");
    });
}

/// Live processes whose command line names `vm_dir` (the fake firecracker's
/// API socket is inside it).
fn fake_vmms_of(vm_dir: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmd).contains(vm_dir) && alive(pid) {
            pids.push(pid);
        }
    }
    pids
}
