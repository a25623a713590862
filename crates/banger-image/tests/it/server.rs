//! A small static HTTP/1.1 file server on 127.0.0.1 for tests and the
//! bench: GET with `Range: bytes=N-`, one request per connection, and a
//! fault switch that drops the connection mid-body (written on std's
//! TcpListener rather than a framework so a test can cut the body at an
//! exact byte and close the socket).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub path: String,
    pub range_start: Option<u64>,
    pub status: u16,
}

#[derive(Default)]
struct Shared {
    /// path → drop the connection after this many body bytes (once).
    drop_once: HashMap<String, u64>,
    log: Vec<Logged>,
}

pub struct FileServer {
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FileServer {
    pub fn start(root: PathBuf) -> FileServer {
        Self::start_on(root, 0)
    }

    pub fn start_on(root: PathBuf, port: u16) -> FileServer {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, stop2) = (shared.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (root, shared) = (root.clone(), s2.clone());
                std::thread::spawn(move || {
                    let _ = handle(conn, &root, &shared);
                });
            }
        });
        FileServer {
            addr,
            shared,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self, dir: &str) -> String {
        format!("http://{}/{}", self.addr, dir)
    }

    /// The next GET of `path` is cut after `after` body bytes.
    pub fn drop_once(&self, path: &str, after: u64) {
        self.shared
            .lock()
            .expect("lock")
            .drop_once
            .insert(path.to_string(), after);
    }

    pub fn log(&self) -> Vec<Logged> {
        self.shared.lock().expect("lock").log.clone()
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn handle(conn: TcpStream, root: &Path, shared: &Mutex<Shared>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut first = String::new();
    reader.read_line(&mut first)?;
    let mut range_start = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.trim().eq_ignore_ascii_case("range")
        {
            range_start = v
                .trim()
                .strip_prefix("bytes=")
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|n| n.parse::<u64>().ok());
        }
    }
    let mut parts = first.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let rel = target.trim_start_matches('/').to_string();
    let mut out = conn;
    let mut respond = |status: u16, reason: &str, headers: &[(String, String)], body: &[u8]| {
        let mut head = format!("HTTP/1.1 {status} {reason}\r\nConnection: close\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        out.write_all(head.as_bytes())?;
        out.write_all(body)?;
        out.flush()
    };
    let safe = Path::new(&rel)
        .components()
        .all(|c| matches!(c, Component::Normal(_)));
    let log = |status| {
        shared.lock().expect("lock").log.push(Logged {
            path: rel.clone(),
            range_start,
            status,
        })
    };
    if method != "GET" || !safe || rel.is_empty() {
        log(400);
        return respond(
            400,
            "Bad Request",
            &[("Content-Length".into(), "0".into())],
            b"",
        );
    }
    let data = match std::fs::read(root.join(&rel)) {
        Ok(d) => d,
        Err(_) => {
            log(404);
            return respond(
                404,
                "Not Found",
                &[("Content-Length".into(), "0".into())],
                b"",
            );
        }
    };
    let len = data.len() as u64;
    let (status, start) = match range_start {
        Some(s) if s >= len => {
            log(416);
            return respond(
                416,
                "Range Not Satisfiable",
                &[
                    ("Content-Length".into(), "0".into()),
                    ("Content-Range".into(), format!("bytes */{len}")),
                ],
                b"",
            );
        }
        Some(s) => (206u16, s),
        None => (200u16, 0),
    };
    log(status);
    let body = &data[start as usize..];
    let mut headers = vec![("Content-Length".to_string(), body.len().to_string())];
    if status == 206 {
        headers.push((
            "Content-Range".into(),
            format!("bytes {start}-{}/{len}", len - 1),
        ));
    }
    let cut = shared.lock().expect("lock").drop_once.remove(&rel);
    let reason = if status == 206 {
        "Partial Content"
    } else {
        "OK"
    };
    match cut {
        Some(after) => {
            let n = (after as usize).min(body.len());
            respond(status, reason, &headers, &body[..n])?;
            // Close without sending the rest: the client sees a short body.
            let _ = reader.get_ref().shutdown(std::net::Shutdown::Both);
            Ok(())
        }
        None => respond(status, reason, &headers, body),
    }
}

/// Read everything a URL serves (for tests that check the server itself).
pub fn get(addr: SocketAddr, path: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(s, "GET /{path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let mut v = Vec::new();
    s.read_to_end(&mut v).expect("read");
    v
}
