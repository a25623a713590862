//! The daemon core's VM lifecycle in-process, as a normal user: real SQLite,
//! real disk images and host keys, the FAKE firecracker (this crate's
//! `fake-firecracker` binary) as the VMM and banger-daemon's FakeNetwork as
//! the host network. Covers create → start → stop → restart → delete, a VMM
//! that dies on its own, a daemon restart that re-adopts (or finds dead) a
//! VMM, a failure at every step of a start and a stop with the rollback
//! leaving nothing behind, and each user operation from every state.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use banger_daemon::host_net::{FailOn, NetCall};
use banger_proto::{CreateVmRequest, ErrorKind, VmState};
use banger_testkit::fake::{FakeFirecrackerConfig, read_fake_calls, write_fake_config};
use common::*;

fn calls(dir: &Path) -> Vec<String> {
    read_fake_calls(dir)
        .expect("calls")
        .iter()
        .map(|c| format!("{} {} {}", c.method, c.path, c.body))
        .collect()
}

/// What a VM leaves when it runs nothing: no process, no handle, no tap.
fn assert_nothing_running(w: &World, name: &str, pid: Option<u32>) {
    let rec = w.d.store.get_vm(name).expect("row");
    assert_eq!(rec.pid, None, "{name}: process identity cleared");
    if let Some(p) = pid {
        assert!(!alive(p), "{name}: VMM {p} is gone");
    }
    assert!(
        w.d.vm_dir(name).read_handle().is_none(),
        "{name}: no handle"
    );
    assert!(
        w.net.live_taps().is_empty(),
        "taps left: {:?}",
        w.net.live_taps()
    );
}

