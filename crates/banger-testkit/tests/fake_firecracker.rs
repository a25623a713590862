//! The Firecracker driver's process handling, against the FAKE firecracker
//! (`fake-firecracker`, this crate's binary): spawning and configuration, socket wait and
//! its timeout, `fault_message` surfacing, stop escalation, re-adoption by pid + start
//! time, and crash reporting.

use std::path::Path;
use std::time::{Duration, Instant};

use banger_testkit::fake::{FakeFirecrackerConfig, read_fake_calls, write_fake_config};
use banger_testkit::openapi::{OpenApi, firecracker_spec_path};
use banger_vmm::firecracker::api_requests;
use banger_vmm::{
    Adoption, ExitInfo, FirecrackerDriver, KernelFiles, MacAddr, NetSpec, StopMethod, Vmm,
    VmmError, VmmHandle, VmmSpec, VmmStatus, VsockSpec, adopt,
};

fn driver() -> FirecrackerDriver {
    let mut d = FirecrackerDriver::new(env!("CARGO_BIN_EXE_fake-firecracker").into());
    d.socket_timeout = Duration::from_millis(1500);
    d
}

/// A VM dir with (empty) disk and kernel files, and the fake's behaviour file.
fn vm(dir: &Path, config: &FakeFirecrackerConfig) -> VmmSpec {
    for f in ["vmlinux", "root.ext4", "work.ext4"] {
        std::fs::write(dir.join(f), b"").expect("write");
    }
    write_fake_config(dir, config).expect("fake config");
    let kernel = KernelFiles {
        vmlinux: Some(dir.join("vmlinux")),
        vmlinuz: None,
        initrd: None,
    };
    let mut spec = VmmSpec::new("fake-vm", dir, kernel, &dir.join("root.ext4"));
    spec.work_disk = Some(dir.join("work.ext4"));
    spec.net = Some(NetSpec {
        tap: "bgr-fake0".into(),
        mac: MacAddr::derive("fake-vm"),
    });
    spec.vsock = Some(VsockSpec {
        guest_cid: 3,
        uds_path: dir.join("v.sock"),
    });
    spec
}

#[tokio::test]
async fn start_configures_everything_in_order_and_ctrl_alt_del_stops_gracefully() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = vm(dir.path(), &FakeFirecrackerConfig::default());
    let d = driver();
    // A stale socket from a previous run must not stop the start.
    std::fs::write(dir.path().join("fc.sock"), b"stale").expect("stale socket");
    let mut vm = d.start(&spec).await.expect("start");
    assert!(vm.is_alive());
    let calls = read_fake_calls(dir.path()).expect("calls");
    let expected = api_requests(&spec, d.entropy).expect("requests");
    let got: Vec<(String, String, serde_json::Value)> = calls
        .iter()
        .map(|c| (c.method.clone(), c.path.clone(), c.body.clone()))
        .collect();
    let want: Vec<(String, String, serde_json::Value)> = expected
        .iter()
        .map(|r| (r.method.to_string(), r.path.clone(), r.body.clone()))
        .collect();
    assert_eq!(
        got, want,
        "the fake must have received exactly the driver's requests, in order"
    );
    // What went over the wire is what the spec accepts.
    if firecracker_spec_path().exists() {
        let api = OpenApi::load(&firecracker_spec_path()).expect("spec");
        for c in &calls {
            api.validate(&c.method, &c.path, &c.body)
                .unwrap_or_else(|e| panic!("{} {}: {e:?}", c.method, c.path));
        }
    }
    let handle = vm.handle().clone();
    let out = d.stop(&mut vm, Duration::from_secs(5)).await.expect("stop");
    assert_eq!(out.method, StopMethod::Graceful);
    assert_eq!(out.exit, Some(ExitInfo::Code(0)));
    assert!(!handle.process.is_alive());
    assert!(
        !dir.path().join("fc.sock").exists(),
        "API socket left behind"
    );
    let console = std::fs::read_to_string(&spec.console_log).expect("console log");
    assert!(
        console.contains("InstanceStart received"),
        "serial console (stdout) not captured: {console}"
    );
    let calls = read_fake_calls(dir.path()).expect("calls");
    assert_eq!(
        calls.last().map(|c| c.body["action_type"].clone()),
        Some("SendCtrlAltDel".into())
    );
}

#[tokio::test]
async fn a_vmm_that_never_creates_its_socket_times_out_and_is_killed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = vm(
        dir.path(),
        &FakeFirecrackerConfig {
            never_create_socket: true,
            ..Default::default()
        },
    );
    let t0 = Instant::now();
    let err = driver().start(&spec).await.expect_err("must time out");
    assert!(matches!(err, VmmError::SocketTimeout { .. }), "{err}");
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t0.elapsed()
    );
    assert!(err.to_string().contains("fc.sock"), "{err}");
}

