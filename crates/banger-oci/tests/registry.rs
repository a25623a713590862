//! Pulls from a real docker-registry on 127.0.0.1, images pushed with
//! skopeo from layers built here; results checked with e2fsck and debugfs.

mod common;

use std::path::Path;

use banger_oci::{Error, Limits, Phase, PullOptions, pull_to_ext4};
use common::{Comp, E, Layer, Layout, Registry, tar};
use serde_json::json;

struct Dirs {
    _tmp: tempfile::TempDir,
    images: std::path::PathBuf,
    cache: std::path::PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().expect("tempdir");
    let images = tmp.path().join("images");
    let cache = tmp.path().join("cache");
    Dirs {
        images,
        cache,
        _tmp: tmp,
    }
}

fn opts<'a>(d: &Dirs) -> PullOptions<'a> {
    let mut o = PullOptions::new(d.images.clone(), d.cache.clone(), "default");
    // No auth files of the machine's user leak into tests.
    o.registry.auth_files = vec![];
    o.free_space = 16 << 20;
    o
}

/// Names in the images dir (installed images and leftovers alike).
fn images_dir_entries(d: &Dirs) -> Vec<String> {
    match std::fs::read_dir(&d.images) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => vec![],
    }
}

fn cache_entries(d: &Dirs) -> Vec<String> {
    match std::fs::read_dir(d.cache.join("blobs/sha256")) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => vec![],
    }
}

