//! Firecracker-style hybrid vsock: `CONNECT <port>\n` → `OK <n>\n`, against
//! a fake VMM socket written here that forwards to an in-process agent.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use banger_agent::server::{AgentConfig, serve_connection};
use banger_agent::{AgentClient, AgentError, connect_hybrid};
use banger_proto::agent::{AGENT_PORT, ExecRequest, ExitStatus};
use common::TEST_TIMEOUT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

#[derive(Clone, Copy)]
enum FakeMode {
    /// Behaves like Firecracker with the agent listening.
    Ok,
    /// Closes without answering (nothing listens on that guest port).
    Close,
    /// Answers something other than `OK `.
    Garbage,
}

/// A fake VMM vsock socket: reads the CONNECT line, then hands the rest of
/// the stream to the agent.
fn fake_vmm(
    mode: FakeMode,
) -> (
    tempfile::TempDir,
    PathBuf,
    tokio::sync::mpsc::Receiver<String>,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let uds = dir.path().join("v.sock");
    let l = UnixListener::bind(&uds).expect("bind");
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while s.read(&mut b).await.unwrap_or(0) == 1 && b[0] != b'\n' {
                    line.push(b[0]);
                }
                let _ = tx.send(String::from_utf8_lossy(&line).into_owned()).await;
                match mode {
                    FakeMode::Ok => {
                        // Firecracker answers with the host-side port number.
                        s.write_all(b"OK 1073741824\n").await.expect("write");
                        serve_connection(s, Arc::new(AgentConfig::harmless())).await;
                    }
                    FakeMode::Close => drop(s),
                    FakeMode::Garbage => {
                        let _ = s.write_all(b"NOPE\n").await;
                    }
                }
            });
        }
    });
    (dir, uds, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_speaks_the_protocol_through_connect_handshake() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (_dir, uds, mut lines) = fake_vmm(FakeMode::Ok);
        let client = AgentClient::hybrid(&uds);
        let h = client.hello().await.expect("hello");
        assert_eq!(h.protocol_version, 1);
        assert_eq!(
            lines.recv().await.expect("line"),
            format!("CONNECT {AGENT_PORT}")
        );
        let out = client
            .exec_capture(&ExecRequest::new(["sh", "-c", "exit 5"]), b"")
            .await
            .expect("exec");
        assert_eq!(out.status, ExitStatus::Exited { code: 5 });

        // The raw handshake leaves the stream positioned at the protocol.
        let s = connect_hybrid(&uds, 4242, Duration::from_secs(5))
            .await
            .expect("connect");
        assert_eq!(lines.recv().await.expect("line"), "CONNECT 10789");
        assert_eq!(lines.recv().await.expect("line"), "CONNECT 4242");
        drop(s);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_failures_are_explained() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (_d1, closed, _l1) = fake_vmm(FakeMode::Close);
        let e = AgentClient::hybrid(&closed)
            .ping()
            .await
            .expect_err("closed");
        assert!(
            matches!(e, AgentError::HandshakeClosed { port: AGENT_PORT }),
            "{e}"
        );
        assert!(e.to_string().contains("banger-vsock-agent"), "{e}");

        let (_d2, garbage, _l2) = fake_vmm(FakeMode::Garbage);
        let e = AgentClient::hybrid(&garbage)
            .ping()
            .await
            .expect_err("garbage");
        assert!(e.to_string().contains("NOPE"), "{e}");

        let e = AgentClient::hybrid("/nonexistent/banger/v.sock")
            .ping()
            .await
            .expect_err("no socket");
        assert!(matches!(e, AgentError::Connect { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/banger/v.sock"), "{e}");
    })
    .await
    .expect("test timed out");
}