#[tokio::test]
async fn fault_message_surfaces_verbatim_and_nothing_keeps_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let msg = "Unable to create the block device: No such file or directory (os error 2)";
    let mut config = FakeFirecrackerConfig::default();
    config
        .reject
        .insert("PUT /drives/rootfs".into(), msg.into());
    let spec = vm(dir.path(), &config);
    let err = driver().start(&spec).await.expect_err("must fail");
    match &err {
        VmmError::Api {
            method,
            path,
            status,
            fault_message,
        } => {
            assert_eq!(
                (method.as_str(), path.as_str(), *status),
                ("PUT", "/drives/rootfs", 400)
            );
            assert_eq!(fault_message, msg);
        }
        other => panic!("expected an API error, got {other}"),
    }
    assert!(err.to_string().contains(msg));
    let calls = read_fake_calls(dir.path()).expect("calls");
    assert!(
        !calls.iter().any(|c| c.path == "/actions"),
        "must not start after a failed request"
    );
    assert!(
        !dir.path().join("fc.sock").exists(),
        "socket must be cleaned up after a failed start"
    );
}

#[tokio::test]
async fn a_guest_ignoring_ctrl_alt_del_is_killed_after_the_grace_period() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = vm(
        dir.path(),
        &FakeFirecrackerConfig {
            ignore_ctrl_alt_del: true,
            ..Default::default()
        },
    );
    let d = driver();
    let mut vm = d.start(&spec).await.expect("start");
    let t0 = Instant::now();
    let out = d
        .stop(&mut vm, Duration::from_millis(700))
        .await
        .expect("stop");
    assert_eq!(out.method, StopMethod::Killed);
    assert_eq!(out.exit, Some(ExitInfo::Signal(libc_sigkill())));
    assert!(t0.elapsed() >= Duration::from_millis(700) && t0.elapsed() < Duration::from_secs(6));
}

fn libc_sigkill() -> i32 {
    9
}

#[tokio::test]
async fn a_live_vmm_is_readopted_by_pid_and_start_time_after_a_daemon_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = vm(dir.path(), &FakeFirecrackerConfig::default());
    let d = driver();
    let vm = d.start(&spec).await.expect("start");
    // (kill_on_drop stays off: that is what lets a VM outlive the daemon.)
    // The daemon persists the handle and "restarts": the RunningVmm (and its Child) is gone.
    let persisted = serde_json::to_string(vm.handle()).expect("serialize");
    drop(vm);
    let handle: VmmHandle = serde_json::from_str(&persisted).expect("deserialize");
    assert!(
        handle.process.is_alive(),
        "dropping the daemon's handle must not kill the VM"
    );

    // A handle whose start time does not match (pid reused) is not adopted.
    let mut recycled = handle.clone();
    recycled.process.start_time += 1;
    match adopt(recycled).await {
        Adoption::Gone { reason } => assert!(reason.contains("another process"), "{reason}"),
        Adoption::Alive(_) => panic!("adopted a process with a different start time"),
    }

    let mut vm = match adopt(handle.clone()).await {
        Adoption::Alive(vm) => vm,
        Adoption::Gone { reason } => panic!("live VMM not adopted: {reason}"),
    };
    assert_eq!(vm.status(), VmmStatus::Running);
    let out = d
        .stop(&mut vm, Duration::from_secs(5))
        .await
        .expect("stop adopted");
    assert_eq!(out.method, StopMethod::Graceful);
    // Not our child any more, so its status is unknowable; it is gone all the same.
    assert_eq!(out.exit, Some(ExitInfo::Unknown));
    match adopt(handle).await {
        Adoption::Gone { reason } => eprintln!("after stop: {reason}"),
        Adoption::Alive(_) => panic!("a stopped VMM was adopted"),
    }
}

#[tokio::test]
async fn a_crashed_vmm_reports_its_exit_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = vm(
        dir.path(),
        &FakeFirecrackerConfig {
            exit_after_start: Some(3),
            exit_delay_ms: 200,
            ..Default::default()
        },
    );
    let d = driver();
    let mut vm = d.start(&spec).await.expect("start");
    let exit = vm.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(exit, Some(ExitInfo::Code(3)));
    assert_eq!(vm.status(), VmmStatus::Exited(ExitInfo::Code(3)));
    let console = banger_vmm::process::log_tail(vm.console_log(), 5);
    assert!(console.contains("exiting with status 3"), "{console}");
    let out = d.stop(&mut vm, Duration::from_secs(1)).await.expect("stop");
    assert_eq!(out.method, StopMethod::AlreadyExited);
    assert_eq!(out.exit, Some(ExitInfo::Code(3)));
}

#[tokio::test]
async fn a_vmm_that_exits_at_once_is_reported_with_its_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = vm(dir.path(), &FakeFirecrackerConfig::default());
    let mut d = driver();
    d.bin = "/bin/false".into();
    match d.start(&spec).await {
        Err(VmmError::ExitedEarly { exit, .. }) => assert_eq!(exit, ExitInfo::Code(1)),
        other => panic!("expected ExitedEarly, got {other:?}"),
    }
    d.bin = dir.path().join("no-such-firecracker");
    let err = d.start(&spec).await.expect_err("missing binary");
    assert!(matches!(err, VmmError::Spawn { .. }), "{err}");
}

#[tokio::test]
async fn kill_on_drop_kills_a_running_vmm_and_default_does_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = vm(dir.path(), &FakeFirecrackerConfig::default());
    let d = driver();
    let mut vm = d.start(&spec).await.expect("start");
    let identity = vm.handle().process;
    vm.set_kill_on_drop(true);
    drop(vm);
    let deadline = Instant::now() + Duration::from_secs(5);
    while identity.is_alive() {
        assert!(
            Instant::now() < deadline,
            "kill_on_drop did not kill the VMM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