/// Waits (bounded) until `name` is in `state`.
async fn wait_state(w: &World, name: &str, state: VmState) -> banger_store::VmRecord {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let rec = w.d.store.get_vm(name).expect("row");
        if rec.state == state {
            return rec;
        }
        assert!(Instant::now() < deadline, "{name} stayed {}", rec.state);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_start_stop_restart_delete() {
    if skip() {
        return;
    }
    let w = world();
    create(&w, "a", &FakeFirecrackerConfig::default()).await;
    let dir = w.d.vm_dir("a");

    let rec = w.d.start_vm("a").await.expect("start");
    assert_eq!(rec.state, VmState::Running);
    let pid = rec.pid.expect("pid recorded");
    assert!(alive(pid), "the VMM runs");
    assert!(
        dir.read_handle().is_some(),
        "handle written for re-adoption"
    );
    assert_eq!(w.net.live_taps(), vec![banger_net::tap_name("a")]);
    let ip: std::net::IpAddr = rec.ip.as_deref().expect("leased").parse().expect("ip");
    assert!(
        w.d.dns_clients.allows(ip),
        "an egress VM's names outside .vm are forwarded"
    );
    assert!(
        calls(&dir).iter().any(|c| c.contains("InstanceStart")),
        "{:?}",
        calls(&dir)
    );
    // Starting a running VM is a no-op, not a second VMM.
    assert_eq!(w.d.start_vm("a").await.expect("again").pid, Some(pid));

    let rec = w.d.stop_vm("a").await.expect("stop");
    assert_eq!((rec.state, rec.reason.as_deref()), (VmState::Stopped, None));
    assert!(calls(&dir).iter().any(|c| c.contains("SendCtrlAltDel")));
    assert_nothing_running(&w, "a", Some(pid));
    assert!(!w.d.dns_clients.allows(ip), "forwarding ends with the VM");
    // Stopping a stopped VM changes nothing.
    assert_eq!(
        w.d.stop_vm("a").await.expect("again").state,
        VmState::Stopped
    );

    let rec = w.d.restart_vm("a").await.expect("restart from stopped");
    let pid2 = rec.pid.expect("pid");
    assert!(rec.state == VmState::Running && pid2 != pid && alive(pid2));
    let rec = w.d.restart_vm("a").await.expect("restart from running");
    let pid3 = rec.pid.expect("pid");
    assert!(rec.state == VmState::Running && !alive(pid2) && alive(pid3));

    w.d.delete_vm("a").await.expect("delete running");
    assert!(!alive(pid3));
    assert!(w.d.store.list_vms().expect("list").is_empty());
    assert!(w.d.store.leased_ips().expect("leases").is_empty());
    assert!(!dir.exists(), "VM dir removed");
    assert!(w.net.live_taps().is_empty());
    assert_eq!(
        std::fs::read_to_string(w.paths.known_hosts()).expect("known_hosts"),
        ""
    );
    let setups = w
        .net
        .calls()
        .iter()
        .filter(|c| matches!(c, NetCall::Setup(_)))
        .count();
    let teardowns = w
        .net
        .calls()
        .iter()
        .filter(|c| matches!(c, NetCall::Teardown { .. }))
        .count();
    assert_eq!((setups, teardowns), (3, 3), "{:?}", w.net.calls());

    // A VM without egress gets REFUSED for outside names: no DNS tunnel.
    let (rec, _) =
        w.d.create_vm(CreateVmRequest {
            name: Some("closed".into()),
            image: Some("tiny".into()),
            disk_bytes: Some(256 << 20),
            ssh_public_key: Some(KEY.into()),
            egress: Some(banger_proto::EgressPolicy::None),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("create closed: {}", e.message));
    write_fake_config(&w.d.vm_dir("closed"), &FakeFirecrackerConfig::default()).expect("fake");
    let ip: std::net::IpAddr = rec.ip.as_deref().expect("leased").parse().expect("ip");
    w.d.start_vm("closed").await.expect("start closed");
    assert!(!w.d.dns_clients.allows(ip), "no forwarding for egress none");
    w.d.delete_vm("closed").await.expect("delete closed");

    // An allowlisted VM is forwarded its allowed names only.
    let listed: banger_proto::EgressPolicy = "allow:example.org".parse().expect("policy");
    let (rec, _) =
        w.d.create_vm(CreateVmRequest {
            name: Some("listed".into()),
            image: Some("tiny".into()),
            disk_bytes: Some(256 << 20),
            ssh_public_key: Some(KEY.into()),
            egress: Some(listed.clone()),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("create listed: {}", e.message));
    write_fake_config(&w.d.vm_dir("listed"), &FakeFirecrackerConfig::default()).expect("fake");
    let ip: std::net::IpAddr = rec.ip.as_deref().expect("leased").parse().expect("ip");
    w.d.start_vm("listed").await.expect("start listed");
    assert_eq!(w.d.dns_clients.policy(ip).as_deref(), Some(&listed));
    w.d.delete_vm("listed").await.expect("delete listed");
    assert!(!w.d.dns_clients.allows(ip), "forwarding ends with the VM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vmm_that_dies_on_its_own_is_recorded_and_cleaned_up() {
    if skip() {
        return;
    }
    let w = world();
    let crash = FakeFirecrackerConfig {
        exit_after_start: Some(7),
        exit_delay_ms: 300,
        ..Default::default()
    };
    create(&w, "c", &crash).await;
    let pid = w.d.start_vm("c").await.expect("start").pid.expect("pid");
    let rec = wait_state(&w, "c", VmState::Stopped).await;
    let reason = rec.reason.unwrap_or_default();
    assert!(
        reason.contains("exited unexpectedly") && reason.contains('7'),
        "{reason}"
    );
    assert_nothing_running(&w, "c", Some(pid));
    let e =
        w.d.wait_ready("c", Duration::from_secs(1))
            .await
            .expect_err("not ready");
    assert_eq!(e.kind, ErrorKind::Conflict);
    // It starts again once the VMM behaves.
    write_fake_config(&w.d.vm_dir("c"), &FakeFirecrackerConfig::default()).expect("cfg");
    assert_eq!(
        w.d.start_vm("c").await.expect("start").state,
        VmState::Running
    );
    w.d.delete_vm("c").await.expect("delete");
}

#[test]
fn a_restarted_daemon_readopts_live_vmms_and_records_dead_ones() {
    if skip() {
        return;
    }
    let fc = banger_testkit::fake::fake_firecracker_bin().expect("fake firecracker");
    let w = world_with(fc.clone());
    let (live, dead) = on_own_runtime(async {
        create(&w, "live", &FakeFirecrackerConfig::default()).await;
        create(&w, "dead", &FakeFirecrackerConfig::default()).await;
        let live = w.d.start_vm("live").await.expect("start").pid.expect("pid");
        let dead = w.d.start_vm("dead").await.expect("start").pid.expect("pid");
        (live, dead)
    });
    let paths = w.paths.clone();
    drop(w.d); // the first daemon is gone; its VMMs are not
    assert!(alive(live) && alive(dead));
    // SAFETY: kill(2) on the fake firecracker this test started.
    unsafe { libc::kill(dead as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(dead) {
        assert!(Instant::now() < deadline, "SIGKILL did not end {dead}");
        std::thread::sleep(Duration::from_millis(20));
    }

    let (d, net) = open(&paths, fc);
    on_own_runtime(async {
        d.readopt().await.expect("readopt");
        let rec = d.store.get_vm("live").expect("live");
        assert_eq!((rec.state, rec.pid), (VmState::Running, Some(live)));
        let ip: std::net::IpAddr = rec.ip.as_deref().expect("leased").parse().expect("ip");
        assert!(
            d.dns_clients.allows(ip),
            "a re-adopted egress VM keeps its DNS forwarding"
        );
        let rec = d.store.get_vm("dead").expect("dead");
        assert_eq!(rec.state, VmState::Stopped);
        assert!(
            rec.reason
                .as_deref()
                .unwrap_or("")
                .contains("its VMM is gone"),
            "{:?}",
            rec.reason
        );
        assert!(d.vm_dir("dead").read_handle().is_none());
        assert!(net.calls().contains(&NetCall::Teardown {
            vm: "dead".into(),
            tap: banger_net::tap_name("dead"),
        }));
        // The adopted VMM is stopped through its API socket and pid.
        let rec = d.stop_vm("live").await.expect("stop adopted");
        assert_eq!(rec.state, VmState::Stopped);
        assert!(!alive(live), "adopted VMM stopped");
        for n in ["live", "dead"] {
            d.delete_vm(n).await.expect("delete");
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failing_step_of_a_start_rolls_back() {
    if skip() {
        return;
    }
    let w = world();

    // 1. The host network refuses: no VMM is ever spawned.
    create(&w, "net", &FakeFirecrackerConfig::default()).await;
    w.net.fail(FailOn::Setup);
    let e = w.d.start_vm("net").await.expect_err("network fails");
    assert!(e.message.contains("fake network"), "{}", e.message);
    let rec = w.d.store.get_vm("net").expect("row");
    assert_eq!(rec.state, VmState::Error);
    assert!(rec.reason.unwrap_or_default().contains("fake network"));
    assert!(
        read_fake_calls(&w.d.vm_dir("net"))
            .expect("calls")
            .is_empty()
    );
    assert_nothing_running(&w, "net", None);
    w.net.heal();
    // `error` starts again.
    assert_eq!(
        w.d.start_vm("net").await.expect("start").state,
        VmState::Running
    );
    w.d.delete_vm("net").await.expect("delete");

    // 2. The VMM refuses its configuration: it is killed, the tap goes.
    let mut reject = FakeFirecrackerConfig::default();
    reject
        .reject
        .insert("PUT /machine-config".into(), "the fake says no".into());
    create(&w, "api", &reject).await;
    let e = w.d.start_vm("api").await.expect_err("VMM refuses");
    assert!(e.message.contains("the fake says no"), "{}", e.message);
    assert_eq!(w.d.store.get_vm("api").expect("row").state, VmState::Error);
    assert_nothing_running(&w, "api", None);
    w.d.delete_vm("api").await.expect("delete error VM");

    // 3. The VMM never opens its API socket: the start gives up in bounded
    //    time and leaves nothing.
    let mute = FakeFirecrackerConfig {
        never_create_socket: true,
        ..Default::default()
    };
    create(&w, "mute", &mute).await;
    let t0 = Instant::now();
    let e = w.d.start_vm("mute").await.expect_err("no socket");
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    assert_eq!(w.d.store.get_vm("mute").expect("row").state, VmState::Error);
    assert!(!e.message.is_empty());
    assert_nothing_running(&w, "mute", None);
    w.d.delete_vm("mute").await.expect("delete");
    assert!(w.d.store.list_vms().expect("list").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_vmm_binary_fails_the_start_cleanly() {
    if skip() {
        return;
    }
    let w = world_with(PathBuf::from("/nonexistent/firecracker"));
    create(&w, "nobin", &FakeFirecrackerConfig::default()).await;
    let e = w.d.start_vm("nobin").await.expect_err("no binary");
    assert!(
        e.message.contains("/nonexistent/firecracker"),
        "{}",
        e.message
    );
    assert_eq!(
        w.d.store.get_vm("nobin").expect("row").state,
        VmState::Error
    );
    assert_nothing_running(&w, "nobin", None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stops_escalate_and_survive_a_failing_network() {
    if skip() {
        return;
    }
    let w = world();
    // A guest that ignores Ctrl-Alt-Del is killed after the grace period.
    let hang = FakeFirecrackerConfig {
        ignore_ctrl_alt_del: true,
        ..Default::default()
    };
    create(&w, "hang", &hang).await;
    let pid = w.d.start_vm("hang").await.expect("start").pid.expect("pid");
    let t0 = Instant::now();
    let rec = w.d.stop_vm("hang").await.expect("stop");
    assert_eq!(rec.state, VmState::Stopped);
    assert!(t0.elapsed() >= Duration::from_secs(2), "waited the grace");
    assert_nothing_running(&w, "hang", Some(pid));

    // A tap that cannot be removed: the VMM is gone, so the VM is stopped,
    // and its reason says what was left.
    create(&w, "tap", &FakeFirecrackerConfig::default()).await;
    let pid = w.d.start_vm("tap").await.expect("start").pid.expect("pid");
    w.net.fail(FailOn::Teardown);
    let rec = w.d.stop_vm("tap").await.expect("stop");
    assert_eq!(rec.state, VmState::Stopped);
    assert!(rec.reason.unwrap_or_default().contains("fake network"));
    assert!(!alive(pid));
    w.net.heal();
    for n in ["hang", "tap"] {
        w.d.delete_vm(n).await.expect("delete");
    }
}

/// start, stop and delete from each of the six states, as a user calls
/// them: what each returns and where it leaves the VM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_operations_from_every_state() {
    if skip() {
        return;
    }
    use VmState::*;
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Want {
        Is(VmState),
        Gone,
        Conflict,
    }
    use Want::*;
    let states = [Creating, Stopped, Starting, Running, Stopping, Error];
    // columns: creating, stopped, starting, running, stopping, error
    let table: [(&str, [Want; 6]); 3] = [
        (
            "start",
            [
                Conflict,
                Is(Running),
                Conflict,
                Is(Running),
                Conflict,
                Is(Running),
            ],
        ),
        (
            "stop",
            [
                Conflict,
                Is(Stopped),
                Conflict,
                Is(Stopped),
                Conflict,
                Is(Error),
            ],
        ),
        ("delete", [Conflict, Gone, Conflict, Gone, Conflict, Gone]),
    ];
    let w = world();
    for (op, row) in table {
        for (from, want) in states.into_iter().zip(row) {
            let name = format!("{op}-{}", from.as_str());
            create(&w, &name, &FakeFirecrackerConfig::default()).await;
            if from != Stopped {
                // Put the row in `from` behind the table's back (the state
                // a crash or a concurrent request would leave).
                w.d.store
                    .transition_vm(&name, Stopped, from, None)
                    .expect("seed");
            }
            let r = match op {
                "start" => w.d.start_vm(&name).await,
                "stop" => w.d.stop_vm(&name).await,
                _ => w.d.delete_vm(&name).await,
            };
            let now = w.d.store.get_vm(&name).ok().map(|r| r.state);
            match want {
                Is(s) => {
                    r.unwrap_or_else(|e| panic!("{op} from {from}: {}", e.message));
                    assert_eq!(now, Some(s), "{op} from {from}");
                }
                Gone => {
                    r.unwrap_or_else(|e| panic!("{op} from {from}: {}", e.message));
                    assert_eq!(now, None, "{op} from {from}");
                }
                Conflict => {
                    let e = r.expect_err(&format!("{op} from {from} refused"));
                    assert_eq!(e.kind, ErrorKind::Conflict, "{op} from {from}");
                    assert_eq!(now, Some(from), "{op} from {from} wrote nothing");
                }
            }
        }
    }
    // Clean up what runs.
    for rec in w.d.store.list_vms().expect("list") {
        if rec.state == Running {
            w.d.stop_vm(&rec.name).await.expect("stop");
        }
    }
}

/// A guest that floods its serial console (the fake writes 48 MiB to it as
/// fast as it can) costs the host at most the console cap on disk: the
/// daemon's watcher keeps only the newest tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_flood_stays_under_the_cap_on_disk() {
    if skip() {
        return;
    }
    let w = world();
    let flood = FakeFirecrackerConfig {
        flood_console_bytes: 48 << 20,
        ..Default::default()
    };
    create(&w, "loud", &flood).await;
    w.d.start_vm("loud").await.expect("start");
    let console = w.d.vm_dir("loud").console_log();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let len = std::fs::metadata(&console).map(|m| m.len()).unwrap_or(0);
        let tail = banger_vmm::console::tail(&console, 4096).unwrap_or_default();
        let done = String::from_utf8_lossy(&tail).contains("flood done");
        if done && len <= banger_vmm::console::CONSOLE_CAP {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "console.log is {len} bytes (flood done: {done}); the cap is {}",
            banger_vmm::console::CONSOLE_CAP
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    w.d.stop_vm("loud").await.expect("stop");
}

/// Operations on names that do not exist are NotFound and leave nothing
/// behind in the daemon (no per-name slot for a made-up name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_vm_names_do_not_grow_daemon_memory() {
    if skip() {
        return;
    }
    let w = world();
    let before = w.d.slots.len();
    for i in 0..200 {
        let name = format!("made-up-{i}");
        for e in [
            w.d.start_vm(&name).await.expect_err("start"),
            w.d.stop_vm(&name).await.expect_err("stop"),
            w.d.delete_vm(&name).await.expect_err("delete"),
        ] {
            assert!(e.message.contains(&name), "{}", e.message);
        }
        let _ = w.d.agent_ready(&name);
    }
    assert_eq!(w.d.slots.len(), before, "slots for unknown names");
}

/// Two VMs whose names hash to the same 24-bit tap name get different
/// taps, so one's network changes never touch the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colliding_tap_names_get_distinct_taps() {
    if skip() {
        return;
    }
    let mut seen = std::collections::HashMap::new();
    let (a, b) = (0..200_000)
        .map(|i| format!("c{i}"))
        .find_map(|n| {
            let t = banger_net::tap_name(&n);
            seen.insert(t, n.clone()).map(|other| (other, n))
        })
        .expect("a 24-bit collision among 200000 names");
    assert_eq!(banger_net::tap_name(&a), banger_net::tap_name(&b));
    let w = world();
    create(&w, &a, &FakeFirecrackerConfig::default()).await;
    create(&w, &b, &FakeFirecrackerConfig::default()).await;
    w.d.start_vm(&a).await.expect("start a");
    w.d.start_vm(&b).await.expect("start b");
    let taps = w.net.live_taps();
    assert_eq!(taps.len(), 2, "{taps:?}");
    assert_ne!(taps[0], taps[1], "{a} and {b} share a tap");
    // Stopping one removes its own tap only.
    w.d.stop_vm(&b).await.expect("stop b");
    assert_eq!(w.net.live_taps(), vec![banger_net::tap_name(&a)]);
    w.d.stop_vm(&a).await.expect("stop a");
}

/// A create the daemon died in (its row still `creating`, its host key
/// already pinned) is undone when the next daemon opens the state: row,
/// files and the pinned key all go.
#[test]
fn a_host_key_pinned_by_an_interrupted_create_is_unpinned_at_start() {
    if skip() {
        return;
    }
    let fc = banger_testkit::fake::fake_firecracker_bin().expect("fake firecracker");
    let w = world_with(fc.clone());
    on_own_runtime(async {
        create(&w, "half", &FakeFirecrackerConfig::default()).await;
    });
    let st = w.d.store.get_vm("half").expect("row").state;
    w.d.store
        .transition_vm("half", st, VmState::Creating, None)
        .expect("back to creating, as if interrupted");
    let kh = w.paths.known_hosts();
    assert!(
        !std::fs::read_to_string(&kh)
            .expect("known_hosts")
            .is_empty(),
        "the create pinned its host key"
    );
    let paths = w.paths.clone();
    let dir = w.d.vm_dir("half");
    drop(w.d);
    let (d, _net) = open(&paths, fc);
    assert!(d.store.get_vm("half").is_err(), "the half-made row is gone");
    assert!(!dir.exists(), "its files are gone");
    assert_eq!(
        std::fs::read_to_string(&kh).expect("known_hosts"),
        "",
        "its pinned host key is gone"
    );
}
