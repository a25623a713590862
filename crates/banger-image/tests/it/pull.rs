use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_image::Error;
use banger_image::bundle::{self, BundleManifest, MANIFEST, SIGNATURE};
use banger_image::catalog::{Catalog, CatalogEntry};
use banger_image::ext4;
use banger_image::pull::{self, Phase, Progress, PullOptions};
use banger_image::store;

use crate::server::FileServer;
use crate::support::{Fixture, fixture, listing, skip_without_e2fsprogs};

struct Store {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Store {
    fn new() -> Store {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().to_path_buf();
        Store { _tmp: tmp, root }
    }
    fn images(&self) -> PathBuf {
        self.root.join("state/images")
    }
    fn kernels(&self) -> PathBuf {
        self.root.join("state/kernels")
    }
    fn downloads(&self) -> PathBuf {
        self.root.join("cache/downloads")
    }
    fn opts<'a>(&self) -> PullOptions<'a> {
        let mut o = PullOptions::new(self.images(), self.kernels(), self.downloads());
        o.read_timeout = Duration::from_secs(5);
        o
    }
    /// Nothing installed, no temp dirs, no .part files.
    fn assert_empty(&self) {
        for d in [self.images(), self.kernels(), self.downloads()] {
            let l = listing(&d);
            assert!(
                l.is_empty(),
                "{} should be empty after a failed pull, has {l:?}",
                d.display()
            );
        }
    }
}

fn entry(fx: &Fixture, server: &FileServer) -> CatalogEntry {
    CatalogEntry {
        name: "test-image".into(),
        description: "test".into(),
        url: server.url("b"),
        manifest_sha256: Some(fx.bundle.manifest_sha256.clone()),
        public_key: fx.bundle.public_key.clone(),
    }
}

/// Copy the fixture's served tree so a test can damage its own copy.
fn served_copy(fx: &Fixture) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().expect("tempdir");
    let b = t.path().join("b");
    fs::create_dir_all(&b).expect("mkdir");
    for e in fs::read_dir(fx.served.join("b")).expect("read").flatten() {
        fs::copy(e.path(), b.join(e.file_name())).expect("copy");
    }
    let root = t.path().to_path_buf();
    (t, root)
}

#[test]
fn pull_installs_a_verified_bundle() {
    if skip_without_e2fsprogs() {
        return;
    }
    let fx = fixture();
    let server = FileServer::start(fx.served.clone());
    let st = Store::new();
    let mut events: Vec<Progress> = Vec::new();
    let pulled = {
        let mut cb = |p: &Progress| events.push(p.clone());
        let mut opts = st.opts();
        opts.progress = Some(&mut cb);
        pull::pull(&entry(&fx, &server), opts).expect("pull")
    };

    assert_eq!(pulled.image.manifest.sha256, fx.image_sha256);
    assert_eq!(pulled.image.dir, st.images().join(&fx.image_sha256));
    assert_eq!(
        store::sha256_file(&pulled.image.rootfs).expect("hash"),
        fx.image_sha256
    );
    ext4::fsck(&pulled.image.rootfs).expect("pulled image passes e2fsck");
    assert_eq!(
        ext4::read_file(&pulled.image.rootfs, "/etc/hostname").expect("read"),
        b"test\n"
    );
    let size = ext4::FileSize::of(&pulled.image.rootfs).expect("size");
    assert!(
        size.allocated < size.apparent,
        "decompressed image stays sparse: {size:?}"
    );
    assert!(pulled.kernel.has_vmlinux && pulled.kernel.pvh);
    assert!(
        pulled
            .kernel
            .vmlinuz
            .starts_with(st.kernels().join("test-kernel-1"))
    );
    assert_eq!(pulled.resumes, 0);
    assert!(!pulled.kernel.boot_args.contains("nomodule"));

    // Progress: monotonic per file, reaching each file's total.
    let dl: Vec<&Progress> = events
        .iter()
        .filter(|p| p.phase == Phase::Download)
        .collect();
    assert!(!dl.is_empty());
    for w in dl.windows(2) {
        assert!(
            w[1].all_done >= w[0].all_done,
            "overall progress must not go back"
        );
    }
    let last = dl.last().expect("some");
    assert_eq!(last.all_done, last.all_total);

    // Only the installed dirs remain: no temp dirs, no .part files.
    assert_eq!(listing(&st.downloads()), Vec::<String>::new());
    assert!(
        listing(&st.images())
            .iter()
            .all(|n| !n.contains(".tmp-banger"))
    );
    assert!(
        listing(&st.kernels())
            .iter()
            .all(|n| !n.contains(".tmp-banger"))
    );

    // Pulling again is idempotent.
    let again = pull::pull(&entry(&fx, &server), st.opts()).expect("second pull");
    assert_eq!(again.image.dir, pulled.image.dir);
}

