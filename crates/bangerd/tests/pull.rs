//! `image pull` in the daemon, in-process, against a real signed bundle
//! served over HTTP on 127.0.0.1: a good bundle registers image and kernel;
//! a tampered, missing or unreachable one registers nothing and leaves no
//! temp or partial files; the NDJSON stream of `POST /v1/images/pull` ends
//! with the image; leftovers of a killed pull are removed at start.

#[path = "../../banger-image/tests/it/server.rs"]
mod server;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use banger_core::config::AnchoredPath;
use banger_core::{Config, Paths};
use banger_image::{bundle, ext4, store};
use banger_proto::{PullEvent, PullImageRequest, PullProgress};
use bangerd::{Daemon, Options};
use server::FileServer;

fn skip() -> bool {
    for t in ["mkfs.ext4", "debugfs", "e2fsck"] {
        if Command::new(t).arg("-V").output().is_err() {
            eprintln!("SKIP: {t} is not installed (apt-get install e2fsprogs)");
            return true;
        }
    }
    false
}

/// A signed bundle of a small ext4 image and a kernel-shaped file, in
/// `<served>/b`, plus its catalog entry's pin and key.
struct Bundle {
    _tmp: tempfile::TempDir,
    served: PathBuf,
    pin: String,
    public_key: String,
    rootfs_sha256: String,
}

