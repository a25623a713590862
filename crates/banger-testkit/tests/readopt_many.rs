//! Daemon start under systemd with many wedged guests (issue 13 item 9):
//! re-adoption must not hold the start. 50 VMs run under the FAKE
//! firecracker; their guests' agents are "wedged" (a socket at each VM's
//! hybrid-vsock path that accepts and never answers). A restarted daemon
//! claims every VM at once (what `bangerd` waits for before READY) and
//! finishes re-adopting all of them in about one bounded wait, not fifty.

mod common;

use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use banger_proto::VmState;
use banger_testkit::fake::FakeFirecrackerConfig;
use common::*;

const GUESTS: usize = 50;

#[test]
fn fifty_wedged_guests_do_not_hold_the_daemon_start() {
    if skip() {
        return;
    }
    let fc = banger_testkit::fake::fake_firecracker_bin().expect("fake firecracker");
    let w = world_with(fc.clone());
    let names: Vec<String> = (0..GUESTS).map(|i| format!("wedged-{i}")).collect();
    let pids: Vec<u32> = on_own_runtime(async {
        let mut pids = Vec::new();
        for n in &names {
            create(&w, n, &FakeFirecrackerConfig::default()).await;
            pids.push(w.d.start_vm(n).await.expect("start").pid.expect("pid"));
        }
        pids
    });
    let paths = w.paths.clone();
    drop(w.d); // the first daemon is gone; its VMMs are not
    assert!(pids.iter().all(|p| alive(*p)));
    let (d, _net) = open(&paths, fc);
    // Every guest's agent is wedged: connections are accepted (by the
    // kernel's backlog) and never answered.
    let wedged: Vec<UnixListener> = names
        .iter()
        .map(|n| {
            let sock = d.vm_dir(n).vsock();
            let _ = std::fs::remove_file(&sock);
            UnixListener::bind(&sock).expect("wedged agent socket")
        })
        .collect();
    on_own_runtime(async {
        let t0 = Instant::now();
        let mut tasks = d.begin_readopt().await.expect("begin readopt");
        let claimed = t0.elapsed();
        // What bangerd waits for before READY: seconds at most, whatever the guests do.
        assert!(
            claimed < Duration::from_secs(3),
            "claiming took {claimed:?}"
        );
        let mut done = 0;
        while let Some(r) = tasks.join_next().await {
            r.expect("task").expect("readopt one");
            done += 1;
        }
        let all = t0.elapsed();
        assert_eq!(done, GUESTS);
        // Each wedged guest costs one bounded wait (≤ 5 s); one after the
        // other, 50 would cost minutes.
        assert!(all < Duration::from_secs(20), "re-adoption took {all:?}");
        eprintln!("claimed {GUESTS} VMs in {claimed:?}, re-adopted all in {all:?}");
        for (n, pid) in names.iter().zip(&pids) {
            let rec = d.store.get_vm(n).expect("row");
            assert_eq!((rec.state, rec.pid), (VmState::Running, Some(*pid)), "{n}");
        }
        for n in &names {
            d.delete_vm(n).await.expect("delete");
        }
    });
    drop(wedged);
    for p in pids {
        assert!(!alive(p), "VMM {p} left running");
    }
}
