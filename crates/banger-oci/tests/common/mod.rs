//! Test fixtures: a real `docker-registry` on 127.0.0.1, OCI layouts and
//! tar layers built byte by byte (so hostile ones can be made), `skopeo`
//! to push them, and a debugfs walk of the resulting ext4.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub fn on_path(prog: &str) -> bool {
    banger_core::host::find_program(prog).is_some()
}

/// None when the test can run; else why not (printed as SKIP).
pub fn missing_prerequisites() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (CI and the dev machine run tests as root)".into());
    }
    for p in [
        "docker-registry",
        "skopeo",
        "mkfs.ext4",
        "debugfs",
        "e2fsck",
    ] {
        if !on_path(p) {
            return Some(format!(
                "{p} not installed (apt-get install -y docker-registry skopeo e2fsprogs busybox-static)"
            ));
        }
    }
    if !Path::new("/bin/busybox").is_file() {
        return Some("/bin/busybox missing (apt-get install -y busybox-static)".into());
    }
    None
}

#[macro_export]
macro_rules! require_prereqs {
    () => {
        if let Some(why) = common::missing_prerequisites() {
            eprintln!("SKIP: {why}");
            return;
        }
    };
}

/// A docker-registry process; killed by PID on drop.
pub struct Registry {
    child: Child,
    pub addr: String,
    pub storage: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).expect("storage");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                storage.display()
            ),
        )
        .expect("config");
        let log = dir.path().join("registry.log");
        let logf = std::fs::File::create(&log).expect("log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("dup"))
            .stderr(logf)
            .spawn()
            .expect("spawn docker-registry");
        let mut reg = Registry {
            child,
            addr,
            storage,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = reg.child.try_wait() {
                panic!("docker-registry exited ({st}): {}", reg.log_tail());
            }
            let ok = ureq::get(&format!("http://{}/v2/", reg.addr))
                .timeout(Duration::from_secs(2))
                .call()
                .is_ok();
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "registry not ready in 20 s: {}",
                reg.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        reg
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Push an OCI layout (`tag` in its index.json) as `<addr>/<name>:<tag>`.
    pub fn push(&self, layout: &Layout, tag: &str, name: &str, extra: &[&str]) -> String {
        let dst = format!("{}/{name}:{tag}", self.addr);
        let out = Command::new("skopeo")
            .args(["copy", "--insecure-policy", "--dest-tls-verify=false"])
            .args(extra)
            .arg(format!("oci:{}:{tag}", layout.dir.display()))
            .arg(format!("docker://{dst}"))
            .stdin(Stdio::null())
            .output()
            .expect("run skopeo");
        assert!(
            out.status.success(),
            "skopeo copy failed: {}\n{}\nregistry log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        dst
    }

    /// The registry's own copy of a blob.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256");
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Comp {
    None,
    Gzip,
    Zstd,
}

pub struct Layer {
    pub blob: Vec<u8>,
    pub diff_id: String,
    pub media_type: &'static str,
}

impl Layer {
    pub fn new(tar: Vec<u8>, comp: Comp) -> Layer {
        let diff_id = sha(&tar);
        let (blob, media_type) = match comp {
            Comp::None => (tar, "application/vnd.oci.image.layer.v1.tar"),
            Comp::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&tar).expect("gzip");
                (
                    e.finish().expect("gzip"),
                    "application/vnd.oci.image.layer.v1.tar+gzip",
                )
            }
            Comp::Zstd => (
                zstd::encode_all(&tar[..], 3).expect("zstd"),
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
        };
        Layer {
            blob,
            diff_id,
            media_type,
        }
    }
    pub fn digest(&self) -> String {
        sha(&self.blob)
    }
}

/// An OCI image layout directory (what `skopeo copy oci:` reads).
pub struct Layout {
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Layout {
    pub fn new() -> Layout {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("layout");
        std::fs::create_dir_all(dir.join("blobs/sha256")).expect("mkdir");
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("write");
        Layout { dir, _tmp: tmp }
    }

    pub fn blob(&self, media_type: &str, bytes: &[u8]) -> Value {
        let d = sha(bytes);
        let path = self.dir.join("blobs/sha256").join(&d[7..]);
        std::fs::write(path, bytes).expect("write blob");
        json!({"mediaType": media_type, "digest": d, "size": bytes.len()})
    }

    /// Write an image (config + manifest) and return the manifest descriptor.
    pub fn image(&self, layers: &[Layer], arch: &str, run_config: Value) -> Value {
        let config = json!({
            "architecture": arch,
            "os": "linux",
            "config": run_config,
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
        });
        let cdesc = self.blob(
            "application/vnd.oci.image.config.v1+json",
            &serde_json::to_vec(&config).expect("json"),
        );
        let ldescs: Vec<Value> = layers
            .iter()
            .map(|l| self.blob(l.media_type, &l.blob))
            .collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": cdesc,
            "layers": ldescs,
        });
        let mut d = self.blob(
            "application/vnd.oci.image.manifest.v1+json",
            &serde_json::to_vec(&manifest).expect("json"),
        );
        d["platform"] = json!({"architecture": arch, "os": "linux"});
        d
    }

    /// An image index over manifest descriptors; returns its descriptor.
    pub fn index(&self, manifests: Vec<Value>) -> Value {
        let idx = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        self.blob(
            "application/vnd.oci.image.index.v1+json",
            &serde_json::to_vec(&idx).expect("json"),
        )
    }

    /// Name `desc` as `tag` in index.json.
    pub fn tag(&self, mut desc: Value, tag: &str) {
        desc["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        if let Some(o) = desc.as_object_mut() {
            o.remove("platform");
        }
        let index = json!({"schemaVersion": 2, "manifests": [desc]});
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).expect("json"),
        )
        .expect("write index.json");
    }
}