fn make_bundle() -> Bundle {
    let tmp = tempfile::tempdir().expect("tmp");
    let work = tmp.path().join("work");
    let tree = work.join("tree");
    std::fs::create_dir_all(tree.join("etc")).expect("mkdir");
    std::fs::write(tree.join("etc/hostname"), "pulled\n").expect("write");
    // incompressible bytes so the download takes several reads
    let noise: Vec<u8> = (0..400_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(tree.join("noise.bin"), noise).expect("write");
    let rootfs = work.join("rootfs.ext4");
    ext4::make_ext4(&tree, &rootfs, 16 << 20, &ext4::Ext4Fixups::new()).expect("mkfs");
    let rootfs_sha256 = store::sha256_file(&rootfs).expect("hash");
    // A bzImage-shaped file (setup header, no decodable payload): the store
    // keeps it as vmlinuz without a vmlinux, as for a kernel QEMU boots.
    let mut vmlinuz = vec![0u8; 8192];
    vmlinuz[0x1f1] = 3;
    vmlinuz[0x1fe] = 0x55;
    vmlinuz[0x1ff] = 0xaa;
    vmlinuz[0x202..0x206].copy_from_slice(b"HdrS");
    vmlinuz[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    std::fs::write(work.join("vmlinuz"), &vmlinuz).expect("write");
    std::fs::write(work.join("initrd.img"), b"test initrd").expect("write");

    let src = tmp.path().join("src");
    let k = store::install_kernel(
        &src.join("kernels"),
        "pull-kernel-1",
        "6.1.0-test",
        &work.join("vmlinuz"),
        Some(&work.join("initrd.img")),
    )
    .expect("install kernel");
    let img = store::install_image(
        &src.join("images"),
        &rootfs,
        store::ImageManifest {
            name: "test-image".into(),
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
    .expect("install image");
    let (secret, public) = (tmp.path().join("key"), tmp.path().join("key.pub"));
    bundle::generate_key(&secret, &public).expect("keygen");
    let key = bundle::load_signing_key(&secret).expect("load key");
    let served = tmp.path().join("served");
    std::fs::create_dir_all(&served).expect("mkdir");
    let out = bundle::bundle(&img, &k, &key, &served.join("b")).expect("bundle");
    Bundle {
        _tmp: tmp,
        served,
        pin: out.manifest_sha256,
        public_key: out.public_key,
        rootfs_sha256,
    }
}

/// A daemon on a fresh state dir whose config names a catalog file with one
/// entry, `test-image`, at `url`.
fn daemon(dir: &Path, b: &Bundle, url: &str) -> Arc<Daemon> {
    let catalog = dir.join("catalog.json");
    std::fs::write(
        &catalog,
        serde_json::to_vec_pretty(&serde_json::json!({
            "format": 1,
            "entries": [{
                "name": "test-image",
                "description": "test",
                "url": url,
                "manifest_sha256": b.pin,
                "public_key": b.public_key,
            }]
        }))
        .expect("json"),
    )
    .expect("write catalog");
    let config = Config {
        catalog_file: Some(AnchoredPath(catalog.display().to_string())),
        ..Config::default()
    };
    let opts = Options {
        no_network: true,
        dns_listen: None,
    };
    Arc::new(Daemon::open(Paths::under(&dir.join("d")), config, &opts).expect("open daemon"))
}

fn req(name: &str) -> PullImageRequest {
    PullImageRequest {
        name: name.into(),
        catalog: None,
        local_name: None,
    }
}

/// Everything under `dir`, recursively.
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            out.push(e.path().display().to_string());
            if e.path().is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Nothing registered, nothing in the store dirs, no `.part` downloads.
fn assert_nothing_left(d: &Daemon) {
    assert!(d.store.list_images().expect("list").is_empty());
    assert!(d.store.list_kernels().expect("list").is_empty());
    for dir in [
        d.paths.images_dir(),
        d.paths.kernels_dir(),
        d.paths.downloads_dir(),
    ] {
        let l = listing(&dir);
        assert!(l.is_empty(), "{} should be empty: {l:?}", dir.display());
    }
}

#[test]
fn pull_registers_image_and_kernel_and_streams_progress() {
    if skip() {
        return;
    }
    let b = make_bundle();
    let srv = FileServer::start(b.served.clone());
    let tmp = tempfile::tempdir().expect("tmp");
    let d = daemon(tmp.path(), &b, &srv.url("b"));

    let mut events: Vec<PullProgress> = Vec::new();
    let (img, k) = d
        .pull_catalog_image(&req("test-image"), &mut |p| events.push(p))
        .map_err(|f| f.err.message)
        .expect("pull");
    assert_eq!(img.name, "test-image");
    assert_eq!(img.digest, format!("sha256:{}", b.rootfs_sha256));
    assert_eq!(img.kernel, "pull-kernel-1");
    assert!(
        img.origin.starts_with("bundle http://127.0.0.1:"),
        "{}",
        img.origin
    );
    assert_eq!(k.name, "pull-kernel-1");
    assert!(!k.has_vmlinux, "the test kernel has no extractable vmlinux");
    // registered, and the files are where the rows say
    assert_eq!(d.store.get_image("test-image").expect("row").dir, img.dir);
    assert_eq!(d.store.get_kernel("pull-kernel-1").expect("row").dir, k.dir);
    let rootfs = Path::new(&img.dir).join("rootfs.ext4");
    assert_eq!(store::sha256_file(&rootfs).expect("hash"), b.rootfs_sha256);
    ext4::fsck(&rootfs).expect("pulled image passes e2fsck");
    assert!(Path::new(&k.dir).join("vmlinuz").is_file());
    assert!(Path::new(&k.dir).join("initrd.img").is_file());
    // progress: downloads rise to the bundle total; then decompress/install
    let dl: Vec<&PullProgress> = events.iter().filter(|p| p.phase == "download").collect();
    assert!(!dl.is_empty(), "download progress reported: {events:?}");
    assert!(
        dl.windows(2).all(|w| w[0].done <= w[1].done),
        "monotonic: {dl:?}"
    );
    let total = dl[0].total;
    assert!(
        dl.iter().any(|p| p.done == total),
        "reaches the total: {dl:?}"
    );
    assert!(events.iter().any(|p| p.phase == "install"));
    // compressed downloads are removed once installed
    assert!(listing(&d.paths.downloads_dir()).is_empty());

    // the same name again is a conflict, not an overwrite
    let again = d
        .pull_catalog_image(&req("test-image"), &mut |_| {})
        .expect_err("duplicate");
    assert!(
        again.err.message.contains("already exists"),
        "{}",
        again.err.message
    );

    // over the API: NDJSON progress lines, then the image
    let body = serde_json::to_vec(&PullImageRequest {
        local_name: Some("second".into()),
        ..req("test-image")
    })
    .expect("json");
    let lines = post_stream(&d, "/v1/images/pull", body);
    let events: Vec<PullEvent> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is a PullEvent"))
        .collect();
    assert!(
        matches!(events.first(), Some(PullEvent::Progress(_))),
        "{lines}"
    );
    match events.last() {
        Some(PullEvent::Done { image }) => {
            assert_eq!(image.name, "second");
            assert_eq!(image.digest, img.digest);
        }
        other => panic!("last event should be the image, got {other:?}\n{lines}"),
    }
    assert_eq!(d.store.list_images().expect("list").len(), 2);
    assert_eq!(
        d.store.list_kernels().expect("list").len(),
        1,
        "kernel shared"
    );
}

#[test]
fn a_tampered_byte_registers_nothing_and_leaves_nothing() {
    if skip() {
        return;
    }
    let b = make_bundle();
    let rootfs_zst = b.served.join("b/rootfs.ext4.zst");
    let mut bytes = std::fs::read(&rootfs_zst).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&rootfs_zst, bytes).expect("write");
    let srv = FileServer::start(b.served.clone());
    let tmp = tempfile::tempdir().expect("tmp");
    let d = daemon(tmp.path(), &b, &srv.url("b"));
    let f = d
        .pull_catalog_image(&req("test-image"), &mut |_| {})
        .expect_err("a tampered bundle must be refused");
    assert!(!f.unavailable, "tampering is a refusal, not 'unavailable'");
    assert!(
        f.err.message.contains("corrupt or tampered"),
        "{}",
        f.err.message
    );
    assert_nothing_left(&d);

    // a changed manifest fails the pin before anything is downloaded
    let m = b.served.join("b/manifest.json");
    let text = std::fs::read_to_string(&m).expect("read");
    std::fs::write(&m, text.replacen("\"1\"", "\"2\"", 1)).expect("write");
    let f = d
        .pull_catalog_image(&req("test-image"), &mut |_| {})
        .expect_err("pin mismatch");
    assert!(f.err.message.contains("pins"), "{}", f.err.message);
    assert_nothing_left(&d);
}

#[test]
fn missing_or_unreachable_bundles_are_unavailable_and_leave_nothing() {
    if skip() {
        return;
    }
    let b = make_bundle();
    // a port that was just free: connection refused
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let tmp = tempfile::tempdir().expect("tmp");
    let d = daemon(tmp.path(), &b, &format!("http://127.0.0.1:{port}/b"));
    let f = d
        .pull_catalog_image(&req("test-image"), &mut |_| {})
        .expect_err("unreachable");
    assert!(f.unavailable, "{}", f.err.message);
    assert_nothing_left(&d);

    let f = d
        .pull_catalog_image(&req("no-such-image"), &mut |_| {})
        .expect_err("not in catalog");
    assert!(f.unavailable);
    assert!(
        f.err.message.contains("in the catalog"),
        "{}",
        f.err.message
    );

    let f = d
        .pull_catalog_image(&req("library/python:3.12"), &mut |_| {})
        .expect_err("OCI reference");
    assert!(!f.unavailable);
    assert!(f.err.message.contains("OCI reference"), "{}", f.err.message);
    assert_nothing_left(&d);
}

#[test]
fn start_removes_what_a_killed_pull_left() {
    let tmp = tempfile::tempdir().expect("tmp");
    let paths = Paths::under(tmp.path());
    let leftovers = [
        paths.images_dir().join(".tmp-banger-abc"),
        paths.kernels_dir().join(".tmp-banger-def"),
        paths.downloads_dir().join(".tmp-banger-ghi"),
    ];
    for l in &leftovers {
        std::fs::create_dir_all(l).expect("mkdir");
        std::fs::write(l.join("rootfs.ext4"), b"half").expect("write");
    }
    // a resumable download is kept for the next pull of the same file
    let part = paths.downloads_dir().join("00ff.zst.part");
    std::fs::write(&part, b"partial").expect("write");
    let opts = Options {
        no_network: true,
        dns_listen: None,
    };
    let _d = Daemon::open(paths.clone(), Config::default(), &opts).expect("open");
    for l in &leftovers {
        assert!(!l.exists(), "{} removed at start", l.display());
    }
    assert!(part.exists(), "resumable .part kept");
}

/// POSTs `body` to a streaming route through the router; the whole answer.
fn post_stream(d: &Arc<Daemon>, path: &str, body: Vec<u8>) -> String {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let resp = bangerd::api::router(Arc::clone(d))
            .oneshot(
                axum::http::Request::post(path)
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(body))
                    .expect("request"),
            )
            .await
            .expect("response");
        assert_eq!(resp.status(), 200);
        let bytes = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            resp.into_body().collect(),
        )
        .await
        .expect("the stream ends within 60 s")
        .expect("body")
        .to_bytes();
        String::from_utf8(bytes.to_vec()).expect("utf8")
    })
}

