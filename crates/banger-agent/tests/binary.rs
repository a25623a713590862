//! The real `banger-vsock-agent` binary, serving a Unix socket: boot-time
//! readiness announcement, and a 64 MiB stream through `cat` with the agent's
//! memory staying bounded (backpressure, not buffering).

mod common;

use std::path::Path;
use std::pin::Pin;
use std::process::{Child, Command};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use banger_agent::{AgentClient, AgentTarget, ReadinessListener};
use banger_proto::agent::{ExecRequest, ExitStatus, READY_PORT};
use common::*;
use tokio::io::AsyncWrite;

/// Kills the agent we started (by PID) even when the test fails.
struct AgentProc(Child);

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_agent(dir: &Path, announce: &str) -> (AgentProc, AgentClient) {
    let sock = dir.join("agent.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_banger-vsock-agent"))
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .arg("--announce")
        .arg(announce)
        .arg("--dry-run")
        .spawn()
        .expect("spawn banger-vsock-agent");
    (AgentProc(child), AgentClient::new(AgentTarget::Unix(sock)))
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_announces_readiness_then_serves() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().expect("tempdir");
        let uds = dir.path().join("v.sock");
        // Bound before the "VM" starts, as the daemon does.
        let ready = ReadinessListener::bind(&uds, READY_PORT).expect("bind");
        let t = Instant::now();
        let (_agent, client) = spawn_agent(dir.path(), &format!("unix:{}", ready.path().display()));
        let hello = ready
            .wait(Duration::from_secs(20), "testvm")
            .await
            .expect("readiness");
        eprintln!("readiness after {:?}: {hello:?}", t.elapsed());
        assert_eq!(hello.protocol_version, 1);
        assert!(!hello.hostname.is_empty());
        let out = client
            .exec_capture(&ExecRequest::new(["sh", "-c", "exit 5"]), b"")
            .await
            .expect("exec");
        assert_eq!(out.status, ExitStatus::Exited { code: 5 });
    })
    .await
    .expect("test timed out");
}

/// A sink that pauses now and then, like a slow terminal or disk.
struct SlowChecker {
    inner: PatternChecker,
    since_pause: u64,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl AsyncWrite for SlowChecker {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(p) = self.pause.as_mut() {
            if p.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.pause = None;
        }
        self.since_pause += buf.len() as u64;
        if self.since_pause > 8 << 20 {
            self.since_pause = 0;
            self.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(50))));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

use std::future::Future;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_through_cat_with_bounded_memory() {
    const LEN: u64 = 64 << 20;
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().expect("tempdir");
        let (agent, client) = spawn_agent(dir.path(), "none");
        let pid = agent.0.id();
        // Wait for the socket to appear (bounded).
        let deadline = Instant::now() + Duration::from_secs(20);
        while client.ping().await.is_err() {
            assert!(Instant::now() < deadline, "agent did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let base = vm_hwm_kib(pid);
        let mut out = SlowChecker {
            inner: PatternChecker::default(),
            since_pause: 0,
            pause: None,
        };
        let mut err = Vec::new();
        let t = Instant::now();
        let status = client
            .exec(
                &ExecRequest::new(["cat"]),
                Some(PatternReader { pos: 0, len: LEN }),
                &mut out,
                &mut err,
                None,
            )
            .await
            .expect("exec cat");
        let took = t.elapsed();
        assert_eq!(status, ExitStatus::Exited { code: 0 });
        assert_eq!(out.inner.pos, LEN, "all bytes came back");
        assert_eq!(out.inner.mismatches, 0, "bytes came back unchanged");
        let hwm = vm_hwm_kib(pid);
        eprintln!(
            "64 MiB through cat in {took:?} ({:.0} MiB/s); agent peak RSS {} KiB (idle {} KiB)",
            64.0 / took.as_secs_f64(),
            hwm,
            base
        );
        assert!(
            hwm < 48 * 1024,
            "agent peak RSS {hwm} KiB: the stream was buffered, not streamed"
        );
    })
    .await
    .expect("test timed out");
}

#[test]
fn systemd_unit_verifies() {
    let Ok(probe) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("SKIP: systemd-analyze not installed (apt-get install systemd)");
        return;
    };
    assert!(probe.status.success());
    let dir = tempfile::tempdir().expect("tempdir");
    // Point ExecStart at the freshly built binary: verify checks it exists.
    let unit = banger_agent::SYSTEMD_UNIT.replace(
        banger_agent::AGENT_INSTALL_PATH,
        env!("CARGO_BIN_EXE_banger-vsock-agent"),
    );
    let path = dir.path().join(banger_agent::SYSTEMD_UNIT_NAME);
    std::fs::write(&path, unit).expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify: {text}"
    );
}
