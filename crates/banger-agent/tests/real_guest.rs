//! The agent in a real Debian guest booted by the QEMU driver (TCG here),
//! over the serial agent channel (virtio-serial + the stream multiplexer),
//! with the host client exactly as the daemon uses it; then the guest is
//! snapshotted (QMP `migrate` to a state file, RAM in a memory-backend-file
//! with x-ignore-shared) with the agent channel present — vhost-user vsock
//! made QEMU refuse that — restored into a second QEMU, and the agent must
//! answer there, while a session left open across the snapshot finishes on
//! the source. Needs root (the cached test guest is built with mmdebstrap),
//! qemu-system-x86_64 and debugfs; skips with a message otherwise. The guest
//! has no network at all.
//!
//! Set BANGER_AGENT_BIN to test a specific agent build (e.g. the static one
//! from scripts/build-agent-static); the default is this test build's binary
//! (the host and the bookworm guest share glibc 2.36).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use banger_agent::{AgentClient, AgentTarget, SerialChannel};
use banger_proto::agent::{AGENT_SERIAL_PORT, ExecRequest, ExitStatus, TtySize};
use banger_vmm::{
    AfterSnapshot, AgentPortSpec, KernelFiles, MemoryMode, QemuDriver, RunningVmm, Vmm, VmmChoice,
    VmmConfig, VmmSpec, clone_disk, select_vmm,
};
use tokio::io::AsyncReadExt;

const READY_TIMEOUT: Duration = Duration::from_secs(180);

fn console_tail(p: &Path) -> String {
    banger_testkit::tail_file(p, 60)
}

/// Copies the agent and its unit into the guest's ext4 image and enables it.
fn install_agent(rootfs: &Path, agent_bin: &Path, dir: &Path) {
    let unit = dir.join("unit.service");
    std::fs::write(&unit, banger_agent::SYSTEMD_UNIT).expect("write unit");
    let cmds = dir.join("debugfs.cmds");
    let name = banger_agent::SYSTEMD_UNIT_NAME;
    let script = format!(
        "mkdir /usr/local/bin\n\
         write {bin} {dest}\n\
         sif {dest} mode 0100755\n\
         write {unit} /etc/systemd/system/{name}\n\
         symlink /etc/systemd/system/multi-user.target.wants/{name} /etc/systemd/system/{name}\n",
        bin = agent_bin.display(),
        dest = banger_agent::AGENT_INSTALL_PATH,
        unit = unit.display(),
    );
    std::fs::write(&cmds, script).expect("write debugfs script");
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&cmds)
        .arg(rootfs)
        .output()
        .expect("run debugfs");
    assert!(
        out.status.success(),
        "debugfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let check = Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat {}", banger_agent::AGENT_INSTALL_PATH))
        .arg(rootfs)
        .output()
        .expect("run debugfs");
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(text.contains("Mode:  0755"), "agent not installed: {text}");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_in_a_real_guest_over_the_serial_channel_survives_migration() {
    if !banger_testkit::is_root() {
        eprintln!("SKIP: the real-guest agent test needs root (to build the test guest)");
        return;
    }
    if banger_testkit::which("debugfs").is_none() {
        eprintln!("SKIP: debugfs not installed (apt-get install -y e2fsprogs)");
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
    let guest = banger_testkit::test_guest().expect("build/reuse the test guest");
    let agent_bin = std::env::var_os("BANGER_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_banger-vsock-agent")));
    eprintln!("agent binary: {}", agent_bin.display());

    let dir = tempfile::tempdir().expect("tempdir");
    let vm_dir = dir.path().join("a");
    std::fs::create_dir(&vm_dir).expect("mkdir");
    let root = vm_dir.join("root.ext4");
    clone_disk(&guest.rootfs, &root).expect("clone root disk");
    install_agent(&root, &agent_bin, &vm_dir);

    let driver = QemuDriver::new(sel.qemu_bin.clone().expect("qemu"), sel.accel, sel.tsc.khz);
    let kernel = KernelFiles {
        vmlinux: None,
        vmlinuz: Some(guest.vmlinuz.clone()),
        initrd: Some(guest.initrd.clone()),
    };
    let mut spec = VmmSpec::new("agent-test", &vm_dir, kernel, &root);
    spec.boot_args = guest.boot_args.clone();
    spec.agent_port = Some(AgentPortSpec {
        socket: vm_dir.join("agent.sock"),
        name: AGENT_SERIAL_PORT.into(),
    });
    // Guest RAM in a shared file (tmpfs), as for every snapshot-capable VM.
    let ram = tempfile::tempdir_in("/dev/shm").expect("tmpfs dir for guest RAM");
    spec.memory_file = Some(ram.path().join("agent-test.mem"));
    let console = spec.console_log.clone();

    let t0 = Instant::now();
    let mut vm = driver
        .start(&spec)
        .await
        .unwrap_or_else(|e| panic!("start: {e}\nconsole:\n{}", console_tail(&console)));
    // A failing assertion anywhere below must not leave QEMU running.
    vm.set_kill_on_drop(true);
    let channel = SerialChannel::new(vm_dir.join("agent.sock"));
    let hello = match channel.wait_ready(READY_TIMEOUT, "agent-test").await {
        Ok(h) => h,
        Err(e) => {
            let _ = driver.stop(&mut vm, Duration::from_secs(5)).await;
            panic!("{e}\nconsole:\n{}", console_tail(&console));
        }
    };
    eprintln!("agent ready {:?} after VMM start: {hello:?}", t0.elapsed());
    let agent = AgentClient::new(AgentTarget::Serial(channel));

    let result = tokio::time::timeout(Duration::from_secs(900), async {
        exercise(&agent, &vm_dir).await?;
        snapshot_and_restore(&driver, &mut vm, &spec, &agent, dir.path()).await
    })
    .await;
    let failure = match result {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(_) => Some("timed out".to_string()),
    };
    if let Some(e) = failure {
        let _ = driver.stop(&mut vm, Duration::from_secs(5)).await;
        panic!("{e}\nconsole:\n{}", console_tail(&console));
    }

    // Clean shutdown through the agent: the VMM process exits on its own.
    agent.shutdown().await.expect("shutdown");
    let t = Instant::now();
    while vm.is_alive() && t.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let powered_off = !vm.is_alive();
    eprintln!(
        "guest powered off by the agent: {powered_off} after {:?}",
        t.elapsed()
    );
    let out = driver
        .stop(&mut vm, Duration::from_secs(10))
        .await
        .expect("stop");
    assert!(
        powered_off,
        "the guest did not power off after shutdown ({out:?}); console:\n{}",
        console_tail(&console)
    );
}