#[test]
fn multi_layer_image_flattens_into_the_expected_ext4() {
    require_prereqs!();
    let reg = Registry::start();
    let busybox = std::fs::read("/bin/busybox").expect("read busybox");
    let l1 = Layer::new(
        tar(&[
            E::Dir("bin/", 0o755, 0, 0),
            E::File("bin/busybox", &busybox, 0o755, 0, 0),
            E::Sym("bin/sh", "busybox"),
            E::File("bin/original", b"linked\n", 0o644, 0, 0),
            E::Dir("etc/", 0o755, 0, 0),
            E::File("etc/hostname", b"one\n", 0o644, 0, 0),
            E::File("etc/gone", b"delete me\n", 0o644, 0, 0),
            E::File("etc/shadow", b"root:*:1::::::\n", 0o640, 0, 42),
            E::Dir("data/", 0o755, 0, 0),
            E::File("data/keep", b"keep\n", 0o644, 0, 0),
            E::Dir("data/subdir/", 0o755, 0, 0),
            E::File("data/subdir/gone2", b"x", 0o644, 0, 0),
            E::Dir("opq/", 0o755, 0, 0),
            E::File("opq/old1", b"old", 0o644, 0, 0),
            E::Dir("opq/olddir/", 0o755, 0, 0),
            E::File("opq/olddir/old2", b"old", 0o644, 0, 0),
            E::Dir("home/", 0o755, 0, 0),
            E::Dir("home/user/", 0o700, 1000, 1000),
            E::File("home/user/file", b"mine\n", 0o600, 1000, 1000),
            E::Dir("usr/", 0o755, 0, 0),
            E::Dir("usr/bin/", 0o755, 0, 0),
            E::File("usr/bin/su", b"su", 0o4755, 0, 0),
            E::Dir("tmp/", 0o1777, 0, 0),
            E::Dir("ro/", 0o555, 0, 0),
            E::File("ro/inner", b"ro", 0o444, 0, 0),
        ]),
        Comp::Gzip,
    );
    let l2 = Layer::new(
        tar(&[
            E::File("etc/.wh.gone", b"", 0o644, 0, 0),
            E::File("data/.wh.subdir", b"", 0o644, 0, 0),
            E::Dir("opq/", 0o750, 0, 0),
            E::File("opq/.wh..wh..opq", b"", 0o644, 0, 0),
            E::File("opq/new1", b"new", 0o644, 0, 0),
            E::Link("bin/hardlink", "bin/original"),
            E::Dir("dev/", 0o755, 0, 0),
            E::Char("dev/null", 1, 3, 0o666),
            E::Fifo("dev/fifo", 0o600),
            E::XattrFile("etc/xattr", b"x\n", "user.banger", b"hello"),
            E::File("etc/hostname", b"two\n", 0o644, 0, 0),
        ]),
        Comp::Zstd,
    );
    let l3 = Layer::new(
        tar(&[
            E::Dir("lib/", 0o755, 0, 0),
            E::Sym("lib/link", "../bin/busybox"),
            E::SymU("lib/owned", "link", 77, 88),
            E::File("etc/newfile", b"n", 0o444, 123, 456),
        ]),
        Comp::None,
    );
    let layout = Layout::new();
    let m = layout.image(
        &[l1, l2, l3],
        "amd64",
        json!({"Env": ["PATH=/bin", "GREETING=hi"], "WorkingDir": "/data", "User": "1000:1000",
               "Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo hi"]}),
    );
    layout.tag(m, "v1");
    let reference = reg.push(&layout, "v1", "multi", &[]);

    let d = dirs();
    let mut events = Vec::new();
    let mut o = opts(&d);
    let mut cb = |p: &banger_oci::Progress| events.push(p.clone());
    o.progress = Some(&mut cb);
    let pulled = pull_to_ext4(&reference, o).expect("pull");
    let image = &pulled.image.rootfs;
    banger_image::ext4::fsck(image).expect("e2fsck -fn clean");

    let tree = common::walk(image);
    let expect: &[(&str, u32, u32, u32)] = &[
        ("/bin", 0o40755, 0, 0),
        ("/bin/busybox", 0o100755, 0, 0),
        ("/bin/sh", 0o120777, 0, 0),
        ("/bin/original", 0o100644, 0, 0),
        ("/bin/hardlink", 0o100644, 0, 0),
        ("/etc", 0o40755, 0, 0),
        ("/etc/hostname", 0o100644, 0, 0),
        ("/etc/shadow", 0o100640, 0, 42),
        ("/etc/xattr", 0o100644, 0, 0),
        ("/etc/newfile", 0o100444, 123, 456),
        ("/data", 0o40755, 0, 0),
        ("/data/keep", 0o100644, 0, 0),
        ("/opq", 0o40750, 0, 0),
        ("/opq/new1", 0o100644, 0, 0),
        ("/home", 0o40755, 0, 0),
        ("/home/user", 0o40700, 1000, 1000),
        ("/home/user/file", 0o100600, 1000, 1000),
        ("/usr", 0o40755, 0, 0),
        ("/usr/bin", 0o40755, 0, 0),
        ("/usr/bin/su", 0o104755, 0, 0),
        ("/tmp", 0o41777, 0, 0),
        ("/ro", 0o40555, 0, 0),
        ("/ro/inner", 0o100444, 0, 0),
        ("/dev", 0o40755, 0, 0),
        ("/dev/null", 0o20666, 0, 0),
        ("/dev/fifo", 0o10600, 0, 0),
        ("/lib", 0o40755, 0, 0),
        ("/lib/link", 0o120777, 0, 0),
        ("/lib/owned", 0o120777, 77, 88),
    ];
    let got: Vec<(String, u32, u32, u32)> = tree
        .iter()
        .map(|(p, n)| (p.clone(), n.mode, n.uid, n.gid))
        .collect();
    let mut want: Vec<(String, u32, u32, u32)> = expect
        .iter()
        .map(|(p, m, u, g)| (p.to_string(), *m, *u, *g))
        .collect();
    want.sort();
    assert_eq!(got, want, "tree in the ext4");
    assert_eq!(
        tree["/bin/hardlink"].inode, tree["/bin/original"].inode,
        "hardlink across layers"
    );

    let read = |p: &str| banger_image::ext4::read_file(image, p).expect("read");
    assert_eq!(read("/etc/hostname"), b"two\n");
    assert_eq!(read("/bin/hardlink"), b"linked\n");
    assert_eq!(read("/bin/busybox"), busybox);
    let stat = common::debugfs(image, "stat /dev/null");
    assert!(stat.contains("Device major/minor number: 01:03"), "{stat}");
    let link = common::debugfs(image, "stat /lib/link");
    assert!(
        link.contains("Fast link dest: \"../bin/busybox\""),
        "{link}"
    );
    let xattr = common::debugfs(image, "ea_get /etc/xattr user.banger");
    assert!(xattr.contains("hello"), "xattr: {xattr}");
    let root = common::debugfs(image, "stat /");
    assert!(root.contains("Mode:  0755"), "{root}");

    let c = &pulled.config;
    assert_eq!(c.env, vec!["PATH=/bin", "GREETING=hi"]);
    assert_eq!(c.working_dir.as_deref(), Some("/data"));
    assert_eq!(c.user.as_deref(), Some("1000:1000"));
    assert_eq!(c.argv(&[]), vec!["/bin/sh", "-c", "echo hi"]);
    assert_eq!(c.argv(&["id".into()]), vec!["/bin/sh", "-c", "id"]);
    assert_eq!(
        &banger_oci::ImageConfig::load(&pulled.image.dir).expect("load"),
        c
    );
    assert_eq!(pulled.image.manifest.name, format!("{}/multi", reg.addr));
    assert!(pulled.image.manifest.source.contains(&c.manifest_digest));

    // Progress: every layer downloaded and done, then the ext4 phase.
    for i in 0..3 {
        assert!(
            events
                .iter()
                .any(|e| e.layer == i && e.phase == Phase::Downloading)
        );
        assert!(
            events
                .iter()
                .any(|e| e.layer == i && e.phase == Phase::Done)
        );
    }
    assert_eq!(events.last().map(|e| e.phase), Some(Phase::Ext4));
    assert_eq!(cache_entries(&d).len(), 3, "three verified layers cached");

    // A second pull shares the cache: nothing downloaded.
    let mut events2 = Vec::new();
    let mut o = opts(&d);
    let mut cb = |p: &banger_oci::Progress| events2.push(p.clone());
    o.progress = Some(&mut cb);
    let again = pull_to_ext4(&reference, o).expect("second pull");
    assert_eq!(again.downloaded, 0);
    assert_eq!(
        events2.iter().filter(|e| e.phase == Phase::Cached).count(),
        3
    );
    assert!(!events2.iter().any(|e| e.phase == Phase::Downloading));
}

