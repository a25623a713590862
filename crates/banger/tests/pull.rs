//! Black-box `banger image pull / keygen / bundle` against a real `bangerd`
//! whose config names a catalog file, and a real HTTP server on 127.0.0.1
//! serving bundles: unknown and invalid names give clear errors; a
//! catalog bundle pulls and registers; a bundle made with `image bundle`
//! from a `keygen` key pulls back as the same image.

mod common;

#[path = "../../banger-image/tests/it/server.rs"]
mod server;

use std::path::Path;
use std::process::Command;

use banger_image::{ext4, store};
use common::Daemon;
use server::FileServer;

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("run banger");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn skip() -> bool {
    for t in ["mkfs.ext4", "debugfs", "e2fsck"] {
        if Command::new(t).arg("-V").output().is_err() {
            eprintln!("SKIP: {t} is not installed (apt-get install e2fsprogs)");
            return true;
        }
    }
    false
}

/// Installs a small image and a kernel-shaped file into a scratch store
/// under `dir` and returns their records.
fn scratch_image(dir: &Path) -> (store::ImageRecord, banger_image::kernel::KernelRecord) {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("etc")).expect("mkdir");
    std::fs::write(tree.join("etc/hostname"), "cli\n").expect("write");
    let rootfs = dir.join("rootfs.ext4");
    ext4::make_ext4(&tree, &rootfs, 16 << 20, &ext4::Ext4Fixups::new()).expect("mkfs");
    let mut vmlinuz = vec![0u8; 4096];
    vmlinuz[0x1fe] = 0x55;
    vmlinuz[0x1ff] = 0xaa;
    vmlinuz[0x202..0x206].copy_from_slice(b"HdrS");
    std::fs::write(dir.join("vmlinuz"), &vmlinuz).expect("write");
    let k = store::install_kernel(
        &dir.join("kernels"),
        "cli-kernel",
        "6.1.0-test",
        &dir.join("vmlinuz"),
        None,
    )
    .expect("kernel");
    let img = store::install_image(
        &dir.join("images"),
        &rootfs,
        store::ImageManifest {
            name: "cli-image".into(),
            version: "1".into(),
            arch: "x86_64".into(),
            sha256: String::new(),
            size: ext4::FileSize {
                apparent: 0,
                allocated: 0,
            },
            kernel: k.name.clone(),
            boot_args: banger_image::kernel::DEFAULT_FIRECRACKER_BOOT_ARGS.into(),
            source: "test".into(),
            created: 0,
        },
    )
    .expect("image");
    (img, k)
}

fn catalog_entry(name: &str, url: &str, pin: &str, key: &str) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "url": url,
        "manifest_sha256": pin,
        "public_key": key,
    })
}

#[test]
fn pull_with_a_bad_name_says_what_is_wrong() {
    let d = Daemon::prepare().start();
    // the embedded catalog has no such entry
    let (code, _, err) = run(d.cli().args(["image", "pull", "no-such-image"]));
    assert_ne!(code, 0);
    assert!(
        err.contains("no image named \"no-such-image\" in the catalog"),
        "{err}"
    );
    assert!(err.contains("banger image build"), "says what to do: {err}");
    // an invalid store name
    let (code, _, err) = run(d.cli().args(["image", "pull", "Bad Name!"]));
    assert_ne!(code, 0);
    assert!(err.to_lowercase().contains("name"), "{err}");
    let (_, out, _) = run(d.cli().args(["image", "list", "--json"]));
    assert_eq!(out.trim(), "[]", "nothing registered");
}

