//! The agent's handlers over real Unix sockets, in-process and through the
//! real `banger-vsock-agent` binary.

mod common;

use std::time::{Duration, Instant};

use banger_agent::AgentError;
use banger_proto::agent::{
    AgentErrorKind, ExecRequest, ExitStatus, Frame, FrameKind, GuestMsg, HostHello, HostMsg,
    MAX_FRAME_PAYLOAD, TtySize, encode_header,
};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

macro_rules! bounded {
    ($body:expr) => {
        tokio::time::timeout(TEST_TIMEOUT, $body)
            .await
            .expect("test timed out")
    };
}

fn sh(script: &str) -> ExecRequest {
    ExecRequest::new(["sh", "-c", script])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_ping_shutdown_sync_time() {
    let a = serve_in_process();
    bounded!(async {
        let h = a.client.hello().await.expect("hello");
        assert_eq!(h.protocol_version, banger_proto::agent::PROTOCOL_VERSION);
        assert!(!h.kernel.is_empty(), "kernel release reported");
        assert!(h.uptime_ms > 0);
        let rtt = a.client.ping().await.expect("ping");
        assert!(rtt < Duration::from_secs(2));
        a.client.shutdown().await.expect("shutdown (dry run)");
        let off = a.client.sync_time().await.expect("sync_time (dry run)");
        assert!(off.abs() < 2_000, "same machine, offset {off} ms");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reports_this_machine() {
    let a = serve_in_process();
    bounded!(async {
        let r = a.client.readiness().await.expect("readiness");
        let paths: Vec<&str> = r.home.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, banger_agent::readiness::HOME_PATHS);
        // /root exists wherever this test runs; its facts are the real ones
        let root = std::fs::symlink_metadata("/root").expect("/root");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            r.home[0].stat.map(|s| (s.mode, s.uid)),
            Some((root.mode(), root.uid()))
        );
        let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
        assert_eq!(
            r.root_source,
            banger_agent::readiness::mount_source(&mounts, "/root")
        );
        assert_eq!(
            r.sshd_installed,
            std::path::Path::new("/usr/sbin/sshd").is_file()
                || std::path::Path::new("/usr/bin/sshd").is_file()
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_exit_codes_signals_and_missing_commands() {
    let a = serve_in_process();
    bounded!(async {
        let out = a
            .client
            .exec_capture(&sh("echo hi; echo err >&2"), b"")
            .await
            .expect("exec");
        assert_eq!(out.status, ExitStatus::Exited { code: 0 });
        assert_eq!(out.stdout, b"hi\n");
        assert_eq!(out.stderr, b"err\n");

        let out = a
            .client
            .exec_capture(&sh("exit 5"), b"")
            .await
            .expect("exec");
        assert_eq!(out.status, ExitStatus::Exited { code: 5 });
        assert_eq!(out.status.shell_code(), 5);

        let out = a
            .client
            .exec_capture(&sh("kill -9 $$"), b"")
            .await
            .expect("exec");
        assert_eq!(out.status, ExitStatus::Signaled { signal: 9 });
        assert_eq!(out.status.shell_code(), 137);

        let out = a
            .client
            .exec_capture(
                &ExecRequest::new(["banger-no-such-command-xyz", "arg"]),
                b"",
            )
            .await
            .expect("exec");
        assert_eq!(out.status, ExitStatus::Exited { code: 127 });
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("banger-no-such-command-xyz: command not found"),
            "{err}"
        );

        // cwd and env are honoured.
        let mut req = sh("pwd; echo $BANGER_T");
        req.cwd = Some("/tmp".into());
        req.env.push(("BANGER_T".into(), "v1".into()));
        let out = a.client.exec_capture(&req, b"").await.expect("exec");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "/tmp\nv1\n");

        let mut req = sh("true");
        req.cwd = Some("/no/such/dir".into());
        let e = a.client.exec_capture(&req, b"").await.expect_err("bad cwd");
        assert!(e.to_string().contains("/no/such/dir"), "{e}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_as_the_requested_user() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: switching users needs the agent to run as root");
        return;
    }
    let a = serve_in_process();
    bounded!(async {
        let mut req = sh("echo $(id -u):$(id -g):$HOME");
        req.user = Some("nobody".into());
        let out = a.client.exec_capture(&req, b"").await.expect("exec");
        assert_eq!(out.status, ExitStatus::Exited { code: 0 });
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("65534:"), "{text}");

        let mut req = sh("id -u");
        req.user = Some("no-such-user-here".into());
        let e = a
            .client
            .exec_capture(&req, b"")
            .await
            .expect_err("unknown user");
        assert!(e.to_string().contains("does not exist"), "{e}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_signal_from_host() {
    let a = serve_in_process();
    bounded!(async {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let client = a.client.clone();
        let run = tokio::spawn(async move {
            let mut out = Vec::new();
            let mut err = Vec::new();
            client
                .exec(
                    &sh("echo started; sleep 30"),
                    None::<&[u8]>,
                    &mut out,
                    &mut err,
                    Some(rx),
                )
                .await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        tx.send(banger_agent::ExecControl::Signal(15))
            .await
            .expect("send");
        let status = run.await.expect("join").expect("exec");
        assert_eq!(status, ExitStatus::Signaled { signal: 15 });
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_is_piped_through_cat() {
    let a = serve_in_process();
    bounded!(async {
        let out = a
            .client
            .exec_capture(&ExecRequest::new(["cat"]), b"line one\nline two\n")
            .await
            .expect("exec");
        assert_eq!(out.status, ExitStatus::Exited { code: 0 });
        assert_eq!(out.stdout, b"line one\nline two\n");
        // No stdin at all: immediate EOF, cat exits.
        let mut o = Vec::new();
        let mut e = Vec::new();
        let st = a
            .client
            .exec(
                &ExecRequest::new(["cat"]),
                None::<&[u8]>,
                &mut o,
                &mut e,
                None,
            )
            .await
            .expect("exec");
        assert!(st.success() && o.is_empty());
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tty_mode_runs_on_a_pty_with_its_size() {
    let a = serve_in_process();
    bounded!(async {
        let mut req = sh("tty; stty size; echo to-stderr >&2; exit 3");
        req.tty = Some(TtySize {
            rows: 33,
            cols: 101,
        });
        let out = a.client.exec_capture(&req, b"").await.expect("exec");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status, ExitStatus::Exited { code: 3 }, "{text}");
        assert!(text.starts_with("/dev/pts/"), "{text:?}");
        assert!(text.contains("33 101"), "{text:?}");
        assert!(text.contains("to-stderr"), "stderr joins the pty: {text:?}");
        assert!(out.stderr.is_empty());

        // Resize while running.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let mut req = sh("sleep 0.5; stty size");
        req.tty = Some(TtySize { rows: 10, cols: 10 });
        tx.send(banger_agent::ExecControl::Resize(TtySize {
            rows: 50,
            cols: 120,
        }))
        .await
        .expect("send");
        let mut o = Vec::new();
        let mut e = Vec::new();
        let st = a
            .client
            .exec(&req, None::<&[u8]>, &mut o, &mut e, Some(rx))
            .await
            .expect("exec");
        assert!(st.success());
        assert!(
            String::from_utf8_lossy(&o).contains("50 120"),
            "{:?}",
            String::from_utf8_lossy(&o)
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sessions_run_in_parallel() {
    let a = serve_in_process();
    bounded!(async {
        let t = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..4 {
            let c = a.client.clone();
            tasks.push(tokio::spawn(async move {
                c.exec_capture(&sh(&format!("sleep 1; echo {i}")), b"")
                    .await
            }));
        }
        for (i, task) in tasks.into_iter().enumerate() {
            let out = task.await.expect("join").expect("exec");
            assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{i}\n"));
        }
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "took {:?}",
            t.elapsed()
        );
    });
}

/// Speaks raw frames to the agent to check its answers to bad input.
async fn raw_exchange(sock: &std::path::Path, bytes: &[u8]) -> GuestMsg {
    let mut s = tokio::net::UnixStream::connect(sock)
        .await
        .expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let mut d = banger_proto::agent::FrameDecoder::new();
    d.push(&buf);
    let f = d.next_frame().expect("decode").expect("a frame");
    f.message::<GuestMsg>().expect("message")
}

fn hello(version: u32) -> Vec<u8> {
    Frame::control(&HostMsg::Hello(HostHello {
        protocol_version: version,
        client: "test".into(),
    }))
    .expect("frame")
    .encode()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_clearly() {
    let a = serve_in_process();
    bounded!(async {
        // Version mismatch names both versions.
        match raw_exchange(&a.sock, &hello(99)).await {
            GuestMsg::Error(e) => {
                assert_eq!(e.kind, AgentErrorKind::VersionMismatch);
                assert!(
                    e.message.contains("v99") && e.message.contains("v1"),
                    "{}",
                    e.message
                );
            }
            other => panic!("expected an error, got {other:?}"),
        }
        // Oversized frame: refused from the header alone.
        let mut big = encode_header(FrameKind::Control, MAX_FRAME_PAYLOAD + 1).to_vec();
        big.extend_from_slice(b"{}");
        match raw_exchange(&a.sock, &big).await {
            GuestMsg::Error(e) => assert!(e.message.contains("exceeds"), "{}", e.message),
            other => panic!("expected an error, got {other:?}"),
        }
        // Unknown frame kind.
        match raw_exchange(&a.sock, &[0, 0, 0, 0, 77]).await {
            GuestMsg::Error(e) => assert!(
                e.message.contains("unknown agent frame kind 77"),
                "{}",
                e.message
            ),
            other => panic!("expected an error, got {other:?}"),
        }
        // Unknown message type.
        let mut bytes = hello(1);
        bytes.extend(
            Frame::data(FrameKind::Control, br#"{"type":"format_disk"}"#.to_vec())
                .expect("f")
                .encode(),
        );
        let mut s = tokio::net::UnixStream::connect(&a.sock)
            .await
            .expect("connect");
        s.write_all(&bytes).await.expect("write");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.expect("read");
        let mut d = banger_proto::agent::FrameDecoder::new();
        d.push(&buf);
        let _hello = d.next_frame().expect("decode").expect("hello");
        let f = d.next_frame().expect("decode").expect("error");
        match f.message::<GuestMsg>().expect("msg") {
            GuestMsg::Error(e) => assert!(e.message.contains("format_disk"), "{}", e.message),
            other => panic!("expected an error, got {other:?}"),
        }
        // Truncated frame then close: the agent just ends the session.
        let mut s = tokio::net::UnixStream::connect(&a.sock)
            .await
            .expect("connect");
        s.write_all(&hello(1)[..7]).await.expect("write");
        s.shutdown().await.expect("shutdown");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.expect("read");
        let mut d = banger_proto::agent::FrameDecoder::new();
        d.push(&buf);
        match d
            .next_frame()
            .expect("decode")
            .expect("frame")
            .message::<GuestMsg>()
            .expect("m")
        {
            GuestMsg::Error(e) => assert!(
                e.message.contains("closed in the middle of a frame"),
                "{}",
                e.message
            ),
            other => panic!("expected an error, got {other:?}"),
        }
        // The agent still serves after all that.
        a.client.ping().await.expect("ping");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reports_version_mismatch_from_readiness() {
    bounded!(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let uds = dir.path().join("v.sock");
        let l = banger_agent::ReadinessListener::bind(&uds, banger_proto::agent::READY_PORT)
            .expect("bind");
        let path = l.path().to_path_buf();
        assert_eq!(path, dir.path().join("v.sock_10790"));
        tokio::spawn(async move {
            let mut h = banger_agent::server::guest_hello();
            h.protocol_version = 2;
            let mut s = tokio::net::UnixStream::connect(&path)
                .await
                .expect("connect");
            s.write_all(&Frame::control(&GuestMsg::Hello(h)).expect("f").encode())
                .await
                .expect("w");
        });
        let e = l
            .wait(Duration::from_secs(10), "vm1")
            .await
            .expect_err("mismatch");
        assert!(
            matches!(e, AgentError::VersionMismatch { host: 1, guest: 2 }),
            "{e}"
        );
        assert!(e.to_string().contains("v1") && e.to_string().contains("v2"));
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_timeout_points_at_vm_logs() {
    bounded!(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let l =
            banger_agent::ReadinessListener::bind(&dir.path().join("v.sock"), 10790).expect("bind");
        let t = Instant::now();
        let e = l
            .wait(Duration::from_millis(300), "slowpoke")
            .await
            .expect_err("timeout");
        assert!(t.elapsed() < Duration::from_secs(2));
        let msg = e.to_string();
        assert!(msg.contains("banger vm logs slowpoke"), "{msg}");
        let p = l.path().to_path_buf();
        drop(l);
        assert!(!p.exists(), "socket file removed on drop");
    });
}

/// An agent streaming more than the capture cap: the call fails saying so
/// instead of growing the host's memory; under the cap all of it arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_capture_is_capped() {
    let a = serve_in_process();
    bounded!(async {
        let cap = banger_agent::client::CAPTURE_MAX;
        let over = format!("head -c {} /dev/zero", cap + 1);
        let e = a
            .client
            .exec_capture(&sh(&over), b"")
            .await
            .expect_err("over the cap");
        assert!(
            e.to_string().contains("more than 16777216 bytes to stdout"),
            "{e}"
        );
        let under = format!("head -c {cap} /dev/zero >&2");
        let out = a
            .client
            .exec_capture(&sh(&under), b"")
            .await
            .expect("at the cap");
        assert_eq!(out.stderr.len(), cap);
    });
}