#[test]
fn index_resolves_to_linux_amd64() {
    require_prereqs!();
    let reg = Registry::start();
    let layout = Layout::new();
    let mut manifests = Vec::new();
    for arch in ["arm64", "amd64", "s390x"] {
        let l = Layer::new(
            tar(&[E::File(
                "platform",
                format!("{arch}\n").as_bytes(),
                0o644,
                0,
                0,
            )]),
            Comp::Gzip,
        );
        manifests.push(layout.image(&[l], arch, json!({})));
    }
    let idx = layout.index(manifests);
    layout.tag(idx, "multi");
    let reference = reg.push(&layout, "multi", "platforms", &["--all"]);
    let d = dirs();
    let pulled = pull_to_ext4(&reference, opts(&d)).expect("pull");
    assert_eq!(
        banger_image::ext4::read_file(&pulled.image.rootfs, "/platform").expect("read"),
        b"amd64\n"
    );
    assert_eq!(pulled.config.architecture, "amd64");
    let mut ro = banger_oci::RegistryOptions::default();
    ro.auth_files.clear();
    let (_, doc) = banger_oci::resolve(&reference, &ro).expect("resolve");
    assert_eq!(doc.digest, pulled.config.manifest_digest);
    assert_eq!(doc.layers.len(), 1);

    // The same index as a Docker manifest list.
    let reference = reg.push(
        &layout,
        "multi",
        "platforms-docker",
        &["--all", "--format", "v2s2"],
    );
    let (body, media_type, _) = {
        let r = banger_oci::Reference::parse(&reference).expect("ref");
        let mut c = banger_oci::registry::Client::new(&r, &ro).expect("client");
        c.manifest_bytes(r.manifest_ref()).expect("manifest")
    };
    assert_eq!(
        media_type,
        banger_oci::registry::MT_DOCKER_LIST,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let d = dirs();
    let pulled = pull_to_ext4(&reference, opts(&d)).expect("pull manifest list");
    assert_eq!(
        banger_image::ext4::read_file(&pulled.image.rootfs, "/platform").expect("read"),
        b"amd64\n"
    );
}

#[test]
fn docker_v2_manifest_and_tampered_blob_is_caught() {
    require_prereqs!();
    let reg = Registry::start();
    let big: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let l = Layer::new(tar(&[E::File("big", &big, 0o644, 0, 0)]), Comp::Gzip);
    let digest = l.digest();
    let layout = Layout::new();
    let m = layout.image(&[l], "amd64", json!({"Cmd": ["sh"]}));
    layout.tag(m, "t");
    // Docker schema 2 on the registry side.
    let reference = reg.push(&layout, "t", "tamper", &["--format", "v2s2"]);

    let d = dirs();
    // Untampered: pulls fine through the Docker manifest.
    let ok = pull_to_ext4(&reference, opts(&d)).expect("pull untampered");
    assert_eq!(
        banger_image::ext4::read_file(&ok.image.rootfs, "/big").expect("read"),
        big
    );

    // Same length, different bytes, in the registry's storage.
    let blob = reg.blob_path(&digest);
    let mut bytes = std::fs::read(&blob).expect("registry blob");
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0xff;
    }
    std::fs::write(&blob, &bytes).expect("tamper");
    let d = dirs();
    let err = pull_to_ext4(&reference, opts(&d)).expect_err("tampered blob must fail");
    match &err {
        Error::DigestMismatch { expected, .. } => assert_eq!(expected, &digest),
        other => panic!("expected a digest mismatch, got {other}"),
    }
    assert!(err.to_string().contains(&digest));
    assert!(
        cache_entries(&d).is_empty(),
        "nothing cached: {:?}",
        cache_entries(&d)
    );
    assert!(images_dir_entries(&d).is_empty(), "nothing installed");
}