fn expect_fail(
    fx: &Fixture,
    served: &Path,
    mutate_entry: impl FnOnce(&mut CatalogEntry),
) -> (Error, Store) {
    let server = FileServer::start(served.to_path_buf());
    let mut e = entry(fx, &server);
    mutate_entry(&mut e);
    let st = Store::new();
    let err = pull::pull(&e, st.opts()).expect_err("pull must fail");
    st.assert_empty();
    (err, st)
}

#[test]
fn tampered_byte_is_rejected() {
    if skip_without_e2fsprogs() {
        return;
    }
    let fx = fixture();
    let (_t, served) = served_copy(&fx);
    let f = served.join("b/rootfs.ext4.zst");
    let mut data = fs::read(&f).expect("read");
    let mid = data.len() / 2;
    data[mid] ^= 0x01;
    fs::write(&f, data).expect("write");
    let (err, _) = expect_fail(&fx, &served, |_| {});
    assert!(
        matches!(err, Error::Mismatch { what: "sha256", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("rootfs.ext4.zst"), "{err}");
}

#[test]
fn wrong_key_is_rejected() {
    if skip_without_e2fsprogs() {
        return;
    }
    let fx = fixture();
    let other = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let (err, _) = expect_fail(&fx, &fx.served, |e| {
        e.public_key = bundle::public_key_base64(&other.verifying_key())
    });
    assert!(matches!(err, Error::BadSignature), "{err}");
    assert!(err.to_string().contains("signature"), "{err}");
}

#[test]
fn pin_mismatch_is_rejected() {
    if skip_without_e2fsprogs() {
        return;
    }
    let fx = fixture();
    let (err, _) = expect_fail(&fx, &fx.served, |e| {
        e.manifest_sha256 = Some("0".repeat(64));
    });
    assert!(matches!(err, Error::PinMismatch { .. }), "{err}");
}

#[test]
fn unpinned_catalog_entry_is_rejected() {
    if skip_without_e2fsprogs() {
        return;
    }
    let fx = fixture();
    let server = FileServer::start(fx.served.clone());
    let text = format!(
        r#"{{"format":1,"entries":[{{"name":"nopin","url":"{}","public_key":"{}"}}]}}"#,
        server.url("b"),
        fx.bundle.public_key
    );
    let cat = Catalog::parse(&text).expect("parses");
    let e = cat.find("nopin").expect("found");
    let st = Store::new();
    let err = pull::pull(e, st.opts()).expect_err("unpinned");
    assert!(matches!(err, Error::Unpinned(_)), "{err}");
    assert!(err.to_string().contains("pin"), "{err}");
    st.assert_empty();
    assert!(
        server.log().is_empty(),
        "an unpinned entry must not even be fetched"
    );
    assert!(matches!(cat.find("other"), Err(Error::NotInCatalog(_))));
    Catalog::embedded().expect("embedded catalog parses");
}

#[test]
fn truncated_download_is_rejected() {
    if skip_without_e2fsprogs() {
        return;
    }
    let fx = fixture();
    let (_t, served) = served_copy(&fx);
    let f = served.join("b/rootfs.ext4.zst");
    let data = fs::read(&f).expect("read");
    fs::write(&f, &data[..data.len() - 100]).expect("write");
    let (err, _) = expect_fail(&fx, &served, |_| {});
    assert!(matches!(err, Error::Truncated { .. }), "{err}");
}

#[test]
fn oversized_download_is_rejected() {
    if skip_without_e2fsprogs() {
        return;
    }
    let fx = fixture();
    let (_t, served) = served_copy(&fx);
    let f = served.join("b/vmlinuz.zst");
    let mut data = fs::read(&f).expect("read");
    data.extend(std::iter::repeat_n(0xAAu8, 1 << 20));
    fs::write(&f, &data).expect("write");
    let (err, _) = expect_fail(&fx, &served, |_| {});
    assert!(matches!(err, Error::Oversized { .. }), "{err}");
}

/// Re-sign a modified manifest with the fixture's key and pin it, so only
/// the path check can catch it.
fn resign(fx: &Fixture, served: &Path, m: &BundleManifest) -> String {
    let bytes = serde_json::to_vec_pretty(m).expect("json");
    fs::write(served.join("b").join(MANIFEST), &bytes).expect("write");
    fs::write(
        served.join("b").join(SIGNATURE),
        bundle::sign(&bytes, &fx.key),
    )
    .expect("write");
    bundle::sha256_hex(&bytes)
}

#[test]
fn manifest_path_escape_is_rejected() {
    if skip_without_e2fsprogs() {
        return;
    }
    let fx = fixture();
    for evil in ["../evil", "sub/file", "..", ".hidden", "/etc/passwd"] {
        let (_t, served) = served_copy(&fx);
        let mut m = fx.bundle.manifest.clone();
        m.files[1].path = evil.to_string();
        m.kernel.vmlinuz = evil.to_string();
        let pin = resign(&fx, &served, &m);
        let (err, _) = expect_fail(&fx, &served, |e| e.manifest_sha256 = Some(pin));
        assert!(matches!(err, Error::Manifest(_)), "{evil}: {err}");
        assert!(err.to_string().contains("plain file name"), "{evil}: {err}");
    }
}

#[test]
fn interrupted_download_resumes_with_range() {
    if skip_without_e2fsprogs() {
        return;
    }
    let fx = fixture();
    let server = FileServer::start(fx.served.clone());
    let total = fx
        .bundle
        .manifest
        .file("rootfs.ext4")
        .expect("rootfs")
        .compressed_size;
    let cut = total / 3;
    server.drop_once("b/rootfs.ext4.zst", cut);
    let st = Store::new();
    let pulled = pull::pull(&entry(&fx, &server), st.opts()).expect("pull resumes");
    assert_eq!(pulled.resumes, 1);
    assert_eq!(
        store::sha256_file(&pulled.image.rootfs).expect("hash"),
        fx.image_sha256
    );
    let log = server.log();
    let rootfs: Vec<_> = log
        .iter()
        .filter(|l| l.path == "b/rootfs.ext4.zst")
        .collect();
    assert_eq!(rootfs.len(), 2, "{log:?}");
    assert_eq!(rootfs[0].range_start, None);
    assert_eq!(
        rootfs[1].range_start,
        Some(cut),
        "resumed where the first attempt stopped"
    );
    assert_eq!(rootfs[1].status, 206);
    // Fewer bytes than the bundle: the first third was not fetched twice.
    assert!(
        pulled.bytes_downloaded
            < fx.bundle
                .manifest
                .files
                .iter()
                .map(|f| f.compressed_size)
                .sum::<u64>()
                + 1
    );
    assert_eq!(listing(&st.downloads()), Vec::<String>::new());
}

#[test]
fn leftover_part_file_is_resumed() {
    if skip_without_e2fsprogs() {
        return;
    }
    // A daemon killed mid-pull leaves <downloads>/<sha>.zst.part; the next
    // pull continues from it.
    let fx = fixture();
    let server = FileServer::start(fx.served.clone());
    let st = Store::new();
    let f = fx.bundle.manifest.file("rootfs.ext4").expect("rootfs");
    let data = fs::read(fx.served.join("b/rootfs.ext4.zst")).expect("read");
    fs::create_dir_all(st.downloads()).expect("mkdir");
    let half = data.len() / 2;
    fs::write(
        st.downloads()
            .join(format!("{}.zst.part", f.compressed_sha256)),
        &data[..half],
    )
    .expect("write");
    pull::pull(&entry(&fx, &server), st.opts()).expect("pull");
    let log = server.log();
    let l = log
        .iter()
        .find(|l| l.path == "b/rootfs.ext4.zst")
        .expect("requested");
    assert_eq!(l.range_start, Some(half as u64));
}

#[test]
fn cleanup_partial_removes_leftovers_only() {
    let t = tempfile::tempdir().expect("tempdir");
    let d = t.path();
    fs::create_dir_all(d.join(".tmp-banger-abc/sub")).expect("mkdir");
    fs::write(d.join(".tmp-banger-file"), "x").expect("write");
    fs::create_dir_all(d.join("0123abcd")).expect("mkdir");
    let removed = store::cleanup_partial(d).expect("cleanup");
    assert_eq!(removed.len(), 2);
    assert_eq!(listing(d), vec!["0123abcd".to_string()]);
    assert!(
        store::cleanup_partial(&d.join("missing"))
            .expect("missing ok")
            .is_empty()
    );
}