/// Snapshots the running guest through the driver (a `migrate` to a state
/// file, RAM in a shared memory-backend-file left out by x-ignore-shared)
/// with the agent channel present, restores it into a second QEMU and checks
/// the agent answers there; a session open across the snapshot finishes on
/// the source, which runs on.
async fn snapshot_and_restore(
    driver: &QemuDriver,
    vm: &mut RunningVmm,
    spec: &VmmSpec,
    agent: &AgentClient,
    base: &Path,
) -> Result<(), String> {
    let e = |what: &'static str| move |err: banger_agent::AgentError| format!("{what}: {err}");
    let out = agent
        .exec_capture(&sh("echo before-snapshot > /root/marker && sync"), b"")
        .await
        .map_err(e("marker"))?;
    assert!(out.status.success(), "{out:?}");
    // A session left open in the snapshot (the restored guest must drop it).
    let open_session = {
        let agent = agent.clone();
        tokio::spawn(async move { agent.exec_capture(&sh("sleep 3; echo slept"), b"").await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    let t = Instant::now();
    let snap = driver
        .snapshot(vm, spec, &base.join("snapshot"), AfterSnapshot::Resume)
        .await
        .map_err(|x| format!("snapshot with the agent channel present: {x}"))?;
    let m = &snap.manifest;
    eprintln!(
        "snapshot with the agent channel: {:?}, guest paused {} ms, state {} KiB, memory {:?}",
        t.elapsed(),
        m.save_ms,
        m.state_bytes / 1024,
        m.memory
    );
    assert_eq!(m.memory, MemoryMode::File);
    assert!(
        m.state_bytes < 8 << 20,
        "RAM leaked into the state stream: {} bytes",
        m.state_bytes
    );

    // The restored VM: its own directory, disks, console and agent socket.
    let dir_b = base.join("b");
    std::fs::create_dir(&dir_b).map_err(|x| x.to_string())?;
    let mut spec_b = VmmSpec::new(
        "agent-restored",
        &dir_b,
        spec.kernel.clone(),
        &dir_b.join("root.ext4"),
    );
    spec_b.boot_args = spec.boot_args.clone();
    spec_b.vcpus = spec.vcpus;
    spec_b.memory_mib = spec.memory_mib;
    spec_b.agent_port = Some(AgentPortSpec {
        socket: dir_b.join("agent.sock"),
        name: AGENT_SERIAL_PORT.into(),
    });
    let t = Instant::now();
    let restored = driver
        .restore(&snap, &spec_b)
        .await
        .map_err(|x| format!("restore: {x}"))?;
    let mut vm_b = restored.vm;
    vm_b.set_kill_on_drop(true);
    let ch = SerialChannel::new(dir_b.join("agent.sock"));
    let restored_agent = AgentClient::new(AgentTarget::Serial(ch.clone()));
    let hello = ch
        .wait_ready(Duration::from_secs(60), "restored")
        .await
        .map_err(|x| format!("restored guest's agent: {x}"))?;
    eprintln!(
        "restored guest: agent answered {:?} after the restore began ({} ms of it restoring; guest uptime {} ms)",
        t.elapsed(),
        restored.report.restore_ms,
        hello.uptime_ms
    );
    let out = restored_agent
        .exec_capture(&sh("cat /root/marker"), b"")
        .await
        .map_err(e("exec in the restored guest"))?;
    assert_eq!(out.stdout, b"before-snapshot\n", "{out:?}");
    let mut rtts = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let out = restored_agent
            .exec_capture(&ExecRequest::new(["true"]), b"")
            .await
            .map_err(e("exec true (restored)"))?;
        assert!(out.status.success());
        rtts.push(t.elapsed());
    }
    eprintln!("restored guest: exec true median {:?}", median(rtts));

    // The source runs on; its session survived the snapshot.
    let out = open_session
        .await
        .map_err(|x| x.to_string())?
        .map_err(e("the session open across the snapshot (source)"))?;
    assert_eq!(out.stdout, b"slept\n", "{out:?}");
    let out = agent
        .exec_capture(&ExecRequest::new(["true"]), b"")
        .await
        .map_err(e("exec on the source after the snapshot"))?;
    assert!(out.status.success());

    restored_agent
        .shutdown()
        .await
        .map_err(e("shutdown restored"))?;
    let t = Instant::now();
    while vm_b.is_alive() && t.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let gone = !vm_b.is_alive();
    let _ = driver.stop(&mut vm_b, Duration::from_secs(5)).await;
    if !gone {
        return Err(format!(
            "the restored guest did not power off; console:\n{}",
            console_tail(&spec_b.console_log)
        ));
    }
    Ok(())
}

fn sh(script: &str) -> ExecRequest {
    ExecRequest::new(["sh", "-c", script])
}

async fn exercise(agent: &AgentClient, vm_dir: &Path) -> Result<(), String> {
    let e = |what: &str| {
        let what = what.to_string();
        move |err: banger_agent::AgentError| format!("{what}: {err}")
    };

    let out = agent
        .exec_capture(&ExecRequest::new(["sh", "-c", "exit 5"]), b"")
        .await
        .map_err(e("exec exit 5"))?;
    assert_eq!(out.status, ExitStatus::Exited { code: 5 });
    let out = agent
        .exec_capture(&ExecRequest::new(["no-such-command"]), b"")
        .await
        .map_err(e("exec missing"))?;
    assert_eq!(out.status, ExitStatus::Exited { code: 127 });
    let out = agent
        .exec_capture(&ExecRequest::new(["sh", "-c", "kill -9 $$"]), b"")
        .await
        .map_err(e("exec kill"))?;
    assert_eq!(out.status, ExitStatus::Signaled { signal: 9 });
    let out = agent
        .exec_capture(&ExecRequest::new(["cat"]), b"through the guest\n")
        .await
        .map_err(e("exec cat"))?;
    assert_eq!(out.stdout, b"through the guest\n");
    let mut req = ExecRequest::new(["tty"]);
    req.tty = Some(TtySize { rows: 24, cols: 80 });
    let out = agent.exec_capture(&req, b"").await.map_err(e("exec tty"))?;
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("/dev/pts/"),
        "{out:?}"
    );

    let mut rtts = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let out = agent
            .exec_capture(&ExecRequest::new(["true"]), b"")
            .await
            .map_err(e("exec true"))?;
        assert!(out.status.success());
        rtts.push(t.elapsed());
    }
    eprintln!("exec true round trip: median {:?} (10 runs)", median(rtts));
    let offset = agent.sync_time().await.map_err(e("sync_time"))?;
    eprintln!("guest clock offset before sync: {offset} ms");

    // 20,000 files.
    let src = vm_dir.join("tree");
    for d in 0..200 {
        let dd = src.join(format!("d{d:03}"));
        std::fs::create_dir_all(&dd).map_err(|x| x.to_string())?;
        for f in 0..100 {
            let mut file =
                std::fs::File::create(dd.join(format!("f{f:03}"))).map_err(|x| x.to_string())?;
            writeln!(file, "{d}/{f}").map_err(|x| x.to_string())?;
        }
    }
    let mut b = tar::Builder::new(Vec::new());
    b.append_dir_all(".", &src).map_err(|x| x.to_string())?;
    let tarball = b.into_inner().map_err(|x| x.to_string())?;
    let t = Instant::now();
    let s = agent
        .upload_tar(&tarball[..], "/root/repo")
        .await
        .map_err(e("upload"))?;
    let took = t.elapsed();
    eprintln!(
        "uploaded {} entries ({:.1} MiB of tar) in {took:?} ({:.1} MiB/s)",
        s.entries,
        tarball.len() as f64 / 1048576.0,
        tarball.len() as f64 / 1048576.0 / took.as_secs_f64()
    );
    let out = agent
        .exec_capture(
            &ExecRequest::new([
                "sh",
                "-c",
                "find /root/repo -type f | wc -l; cat /root/repo/d123/f045",
            ]),
            b"",
        )
        .await
        .map_err(e("count"))?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "20000\n123/45\n");

    // Baseline: the same tar through exec's stdin into the guest's own tar.
    let t = Instant::now();
    let out = agent
        .exec_capture(
            &ExecRequest::new([
                "sh",
                "-c",
                "mkdir -p /root/repo2 && tar -C /root/repo2 -xf -",
            ]),
            &tarball,
        )
        .await
        .map_err(e("tar via exec"))?;
    assert!(out.status.success(), "{out:?}");
    eprintln!("same tar through `exec tar -x` stdin: {:?}", t.elapsed());

    // A hostile entry is refused by the guest too.
    let mut hostile = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_cksum();
    hostile
        .append_link(&mut h, "etc-link", "/etc")
        .map_err(|x| x.to_string())?;
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    h.set_mode(0o644);
    hostile
        .append_data(&mut h, "etc-link/pwned", &b"pwned"[..])
        .map_err(|x| x.to_string())?;
    let hostile = hostile.into_inner().map_err(|x| x.to_string())?;
    let err = agent
        .upload_tar(&hostile[..], "/root/hostile")
        .await
        .expect_err("hostile upload must fail");
    assert!(err.to_string().contains("symlink"), "{err}");
    let out = agent
        .exec_capture(&ExecRequest::new(["test", "-e", "/etc/pwned"]), b"")
        .await
        .map_err(e("check pwned"))?;
    assert_eq!(
        out.status,
        ExitStatus::Exited { code: 1 },
        "/etc/pwned exists"
    );

    // Download round trip.
    let t = Instant::now();
    let mut stream = agent
        .download("/root/repo/d007")
        .await
        .map_err(e("download"))?;
    let mut back = Vec::new();
    stream
        .read_to_end(&mut back)
        .await
        .map_err(|x| x.to_string())?;
    let dest = vm_dir.join("back");
    tar::Archive::new(&back[..])
        .unpack(&dest)
        .map_err(|x| x.to_string())?;
    assert_eq!(
        std::fs::read_to_string(dest.join("d007/f099")).map_err(|x| x.to_string())?,
        "7/99\n"
    );
    eprintln!("downloaded a 100-file directory in {:?}", t.elapsed());
    Ok(())
}