/// Push `layers` as an image and expect the pull to be refused as hostile
/// in layer `bad` (index) with `entry`; the refused layer must not stay in
/// the cache and no image may be installed.
fn expect_hostile(layers: Vec<Layer>, bad: usize, entry: &str, limits: Option<Limits>) {
    let reg = Registry::start();
    let digests: Vec<String> = layers.iter().map(|l| l.digest()).collect();
    let layout = Layout::new();
    let m = layout.image(&layers, "amd64", json!({}));
    layout.tag(m, "bad");
    let reference = reg.push(&layout, "bad", "hostile", &[]);
    let d = dirs();
    let mut o = opts(&d);
    if let Some(l) = limits {
        o.limits = l;
    }
    let err = pull_to_ext4(&reference, o).expect_err("hostile image must be refused");
    match &err {
        Error::Hostile {
            layer, entry: e, ..
        } => {
            assert_eq!(layer, &digests[bad], "{err}");
            assert_eq!(e, entry, "{err}");
        }
        other => panic!("expected a hostile-input error, got: {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&digests[bad]) && msg.contains(entry), "{msg}");
    eprintln!("refused as expected: {msg}");
    let cached = cache_entries(&d);
    assert!(
        !cached.contains(&digests[bad][7..].to_string()),
        "refused layer still cached"
    );
    assert!(
        !cached.iter().any(|c| c.starts_with(".tmp")),
        "temp files left: {cached:?}"
    );
    assert!(
        images_dir_entries(&d).is_empty(),
        "something installed: {:?}",
        images_dir_entries(&d)
    );
}

fn one(entries: &[E]) -> Vec<Layer> {
    vec![Layer::new(tar(entries), Comp::Gzip)]
}

#[test]
fn hostile_dotdot_is_refused() {
    require_prereqs!();
    expect_hostile(
        one(&[E::File("a/../../evil", b"x", 0o644, 0, 0)]),
        0,
        "a/../../evil",
        None,
    );
}

#[test]
fn hostile_absolute_path_is_refused() {
    require_prereqs!();
    expect_hostile(
        one(&[E::File("/etc/evil", b"x", 0o644, 0, 0)]),
        0,
        "/etc/evil",
        None,
    );
}

#[test]
fn hostile_write_through_symlink_from_earlier_layer_is_refused() {
    require_prereqs!();
    let outside = tempfile::tempdir().expect("tempdir");
    let target = outside.path().display().to_string();
    let l1 = Layer::new(tar(&[E::Sym("escape", &target)]), Comp::Gzip);
    let l2 = Layer::new(
        tar(&[E::File("escape/pwned", b"x", 0o644, 0, 0)]),
        Comp::Gzip,
    );
    expect_hostile(vec![l1, l2], 1, "escape/pwned", None);
    assert!(
        !outside.path().join("pwned").exists(),
        "wrote outside the tree"
    );
}

#[test]
fn hostile_write_through_symlink_in_same_layer_is_refused() {
    require_prereqs!();
    expect_hostile(
        one(&[E::Sym("up", ".."), E::File("up/x", b"x", 0o644, 0, 0)]),
        0,
        "up/x",
        None,
    );
}

#[test]
fn hostile_hardlink_outside_is_refused() {
    require_prereqs!();
    expect_hostile(one(&[E::Link("h", "../../etc/passwd")]), 0, "h", None);
    expect_hostile(one(&[E::Link("h2", "/etc/passwd")]), 0, "h2", None);
}

#[test]
fn hostile_whiteout_outside_its_directory_is_refused() {
    require_prereqs!();
    expect_hostile(
        one(&[
            E::Dir("a/", 0o755, 0, 0),
            E::File("a/.wh...", b"", 0o644, 0, 0),
        ]),
        0,
        "a/.wh...",
        None,
    );
}

#[test]
fn hostile_decompression_bomb_and_big_entries_are_refused() {
    require_prereqs!();
    // 64 MiB of zeros gzip to ~64 KiB; the total cap is 16 MiB.
    let limits = Limits {
        max_total_size: 16 << 20,
        ..Limits::default()
    };
    expect_hostile(one(&[E::Zeros("bomb", 64 << 20)]), 0, "bomb", Some(limits));
    // Zeros hidden after the end of the archive, where no header declares
    // them: cut off by the stream cap.
    let mut padded = tar(&[E::File("small", b"x", 0o644, 0, 0)]);
    padded.resize(padded.len() + (64 << 20), 0);
    expect_hostile(
        vec![Layer::new(padded, Comp::Gzip)],
        0,
        "(stream)",
        Some(limits),
    );
    // Per-entry cap.
    let limits = Limits {
        max_entry_size: 1 << 20,
        ..Limits::default()
    };
    expect_hostile(one(&[E::Zeros("big", 2 << 20)]), 0, "big", Some(limits));
}

#[test]
fn cache_dir_leftovers_are_not_trusted() {
    // A temp file from a killed download is never read as a blob.
    let d = dirs();
    let cache = banger_oci::LayerCache::new(&d.cache);
    let digest = format!("sha256:{}", "ab".repeat(32));
    let blobs = d.cache.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("mkdir");
    std::fs::write(blobs.join(format!(".tmp-{}-x1", &digest[7..])), b"half").expect("write");
    assert!(!cache.contains(&digest));
    assert_eq!(cache.list().expect("list"), Vec::<String>::new());
    assert_eq!(cache.cleanup_partial().expect("cleanup").len(), 1);
    assert!(Path::new(&blobs).read_dir().expect("ls").next().is_none());
}

#[test]
fn kill_9_mid_download_leaves_nothing_trusted() {
    require_prereqs!();
    // `cargo test` builds the examples next to the test binaries.
    let exe = std::env::current_exe().expect("exe");
    let Some(pull_bin) = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("examples/oci-pull"))
        .filter(|p| p.is_file())
    else {
        eprintln!(
            "SKIP: examples/oci-pull not built (run via `cargo test`, which builds examples)"
        );
        return;
    };
    let reg = Registry::start();
    let noise: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    let l = Layer::new(tar(&[E::File("noise", &noise, 0o644, 0, 0)]), Comp::Gzip);
    let digest = l.digest();
    let layout = Layout::new();
    let m = layout.image(&[l], "amd64", json!({}));
    layout.tag(m, "t");
    reg.push(&layout, "t", "slow", &[]);
    let proxy = common::AuthProxy::start(&reg.addr, common::Guard::Slow);

    let d = dirs();
    let mut child = std::process::Command::new(&pull_bin)
        .arg(format!("{}/slow:t", proxy.addr))
        .arg(&d.images)
        .arg(&d.cache)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn oci-pull");
    let blobs = d.cache.join("blobs/sha256");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let partial = std::fs::read_dir(&blobs).ok().and_then(|rd| {
            rd.flatten()
                .find(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
                .and_then(|e| e.metadata().ok())
                .filter(|m| m.len() > (1 << 20))
        });
        if partial.is_some() {
            break;
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "oci-pull finished before it could be killed"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "download never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().expect("kill -9");
    child.wait().expect("reap");

    let cache = banger_oci::LayerCache::new(&d.cache);
    assert!(!cache.contains(&digest), "half blob trusted");
    assert!(cache.list().expect("list").is_empty());
    assert_eq!(cache.cleanup_partial().expect("cleanup").len(), 1);
    // The next pull (directly, full speed) downloads it again and works.
    let pulled = pull_to_ext4(&format!("{}/slow:t", reg.addr), opts(&d)).expect("pull after kill");
    assert_eq!(
        banger_image::ext4::read_file(&pulled.image.rootfs, "/noise").expect("read"),
        noise
    );
}
