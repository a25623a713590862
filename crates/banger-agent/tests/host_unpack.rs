//! The host side of `vm cp NAME:PATH DST`: what a hostile guest can send and
//! what lands on the host (banger_agent::transfer's check, staged unpack
//! and mode masking), attacks included.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use banger_agent::transfer::{Shape, TransferError, UNSAFE_MODE_BITS, check_archive, unpack_to};
use tar::EntryType;

fn header(kind: EntryType, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(0);
    h.set_mode(mode);
    h.set_mtime(0);
    h
}

/// A tar built entry by entry with raw names (the `tar` builder refuses
/// `..`, so names are written straight into the header), and a mode each.
fn archive_modes(entries: &[(&str, EntryType, &str, u32)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, data, mode) in entries {
        let mut h = header(*kind, *mode);
        {
            let gnu = h.as_gnu_mut().expect("gnu");
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        }
        match kind {
            EntryType::Symlink | EntryType::Link => {
                h.set_link_name_literal(data).expect("link");
                h.set_cksum();
                b.append(&h, std::io::empty()).expect("append");
            }
            _ => {
                h.set_size(data.len() as u64);
                h.set_cksum();
                b.append(&h, data.as_bytes()).expect("append");
            }
        }
    }
    b.into_inner().expect("finish")
}

fn archive(entries: &[(&str, EntryType, &str)]) -> Vec<u8> {
    let with: Vec<_> = entries
        .iter()
        .map(|(n, k, d)| (*n, *k, *d, if k.is_dir() { 0o755 } else { 0o644 }))
        .collect();
    archive_modes(&with)
}

use EntryType::{Directory as D, Link as H, Regular as F, Symlink as L};

#[test]
fn check_accepts_a_contained_tree() {
    let a = archive(&[
        ("t", D, ""),
        ("t/a", F, "hello"),
        ("t/sub", D, ""),
        ("t/sub/l", L, "../a"),
        ("t/h", H, "t/a"),
        // a chain that stays inside: u is t itself, x is t/a
        ("t/sub/u", L, ".."),
        ("t/sub/x", L, "u/a"),
    ]);
    assert_eq!(
        check_archive(&a[..]).expect("ok"),
        Shape {
            name: "t".into(),
            is_dir: true
        }
    );
    let f = archive(&[("f", F, "x")]);
    assert!(!check_archive(&f[..]).expect("ok").is_dir);
    // a copied symlink itself may point next to it, in the destination
    let l = archive(&[("l", L, "x")]);
    assert!(!check_archive(&l[..]).expect("ok").is_dir);
}

#[test]
fn check_refuses_escapes() {
    let cases: &[&[(&str, EntryType, &str)]] = &[
        &[("t", D, ""), ("t/../x", F, "")],
        &[("/etc", D, "")],
        &[("t", D, ""), ("other", F, "")],
        &[("t", D, ""), ("t/l", L, "/etc/passwd")],
        &[("t", D, ""), ("t/l", L, "../../x")],
        &[("t", D, ""), ("t/l", L, "../x")],
        &[("t", D, ""), ("t/h", H, "other/x")],
        &[("t", D, ""), ("t/h", H, "../x")],
        &[("l", L, "../x")],
        &[("l", L, "/etc/passwd")],
        &[("f", F, ""), ("f/x", F, "")],
        &[("t", D, ""), ("t/fifo", EntryType::Fifo, "")],
        &[],
    ];
    for c in cases {
        let a = archive(c);
        assert!(check_archive(&a[..]).is_err(), "accepted {c:?}");
    }
}

#[test]
fn chained_symlinks_out_of_the_tree_are_refused() {
    // Each target looks contained on its own; resolved through the first
    // link, the second leaves the tree (t/a/u is t, so u/../.. is t's parent's parent).
    let chained: &[&[(&str, EntryType, &str)]] = &[
        &[
            ("t", D, ""),
            ("t/a", D, ""),
            ("t/a/u", L, ".."),
            ("t/a/x", L, "u/../.."),
        ],
        // the link that does the damage comes first; the one it goes through later
        &[
            ("t", D, ""),
            ("t/a", D, ""),
            ("t/a/x", L, "u/../.."),
            ("t/a/u", L, ".."),
        ],
        // a chain ending at an absolute target
        &[("t", D, ""), ("t/u", L, "v"), ("t/v", L, "/etc")],
        &[("t", D, ""), ("t/u", L, "v/x"), ("t/v", L, "/etc")],
        // a loop
        &[("t", D, ""), ("t/u", L, "v"), ("t/v", L, "u")],
    ];
    for c in chained {
        let a = archive(c);
        let e = check_archive(&a[..]).expect_err("a chain out of the tree");
        assert!(matches!(e, TransferError::LinkOutside { .. }), "{c:?}: {e}");
        assert!(e.to_string().contains("points outside"), "{e}");
    }
}

#[test]
fn chained_symlink_tar_writes_nothing_outside() {
    // The whole attack, as `vm cp` runs it: check, then unpack.
    let tmp = tempfile::tempdir().expect("tmp");
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).expect("mkdir");
    let a = archive(&[
        ("t", D, ""),
        ("t/a", D, ""),
        ("t/a/u", L, ".."),
        ("t/a/x", L, "u/../.."),
        ("t/a/x/pwned", F, "x"),
    ]);
    assert!(check_archive(&a[..]).is_err());
    let entries: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("ls")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(entries, ["dst"], "something was written");
    assert_eq!(std::fs::read_dir(&dst).expect("ls").count(), 0);
}