/// One tar entry, written with raw headers so hostile names survive.
pub enum E<'a> {
    Dir(&'a str, u32, u32, u32),
    File(&'a str, &'a [u8], u32, u32, u32),
    Sym(&'a str, &'a str),
    /// Symlink with an owner.
    SymU(&'a str, &'a str, u32, u32),
    Link(&'a str, &'a str),
    Char(&'a str, u32, u32, u32),
    Fifo(&'a str, u32),
    XattrFile(&'a str, &'a [u8], &'a str, &'a [u8]),
    /// A file whose content is `n` zero bytes (streamed, not held).
    Zeros(&'a str, u64),
}

pub fn tar(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(1_700_000_000);
        let (path, ty, data, mode, uid, gid, link): (
            &str,
            tar::EntryType,
            &[u8],
            u32,
            u32,
            u32,
            Option<&str>,
        ) = match e {
            E::Dir(p, m, u, g) => (p, tar::EntryType::Directory, b"", *m, *u, *g, None),
            E::File(p, d, m, u, g) => (p, tar::EntryType::Regular, d, *m, *u, *g, None),
            E::Sym(p, t) => (p, tar::EntryType::Symlink, b"", 0o777, 0, 0, Some(t)),
            E::SymU(p, t, u, g) => (p, tar::EntryType::Symlink, b"", 0o777, *u, *g, Some(t)),
            E::Link(p, t) => (p, tar::EntryType::Link, b"", 0o644, 0, 0, Some(t)),
            E::Char(p, ma, mi, m) => {
                h.set_device_major(*ma).expect("major");
                h.set_device_minor(*mi).expect("minor");
                (p, tar::EntryType::Char, b"", *m, 0, 0, None)
            }
            E::Fifo(p, m) => (p, tar::EntryType::Fifo, b"", *m, 0, 0, None),
            E::XattrFile(p, d, name, value) => {
                let key = format!("SCHILY.xattr.{name}");
                b.append_pax_extensions([(key.as_str(), *value)])
                    .expect("pax");
                (p, tar::EntryType::Regular, d, 0o644, 0, 0, None)
            }
            E::Zeros(p, n) => {
                set_name(&mut h, p);
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(*n);
                h.set_mode(0o644);
                h.set_uid(0);
                h.set_gid(0);
                h.set_cksum();
                b.append(&h, std::io::repeat(0).take_n(*n)).expect("append");
                continue;
            }
        };
        set_name(&mut h, path);
        if let Some(l) = link {
            let bytes = l.as_bytes();
            h.as_old_mut().linkname[..bytes.len()].copy_from_slice(bytes);
        }
        h.set_entry_type(ty);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(uid as u64);
        h.set_gid(gid as u64);
        h.set_cksum();
        b.append(&h, data).expect("append");
    }
    b.into_inner().expect("finish tar")
}

trait TakeN: std::io::Read + Sized {
    fn take_n(self, n: u64) -> std::io::Take<Self> {
        std::io::Read::take(self, n)
    }
}
impl<R: std::io::Read> TakeN for R {}

fn set_name(h: &mut tar::Header, path: &str) {
    let bytes = path.as_bytes();
    assert!(bytes.len() < 100, "test paths are short");
    let old = h.as_old_mut();
    old.name = [0; 100];
    old.name[..bytes.len()].copy_from_slice(bytes);
}

/// Entry in the ext4 as debugfs sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub inode: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

pub fn debugfs(image: &Path, request: &str) -> String {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(request)
        .arg(image)
        .env("DEBUGFS_PAGER", "__none__")
        .output()
        .expect("run debugfs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every path in the image (but /lost+found) with its inode, mode, owner.
pub fn walk(image: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec!["/".to_string()];
    while let Some(dir) = stack.pop() {
        let listing = debugfs(image, &format!("ls -p \"{dir}\""));
        for line in listing.lines() {
            // /inode/mode/uid/gid/name/size/
            let f: Vec<&str> = line.split('/').collect();
            if f.len() < 7 || f[5] == "." || f[5] == ".." || f[5].is_empty() {
                continue;
            }
            let path = if dir == "/" {
                format!("/{}", f[5])
            } else {
                format!("{dir}/{}", f[5])
            };
            if path == "/lost+found" {
                continue;
            }
            let node = Node {
                inode: f[1].parse().expect("inode"),
                mode: u32::from_str_radix(f[2], 8).expect("mode"),
                uid: f[3].parse().expect("uid"),
                gid: f[4].parse().expect("gid"),
            };
            if node.mode & 0o170000 == 0o040000 {
                stack.push(path.clone());
            }
            out.insert(path, node);
        }
    }
    out
}

/// How [`AuthProxy`] guards the registry behind it.
#[derive(Clone, Debug)]
pub enum Guard {
    /// `401 WWW-Authenticate: Basic`; needs `Basic base64(user:pass)`.
    Basic { user: String, pass: String },
    /// `401 WWW-Authenticate: Bearer realm=<proxy>/token…`; the token
    /// endpoint wants basic credentials when `creds` is set, else serves
    /// anyone (Docker Hub's anonymous pulls).
    Bearer { creds: Option<(String, String)> },
    /// `401 WWW-Authenticate: Bearer realm=<realm>`: a token server
    /// elsewhere (never contacted by a correct client when it is plain
    /// http off loopback).
    BearerAt { realm: String },
    /// No auth; responses trickle out at about 2 MiB/s (to kill a client
    /// mid-download).
    Slow,
}

/// A named fake: an auth front (token server + reverse proxy) on
/// 127.0.0.1 in front of the real registry, which has no auth of its own.
pub struct AuthProxy {
    pub addr: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Authorization headers the token endpoint saw.
    pub token_requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const TOKEN: &str = "tok-0123456789";

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

impl AuthProxy {
    pub fn start(upstream: &str, guard: Guard) -> AuthProxy {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let token_requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, t, up, a) = (
            stop.clone(),
            token_requests.clone(),
            upstream.to_string(),
            addr.clone(),
        );
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (g, t, up, a) = (guard.clone(), t.clone(), up.clone(), a.clone());
                        std::thread::spawn(move || {
                            let _ = serve(conn, &g, &t, &up, &a);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        AuthProxy {
            addr,
            stop,
            token_requests,
            thread: Some(thread),
        }
    }
}

impl Drop for AuthProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    mut conn: std::net::TcpStream,
    guard: &Guard,
    tokens: &std::sync::Mutex<Vec<String>>,
    upstream: &str,
    me: &str,
) -> std::io::Result<()> {
    use std::io::{BufRead, BufReader, Read};
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        reader.read_line(&mut l)?;
        if l.trim().is_empty() {
            break;
        }
        headers.push(l.trim().to_string());
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    let header = |name: &str| {
        headers.iter().find_map(|h| {
            let (k, v) = h.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let auth = header("authorization").unwrap_or_default();
    let reply = |conn: &mut std::net::TcpStream, status: &str, extra: &str, body: &str| {
        write!(
            conn,
            "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    if path.starts_with("/token") {
        tokens.lock().expect("lock").push(auth.clone());
        let ok = match guard {
            Guard::Bearer {
                creds: Some((u, p)),
            } => auth == basic(u, p),
            _ => true,
        };
        return if ok {
            reply(
                &mut conn,
                "200 OK",
                "Content-Type: application/json\r\n",
                &format!("{{\"token\":\"{TOKEN}\"}}"),
            )
        } else {
            reply(&mut conn, "401 Unauthorized", "", "")
        };
    }
    let (ok, challenge) = match guard {
        Guard::Slow => (true, String::new()),
        Guard::Basic { user, pass } => (
            auth == basic(user, pass),
            "Basic realm=\"test\"".to_string(),
        ),
        Guard::Bearer { .. } => (
            auth == format!("Bearer {TOKEN}"),
            format!(
                "Bearer realm=\"http://{me}/token\",service=\"test-registry\",scope=\"repository:x:pull\""
            ),
        ),
        Guard::BearerAt { realm } => (
            false,
            format!("Bearer realm=\"{realm}\",service=\"test-registry\""),
        ),
    };
    if !ok {
        return reply(
            &mut conn,
            "401 Unauthorized",
            &format!("WWW-Authenticate: {challenge}\r\n"),
            "",
        );
    }
    let mut up = std::net::TcpStream::connect(upstream)?;
    write!(
        up,
        "GET {path} HTTP/1.1\r\nHost: {upstream}\r\nConnection: close\r\n"
    )?;
    if let Some(a) = header("accept") {
        write!(up, "Accept: {a}\r\n")?;
    }
    write!(up, "\r\n")?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp)?;
    if matches!(guard, Guard::Slow) {
        for chunk in resp.chunks(64 * 1024) {
            conn.write_all(chunk)?;
            std::thread::sleep(Duration::from_millis(30));
        }
        return Ok(());
    }
    conn.write_all(&resp)
}
