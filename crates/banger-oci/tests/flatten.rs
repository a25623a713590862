//! Flattener semantics on a plain directory (no registry, no root needed).

mod common;

use banger_image::ext4::Fixup;
use banger_oci::{Error, Flattener, Limits};
use common::{E, tar};

fn apply(f: &mut Flattener, name: &str, entries: &[E]) -> banger_oci::Result<()> {
    let t = tar(entries);
    let id = common::sha(&t);
    f.apply_layer(name, &t[..], Some(&id)).map(|_| ())
}

fn ls(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("ls") {
            let e = e.expect("entry");
            let p = e.path();
            out.push(p.strip_prefix(root).expect("prefix").display().to_string());
            if e.file_type().expect("type").is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn opaque_keeps_this_layers_entries_before_and_after_the_marker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("t");
    let mut f = Flattener::new(&root, Limits::default()).expect("new");
    apply(
        &mut f,
        "l1",
        &[
            E::Dir("d/", 0o755, 0, 0),
            E::File("d/old", b"", 0o644, 0, 0),
            E::Dir("d/sub/", 0o755, 0, 0),
            E::File("d/sub/old2", b"", 0o644, 0, 0),
            E::Char("d/node", 1, 3, 0o666),
        ],
    )
    .expect("l1");
    apply(
        &mut f,
        "l2",
        &[
            E::File("d/before", b"", 0o644, 0, 0),
            E::File("d/sub/new", b"", 0o644, 0, 0),
            E::File("d/.wh..wh..opq", b"", 0o644, 0, 0),
            E::File("d/after", b"", 0o644, 0, 0),
            // A whiteout in a directory no layer created: nothing to do.
            E::File("nowhere/.wh.x", b"", 0o644, 0, 0),
        ],
    )
    .expect("l2");
    assert_eq!(
        ls(&root),
        ["d", "d/after", "d/before", "d/sub", "d/sub/new"]
    );
    let out = f.finish().expect("finish");
    assert!(
        !out.fixups
            .entries()
            .iter()
            .any(|e| matches!(e, Fixup::Mknod { .. })),
        "the opaque dir hid the lower layer's device node: {:?}",
        out.fixups
    );
}

#[test]
fn replacing_a_hardlinked_file_breaks_the_link_and_owners_become_fixups() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("t");
    let mut f = Flattener::new(&root, Limits::default()).expect("new");
    apply(
        &mut f,
        "l1",
        &[E::File("a", b"old", 0o644, 7, 8), E::Link("b", "a")],
    )
    .expect("l1");
    apply(&mut f, "l2", &[E::File("a", b"new", 0o4750, 0, 0)]).expect("l2");
    assert_eq!(std::fs::read(root.join("a")).expect("a"), b"new");
    assert_eq!(std::fs::read(root.join("b")).expect("b"), b"old");
    let out = f.finish().expect("finish");
    let e = out.fixups.entries();
    assert!(
        e.contains(&Fixup::SetOwner {
            path: "/b".into(),
            uid: 7,
            gid: 8
        }),
        "{e:?}"
    );
    assert!(
        e.contains(&Fixup::SetMode {
            path: "/a".into(),
            mode: 0o104750
        }),
        "{e:?}"
    );
}

#[test]
fn wrong_diff_id_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut f = Flattener::new(&dir.path().join("t"), Limits::default()).expect("new");
    let t = tar(&[E::File("a", b"x", 0o644, 0, 0)]);
    let wrong = format!("sha256:{}", "0".repeat(64));
    let err = f
        .apply_layer("sha256:layer", &t[..], Some(&wrong))
        .expect_err("mismatch");
    assert!(matches!(err, Error::Layer { .. }), "{err}");
    assert!(err.to_string().contains("sha256:layer"), "{err}");
}

#[test]
fn gzip_and_zstd_streams_are_detected() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("t");
    let mut f = Flattener::new(&root, Limits::default()).expect("new");
    let t1 = tar(&[E::File("g", b"gzip", 0o644, 0, 0)]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&t1).expect("gz");
    let gz = gz.finish().expect("gz");
    f.apply_layer("g", &gz[..], Some(&common::sha(&t1)))
        .expect("gzip layer");
    let t2 = tar(&[E::File("z", b"zstd", 0o644, 0, 0)]);
    let zs = zstd::encode_all(&t2[..], 1).expect("zstd");
    f.apply_layer("z", &zs[..], Some(&common::sha(&t2)))
        .expect("zstd layer");
    assert_eq!(std::fs::read(root.join("g")).expect("g"), b"gzip");
    assert_eq!(std::fs::read(root.join("z")).expect("z"), b"zstd");
}
