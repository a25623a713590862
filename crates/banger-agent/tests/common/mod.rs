//! Shared helpers for the agent's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use banger_agent::server::{AgentConfig, serve_connection};
use banger_agent::{AgentClient, AgentTarget};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixListener;

/// Upper bound for any single test body: a hang fails instead of blocking CI.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// An agent served in-process on a Unix socket in a fresh temp dir.
pub struct InProcAgent {
    pub dir: tempfile::TempDir,
    pub sock: PathBuf,
    pub client: AgentClient,
}

pub fn serve_in_process() -> InProcAgent {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("agent.sock");
    let l = UnixListener::bind(&sock).expect("bind agent socket");
    tokio::spawn(async move {
        let cfg = Arc::new(AgentConfig::harmless());
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(serve_connection(s, cfg.clone()));
        }
    });
    let client = AgentClient::new(AgentTarget::Unix(sock.clone()));
    InProcAgent { dir, sock, client }
}

/// Produces `len` bytes of a known pattern without holding them in memory.
pub struct PatternReader {
    pub pos: u64,
    pub len: u64,
}

pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

impl AsyncRead for PatternReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = (buf.remaining() as u64).min(self.len - self.pos) as usize;
        let start = self.pos;
        let chunk: Vec<u8> = (0..n as u64).map(|i| pattern_byte(start + i)).collect();
        buf.put_slice(&chunk);
        self.pos += n as u64;
        Poll::Ready(Ok(()))
    }
}

/// Checks that what is written is the pattern, counting bytes.
#[derive(Default)]
pub struct PatternChecker {
    pub pos: u64,
    pub mismatches: u64,
}

impl AsyncWrite for PatternChecker {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        for &b in buf {
            if b != pattern_byte(self.pos) {
                self.mismatches += 1;
            }
            self.pos += 1;
        }
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Appends one raw tar entry: the name and link bytes are written verbatim
/// (the tar crate refuses to build hostile names itself).
pub fn raw_entry(out: &mut Vec<u8>, name: &[u8], kind: tar::EntryType, link: &[u8], data: &[u8]) {
    let mut h = tar::Header::new_old();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
        old.linkname[..link.len()].copy_from_slice(link);
    }
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    let pad = (512 - data.len() % 512) % 512;
    out.extend(std::iter::repeat_n(0u8, pad));
}

pub fn raw_finish(out: &mut Vec<u8>) {
    out.extend(std::iter::repeat_n(0u8, 1024));
}

/// All paths under `dir`, relative, sorted.
pub fn list_tree(dir: &Path) -> Vec<PathBuf> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).expect("under base").to_path_buf());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