#[test]
fn keygen_bundle_and_pull_round_trip() {
    if skip() {
        return;
    }
    let work = tempfile::tempdir().expect("tmp");
    let (img, k) = scratch_image(&work.path().join("scratch"));
    let served = work.path().join("served");
    std::fs::create_dir_all(&served).expect("mkdir");

    // keygen: secret 0600, public key printed and written
    let (secret, public) = (work.path().join("sign.key"), work.path().join("sign.pub"));
    let (code, out, err) = run(common::banger()
        .args(["image", "keygen"])
        .arg(&secret)
        .arg(&public));
    assert_eq!(code, 0, "{err}");
    let pubkey = std::fs::read_to_string(&public)
        .expect("public key")
        .trim()
        .to_string();
    assert!(out.contains(&pubkey), "{out}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&secret)
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let (code, _, err) = run(common::banger()
        .args(["image", "keygen"])
        .arg(&secret)
        .arg(&public));
    assert_ne!(code, 0, "keygen never overwrites a secret key");
    assert!(err.contains(&secret.display().to_string()), "{err}");

    // a first bundle, made with the library, pulled by catalog name
    let key = banger_image::bundle::load_signing_key(&secret).expect("key");
    let b1 = banger_image::bundle::bundle(&img, &k, &key, &served.join("one")).expect("bundle");
    let srv = FileServer::start(served.clone());
    let catalog = work.path().join("catalog.json");
    let write_catalog = |entries: Vec<serde_json::Value>| {
        std::fs::write(
            &catalog,
            serde_json::to_vec(&serde_json::json!({"format": 1, "entries": entries}))
                .expect("json"),
        )
        .expect("write catalog");
    };
    write_catalog(vec![catalog_entry(
        "cli-image",
        &srv.url("one"),
        &b1.manifest_sha256,
        &b1.public_key,
    )]);
    let d = Daemon::prepare();
    std::fs::write(
        d.root().join("config.toml"),
        format!("catalog_file = {:?}\n", catalog.display().to_string()),
    )
    .expect("config");
    let d = d.start();
    let (code, out, err) = run(d.cli().args(["image", "pull", "cli-image"]));
    assert_eq!(code, 0, "pull failed: {err}\ndaemon log:\n{}", d.log());
    assert!(out.contains("pulled image cli-image"), "{out}");
    // not a terminal: plain progress lines
    assert!(err.contains("download rootfs.ext4"), "{err}");
    let (_, list, _) = run(d.cli().args(["image", "list", "--json"]));
    let list: serde_json::Value = serde_json::from_str(&list).expect("json");
    assert_eq!(list[0]["name"], "cli-image");
    assert_eq!(list[0]["kernel"], "cli-kernel");
    assert_eq!(list[0]["digest"], format!("sha256:{}", img.manifest.sha256));

    // `image bundle` in the daemon, from the pulled image, then pulled back
    // under another name through a second catalog entry
    let out_dir = served.join("two");
    let (code, out, err) = run(d
        .cli()
        .args(["image", "bundle", "cli-image", "--key"])
        .arg(&secret)
        .arg("--out")
        .arg(&out_dir));
    assert_eq!(code, 0, "bundle failed: {err}\ndaemon log:\n{}", d.log());
    assert!(out_dir.join("manifest.json").is_file());
    assert!(
        out.contains(&pubkey),
        "the catalog entry carries the key: {out}"
    );
    let pin = banger_image::bundle::sha256_hex(
        &std::fs::read(out_dir.join("manifest.json")).expect("manifest"),
    );
    assert!(
        out.contains(&pin),
        "the catalog entry carries the pin: {out}"
    );
    let (code, _, err) = run(d
        .cli()
        .args(["image", "bundle", "cli-image", "--key"])
        .arg(&secret)
        .arg("--out")
        .arg(&out_dir));
    assert_ne!(code, 0);
    assert!(err.contains("already exists"), "{err}");

    write_catalog(vec![catalog_entry("again", &srv.url("two"), &pin, &pubkey)]);
    let (code, out, err) = run(d.cli().args(["image", "pull", "again"]));
    assert_eq!(code, 0, "pull failed: {err}\ndaemon log:\n{}", d.log());
    assert!(out.contains("pulled image again"), "{out}");
    let (_, show, _) = run(d.cli().args(["image", "show", "again", "--json"]));
    let show: serde_json::Value = serde_json::from_str(&show).expect("json");
    assert_eq!(show["digest"], format!("sha256:{}", img.manifest.sha256));
}

/// Serves files from `root` like [`FileServer`], except that the body of
/// `rootfs.ext4.zst` stops after half and the connection then hangs (up to
/// 30 s): a pull that is certainly in the middle of its download.
fn stalling_server(root: std::path::PathBuf) -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let root = root.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut first = String::new();
                let _ = reader.read_line(&mut first);
                loop {
                    let mut l = String::new();
                    if reader.read_line(&mut l).unwrap_or(0) == 0 || l.trim().is_empty() {
                        break;
                    }
                }
                let path = first.split_whitespace().nth(1).unwrap_or("/");
                let rel = path.trim_start_matches('/');
                let mut out = conn;
                let Ok(body) = std::fs::read(root.join(rel)) else {
                    let _ = out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                    return;
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = out.write_all(head.as_bytes());
                if rel.ends_with("rootfs.ext4.zst") {
                    let _ = out.write_all(&body[..body.len() / 2]);
                    let _ = out.flush();
                    std::thread::sleep(std::time::Duration::from_secs(30));
                } else {
                    let _ = out.write_all(&body);
                }
            });
        }
    });
    addr
}

