//! The serial agent channel in-process: the host's `AgentClient::serial` and
//! `Gateway` against the guest's `serve_io`, joined by `FakeVirtioPort`, a
//! named fake of QEMU's chardev socket server plus the guest's virtio-serial
//! port (one host connection at a time; the guest reads EOF while no host is
//! connected, and its writes wait for one). The real thing is exercised in
//! real_guest.rs.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use banger_agent::mux::{Frame, Kind};
use banger_agent::server::AgentConfig;
use banger_agent::{AgentClient, Gateway, SerialChannel};
use banger_proto::agent::{ExecRequest, ExitStatus, PROTOCOL_VERSION};
use common::TEST_TIMEOUT;
use tokio::io::AsyncReadExt;

#[derive(Default)]
struct PortState {
    host: Option<UnixStream>,
    /// Bytes handed to the next host that connects (a restored guest's
    /// half-written frame).
    stale_for_host: Vec<u8>,
}

/// See the module comment.
#[derive(Clone)]
struct FakeVirtioPort {
    state: Arc<Mutex<PortState>>,
}

impl FakeVirtioPort {
    /// Listens on `path` like `-chardev socket,server=on,wait=off`.
    fn start(path: &Path) -> FakeVirtioPort {
        let port = FakeVirtioPort {
            state: Arc::new(Mutex::new(PortState::default())),
        };
        let l = UnixListener::bind(path).expect("bind the fake chardev socket");
        let p = port.clone();
        std::thread::spawn(move || {
            loop {
                // One client at a time, as QEMU: the next waits in the backlog.
                while p.lock().host.is_some() {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let Ok((mut s, _)) = l.accept() else { return };
                let mut st = p.lock();
                let stale = std::mem::take(&mut st.stale_for_host);
                let _ = s.write_all(&stale);
                st.host = Some(s);
            }
        });
        port
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PortState> {
        self.state.lock().expect("port lock")
    }

    fn host(&self) -> Option<UnixStream> {
        self.lock().host.as_ref().and_then(|s| s.try_clone().ok())
    }
}

impl Read for FakeVirtioPort {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(mut h) = self.host() else {
            return Ok(0); // no host: EOF, like virtio_console
        };
        let n = h.read(buf).unwrap_or(0);
        if n == 0 {
            self.lock().host = None;
        }
        Ok(n)
    }
}

impl Write for FakeVirtioPort {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        loop {
            if let Some(mut h) = self.host() {
                if let Ok(n) = h.write(buf) {
                    return Ok(n);
                }
                self.lock().host = None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    sock: PathBuf,
    port: FakeVirtioPort,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("agent.sock");
    let port = FakeVirtioPort::start(&sock);
    let (r, w) = (port.clone(), port.clone());
    tokio::spawn(banger_agent::guest_serial::serve_io(
        r,
        w,
        Arc::new(AgentConfig::harmless()),
    ));
    Setup {
        _dir: dir,
        sock,
        port,
    }
}

async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test timed out")
}

fn sh(script: &str) -> ExecRequest {
    ExecRequest::new(["sh", "-c", script])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_share_one_connection_and_run_concurrently() {
    let s = setup();
    bounded(async {
        let ch = SerialChannel::new(&s.sock);
        let hello = ch
            .wait_ready(Duration::from_secs(10), "t")
            .await
            .expect("ready");
        assert_eq!(hello.protocol_version, PROTOCOL_VERSION);
        let agent = AgentClient::new(banger_agent::AgentTarget::Serial(ch));
        agent.ping().await.expect("ping");
        // Four sessions at once, each moving 1 MiB through `cat`.
        let input: Vec<u8> = (0..1 << 20).map(|i| (i % 253) as u8).collect();
        let runs: Vec<_> = (0..4)
            .map(|_| {
                let (agent, input) = (agent.clone(), input.clone());
                tokio::spawn(
                    async move { agent.exec_capture(&ExecRequest::new(["cat"]), &input).await },
                )
            })
            .collect();
        for run in runs {
            let out = run.await.expect("join").expect("exec");
            assert!(out.status.success());
            assert_eq!(out.stdout.len(), input.len());
            assert!(out.stdout == input, "output differs from input");
        }
        let out = agent
            .exec_capture(&sh("echo out; echo err >&2; exit 3"), b"")
            .await
            .expect("exec");
        assert_eq!(out.status, ExitStatus::Exited { code: 3 });
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
    })
    .await;
    assert!(s.port.host().is_some(), "one connection, still open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_and_download_over_the_channel() {
    let s = setup();
    let target = tempfile::tempdir().expect("tempdir");
    bounded(async {
        let agent = AgentClient::serial(&s.sock);
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        let body = vec![7u8; 300_000];
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "dir/big.bin", &body[..])
            .expect("append");
        let tarball = b.into_inner().expect("tar");
        let dest = target.path().join("up");
        let sum = agent
            .upload_tar(&tarball[..], dest.to_str().expect("utf-8"))
            .await
            .expect("upload");
        assert_eq!(sum.entries, 1);
        assert_eq!(std::fs::read(dest.join("dir/big.bin")).expect("read"), body);
        let mut back = Vec::new();
        agent
            .download(dest.join("dir").to_str().expect("utf-8"))
            .await
            .expect("download")
            .read_to_end(&mut back)
            .await
            .expect("read");
        let mut a = tar::Archive::new(&back[..]);
        let names: Vec<String> = a
            .entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .display()
                    .to_string()
            })
            .collect();
        assert!(names.iter().any(|n| n == "dir/big.bin"), "{names:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_host_connection_resets_the_guest_and_stale_bytes_are_dropped() {
    let s = setup();
    bounded(async {
        let ch = SerialChannel::new(&s.sock);
        let agent = AgentClient::new(banger_agent::AgentTarget::Serial(ch.clone()));
        agent.ping().await.expect("first connection");
        // A session left running when the host goes away...
        let long = {
            let agent = agent.clone();
            tokio::spawn(async move { agent.exec_capture(&sh("sleep 30"), b"").await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        ch.disconnect().await;
        let err = long
            .await
            .expect("join")
            .expect_err("the session died with the link");
        eprintln!("old session: {err}");
        // ...and a guest restored in the middle of a frame: half a frame
        // waits for the next host, and half a frame from "the old host" is
        // what the guest reads first.
        let half = Frame::new(Kind::Data, 1, vec![1; 1000]).encode();
        s.port.lock().stale_for_host = half[..500].to_vec();
        {
            let mut raw = UnixStream::connect(&s.sock).expect("raw connect");
            raw.write_all(&half[..700]).expect("write half a frame");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let out = agent
            .exec_capture(&sh("echo again"), b"")
            .await
            .expect("exec after reconnecting");
        assert_eq!(out.stdout, b"again\n");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_hybrid_vsock_clients() {
    let s = setup();
    let gw_path = s._dir.path().join("v.sock");
    let ch = SerialChannel::new(&s.sock);
    let gw = Gateway::serve(ch.clone(), &gw_path).expect("gateway");
    bounded(async {
        let cli = AgentClient::hybrid(&gw_path);
        let out = cli
            .exec_capture(&ExecRequest::new(["cat"]), b"via the gateway")
            .await
            .expect("exec through the gateway");
        assert_eq!(out.stdout, b"via the gateway");
        // The daemon's own client shares the channel at the same time.
        AgentClient::new(banger_agent::AgentTarget::Serial(ch))
            .ping()
            .await
            .expect("ping");
        let e = banger_agent::connect_hybrid(&gw_path, 22, Duration::from_secs(5))
            .await
            .expect_err("only the agent port");
        assert!(e.to_string().contains("refused"), "{e}");
    })
    .await;
    drop(gw);
    assert!(!gw_path.exists(), "the gateway removes its socket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("agent.sock");
    let e = AgentClient::serial(&sock)
        .with_connect_timeout(Duration::from_secs(2))
        .ping()
        .await
        .expect_err("no VM");
    assert!(e.to_string().contains("is the VM running?"), "{e}");
    let e = SerialChannel::new(&sock)
        .wait_ready(Duration::from_millis(500), "gone")
        .await
        .expect_err("no VM");
    assert!(e.to_string().contains("banger vm logs gone"), "{e}");
}