#[test]
fn unsupported_types_are_named_in_words() {
    let a = archive(&[("t", D, ""), ("t/p", EntryType::Fifo, "")]);
    let e = check_archive(&a[..]).expect_err("fifo").to_string();
    assert!(e.contains("it is a fifo"), "{e}");
    assert!(!e.contains("Fifo"), "{e}");
}

#[test]
fn host_unpacking_masks_setuid_setgid_and_world_writable_bits() {
    let tmp = tempfile::tempdir().expect("tmp");
    let a = archive_modes(&[
        ("t", D, "", 0o7777),
        ("t/suid", F, "#!/bin/sh\n", 0o6777),
        ("t/plain", F, "x", 0o640),
    ]);
    let shape = check_archive(&a[..]).expect("ok");
    for dst in [tmp.path().join("into"), tmp.path().join("new")] {
        if dst.ends_with("into") {
            std::fs::create_dir(&dst).expect("mkdir");
        }
        unpack_to(&a[..], &shape, &dst).expect("unpack");
        let root = if dst.ends_with("into") {
            dst.join("t")
        } else {
            dst.clone()
        };
        let mode = |p: &Path| {
            std::fs::symlink_metadata(p)
                .expect("stat")
                .permissions()
                .mode()
        };
        let suid = mode(&root.join("suid"));
        assert_eq!(suid & UNSAFE_MODE_BITS, 0, "{suid:o}");
        assert_eq!(suid & 0o7777, 0o775, "{suid:o}");
        let dir = mode(&root);
        assert_eq!(dir & UNSAFE_MODE_BITS, 0, "{dir:o}");
        assert_eq!(mode(&root.join("plain")) & 0o7777, 0o640);
    }
}

#[test]
fn unpack_follows_cp_r_and_stays_inside() {
    let tmp = tempfile::tempdir().expect("tmp");
    let a = archive(&[("t", D, ""), ("t/a", F, "hello"), ("t/l", L, "a")]);
    let shape = check_archive(&a[..]).expect("ok");

    // into an existing directory: under its own name
    let into = tmp.path().join("into");
    std::fs::create_dir(&into).expect("mkdir");
    unpack_to(&a[..], &shape, &into).expect("unpack");
    assert_eq!(
        std::fs::read_to_string(into.join("t/a")).expect("r"),
        "hello"
    );
    assert_eq!(
        std::fs::read_link(into.join("t/l")).expect("l"),
        Path::new("a")
    );

    // to a new name: renamed, no staging left behind
    let new = tmp.path().join("renamed");
    unpack_to(&a[..], &shape, &new).expect("unpack");
    assert_eq!(std::fs::read_to_string(new.join("a")).expect("r"), "hello");
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        left.iter().all(|n| !n.starts_with(".banger-cp-")),
        "{left:?}"
    );

    // a directory never replaces a file; a file replaces a file
    let file = tmp.path().join("file");
    std::fs::write(&file, "old").expect("w");
    assert!(unpack_to(&a[..], &shape, &file).is_err());
    let f = archive(&[("g", F, "new")]);
    let fshape = check_archive(&f[..]).expect("ok");
    unpack_to(&f[..], &fshape, &file).expect("replace");
    assert_eq!(std::fs::read_to_string(&file).expect("r"), "new");

    // missing parent, trailing slash on a missing directory
    assert!(unpack_to(&f[..], &fshape, &tmp.path().join("no/such")).is_err());
    let slash = PathBuf::from(format!("{}/nodir/", tmp.path().display()));
    assert!(unpack_to(&f[..], &fshape, &slash).is_err());
}

#[test]
fn unpack_never_writes_through_a_planted_symlink() {
    // Even if the destination already holds a symlink where the tree
    // goes, the contained unpacker refuses to write through it.
    let tmp = tempfile::tempdir().expect("tmp");
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).expect("mkdir");
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).expect("mkdir");
    std::os::unix::fs::symlink(&outside, dst.join("t")).expect("symlink");
    let a = archive(&[("t", D, ""), ("t/a", F, "x")]);
    let shape = check_archive(&a[..]).expect("ok");
    let _ = unpack_to(&a[..], &shape, &dst);
    assert!(!outside.join("a").exists(), "wrote through the symlink");
}

/// A guest claims a 20 GiB PAX header (zeros generated as they are read):
/// the check fails at the header, without reading or storing its data.
#[test]
fn a_20_gib_pax_header_from_a_guest_is_refused_unread() {
    let mut h = header(EntryType::XHeader, 0o644);
    h.set_size(20 << 30);
    h.set_cksum();
    // 8 MiB of the claimed 20 GiB follow: a reader that took the header's
    // data would reach their end and fail with another error.
    let head: &[u8] = h.as_bytes();
    let src = std::io::Read::chain(head, std::io::Read::take(std::io::repeat(0), 8 << 20));
    let err = check_archive(src).expect_err("refused");
    assert!(err.to_string().contains("PAX extended header"), "{err}");
}