#[test]
fn kill_9_mid_pull_leaves_no_image_and_the_next_pull_resumes() {
    use std::time::{Duration, Instant};
    if skip() {
        return;
    }
    let work = tempfile::tempdir().expect("tmp");
    let (img, k) = scratch_image(&work.path().join("scratch"));
    let served = work.path().join("served");
    std::fs::create_dir_all(&served).expect("mkdir");
    let (secret, public) = (work.path().join("k"), work.path().join("k.pub"));
    banger_image::bundle::generate_key(&secret, &public).expect("keygen");
    let key = banger_image::bundle::load_signing_key(&secret).expect("key");
    let b = banger_image::bundle::bundle(&img, &k, &key, &served.join("b")).expect("bundle");
    let catalog = work.path().join("catalog.json");
    let write_catalog = |url: &str| {
        let c = serde_json::json!({"format": 1, "entries": [
            catalog_entry("cli-image", url, &b.manifest_sha256, &b.public_key)
        ]});
        std::fs::write(&catalog, serde_json::to_vec(&c).expect("json")).expect("write");
    };
    write_catalog(&format!("http://{}/b", stalling_server(served.clone())));
    let d = Daemon::prepare();
    std::fs::write(
        d.root().join("config.toml"),
        format!("catalog_file = {:?}\n", catalog.display().to_string()),
    )
    .expect("config");
    let d = d.start();
    let downloads = d.root().join("cache/downloads");
    let mut cli = d
        .cli()
        .args(["image", "pull", "cli-image"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn banger");
    // wait until the rootfs download is under way
    let deadline = Instant::now() + Duration::from_secs(20);
    let part = loop {
        let found = std::fs::read_dir(&downloads).ok().and_then(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .find(|p| p.to_string_lossy().ends_with(".zst.part"))
        });
        if let Some(p) = found
            && std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0) > 0
        {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "the pull never started downloading; daemon log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let pid = d.pid() as i32;
    // SAFETY: signalling and reaping our own child by its pid.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = cli.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = cli.kill();
            panic!("banger image pull did not notice the daemon died");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "a pull whose daemon died fails");

    // no image, no kernel, no temp dirs; only the resumable .part
    let state = d.state_dir();
    for dir in [state.join("images"), state.join("kernels")] {
        let left: Vec<_> = std::fs::read_dir(&dir)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{} has {left:?}", dir.display());
    }
    let half = std::fs::metadata(&part).expect("part kept").len();

    // restarted against a healthy server, the pull resumes and registers
    let srv = FileServer::start(served.clone());
    write_catalog(&srv.url("b"));
    let d = d.start();
    let (_, list, _) = run(d.cli().args(["image", "list", "--json"]));
    assert_eq!(list.trim(), "[]", "nothing registered by the killed pull");
    let (code, out, err) = run(d.cli().args(["image", "pull", "cli-image"]));
    assert_eq!(code, 0, "pull failed: {err}\ndaemon log:\n{}", d.log());
    assert!(out.contains("pulled image cli-image"), "{out}");
    let resumed = srv
        .log()
        .iter()
        .any(|l| l.path.ends_with("rootfs.ext4.zst") && l.range_start == Some(half));
    assert!(resumed, "resumed from byte {half}: {:?}", srv.log());
    assert!(!part.exists(), "the .part is removed once installed");
}

#[test]
fn vm_run_with_a_missing_image_tries_the_catalog_and_says_why_not() {
    let d = Daemon::prepare().start();
    let (code, _, err) = run(d
        .cli()
        .args(["vm", "run", "--image", "not-here", "--", "true"])
        .env("HOME", d.root()));
    assert_ne!(code, 0);
    assert!(err.contains("pulling the signed catalog bundle"), "{err}");
    assert!(
        err.contains("no image named \"not-here\" here, and the catalog cannot supply it"),
        "{err}"
    );
    let (_, out, _) = run(d.cli().args(["vm", "list", "--json"]));
    assert_eq!(out.trim(), "[]", "no VM created");
}