/// `POST /v1/images/ensure` as `vm run` uses it; the NDJSON lines it sent.
fn ensure_over_api(d: &Arc<Daemon>, name: &str) -> Vec<banger_proto::EnsureEvent> {
    let body =
        serde_json::to_vec(&banger_proto::EnsureImageRequest { name: name.into() }).expect("json");
    post_stream(d, "/v1/images/ensure", body)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is an EnsureEvent"))
        .collect()
}

#[test]
fn ensure_pulls_from_the_catalog_once_then_finds_the_image_present() {
    use banger_proto::{EnsureEvent as E, EnsureSource, EnsureStep};
    if skip() {
        return;
    }
    let b = make_bundle();
    let srv = FileServer::start(b.served.clone());
    let tmp = tempfile::tempdir().expect("tmp");
    let d = daemon(tmp.path(), &b, &srv.url("b"));

    let events = ensure_over_api(&d, "test-image");
    assert!(
        matches!(
            events.first(),
            Some(E::Step {
                step: EnsureStep::Catalog,
                ..
            })
        ),
        "{events:?}"
    );
    assert!(events.iter().any(|e| matches!(e, E::Progress { .. })));
    match events.last() {
        Some(E::Done { image, source }) => {
            assert_eq!(
                (image.name.as_str(), *source),
                ("test-image", EnsureSource::Pulled)
            );
        }
        other => panic!("{other:?}"),
    }
    let served = srv.log().len();
    let events = ensure_over_api(&d, "test-image");
    assert!(
        matches!(
            events.as_slice(),
            [E::Done {
                source: EnsureSource::Present,
                ..
            }]
        ),
        "{events:?}"
    );
    assert_eq!(srv.log().len(), served, "nothing fetched the second time");

    // Not in the catalog and not the default image: refused, no build.
    let events = ensure_over_api(&d, "elsewhere");
    match events.last() {
        Some(E::Failed { error }) => {
            assert_eq!(error.kind, banger_proto::ErrorKind::NotFound);
            assert!(
                error.message.contains("the catalog cannot supply it"),
                "{}",
                error.message
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(!events.iter().any(|e| matches!(
        e,
        E::Step {
            step: EnsureStep::Build,
            ..
        }
    )));
}
