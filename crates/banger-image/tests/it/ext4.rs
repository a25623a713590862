use std::fs;

use banger_image::ext4::{self, Ext4Fixups, GuestEntry, NodeKind};
use banger_image::unpack::unpack_tar;

use crate::support::skip_without_e2fsprogs;

/// A tar as an unprivileged unpack would meet it: foreign owners, a device
/// node, a fifo, setuid, a 0000 file, a 0555 dir with content, links.
fn rootfs_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str,
                   ty: tar::EntryType,
                   mode: u32,
                   uid: u64,
                   gid: u64,
                   data: &[u8],
                   link: Option<&str>,
                   dev: Option<(u32, u32)>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(ty);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_size(data.len() as u64);
        if let Some(l) = link {
            h.set_link_name(l).expect("link");
        }
        if let Some((ma, mi)) = dev {
            h.set_device_major(ma).expect("major");
            h.set_device_minor(mi).expect("minor");
        }
        h.set_cksum();
        b.append_data(&mut h, path, data).expect("append");
    };
    use tar::EntryType as T;
    add("./", T::Directory, 0o755, 0, 0, b"", None, None);
    add("etc/", T::Directory, 0o755, 0, 0, b"", None, None);
    add(
        "etc/shadow",
        T::Regular,
        0o640,
        0,
        42,
        b"root:*:1::::::\n",
        None,
        None,
    );
    add("etc/secret", T::Regular, 0o000, 0, 0, b"s", None, None);
    add("home/", T::Directory, 0o755, 0, 0, b"", None, None);
    add(
        "home/dev/",
        T::Directory,
        0o750,
        1000,
        1000,
        b"",
        None,
        None,
    );
    add(
        "home/dev/notes",
        T::Regular,
        0o600,
        1000,
        1000,
        b"hi",
        None,
        None,
    );
    add("usr/bin/", T::Directory, 0o555, 0, 0, b"", None, None);
    add(
        "usr/bin/su",
        T::Regular,
        0o4755,
        0,
        0,
        b"#!/bin/sh\n",
        None,
        None,
    );
    add(
        "usr/bin/su-link",
        T::Link,
        0o4755,
        0,
        0,
        b"",
        Some("usr/bin/su"),
        None,
    );
    add(
        "usr/bin/sh-sym",
        T::Symlink,
        0o777,
        0,
        0,
        b"",
        Some("su"),
        None,
    );
    add("dev/", T::Directory, 0o755, 0, 0, b"", None, None);
    add("dev/null", T::Char, 0o666, 0, 0, b"", None, Some((1, 3)));
    add("dev/sda", T::Block, 0o660, 0, 6, b"", None, Some((8, 0)));
    add("run/initctl", T::Fifo, 0o600, 0, 0, b"", None, None);
    b.into_inner().expect("tar")
}

#[test]
fn unprivileged_unpack_then_fixups_restore_metadata() {
    if skip_without_e2fsprogs() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = dir.path().join("tree");
    let fixups = unpack_tar(std::io::Cursor::new(rootfs_tar()), &tree).expect("unpack");
    // The unpack kept the builder able to read everything.
    assert_eq!(
        fs::read(tree.join("etc/secret")).expect("read 0000 file"),
        b"s"
    );
    assert!(
        !tree.join("dev/null").exists(),
        "device nodes are created in the image, not the tree"
    );

    let img = dir.path().join("rootfs.ext4");
    let size =
        ext4::make_ext4(&tree, &img, 32 << 20, &fixups).expect("make_ext4 (runs e2fsck -fn)");
    assert_eq!(size.apparent, 32 << 20);
    assert!(
        size.allocated < size.apparent,
        "image must be sparse: {size:?}"
    );
    ext4::fsck(&img).expect("e2fsck -fn");

    let st = |p: &str| {
        ext4::stat(&img, p)
            .expect("stat")
            .unwrap_or_else(|| panic!("{p} missing"))
    };
    let s = st("/etc/shadow");
    assert_eq!((s.mode, s.uid, s.gid), (0o100640, 0, 42));
    assert_eq!(st("/etc/secret").mode, 0o100000);
    let s = st("/home/dev");
    assert_eq!((s.mode, s.uid, s.gid), (0o040750, 1000, 1000));
    let s = st("/home/dev/notes");
    assert_eq!((s.mode, s.uid, s.gid), (0o100600, 1000, 1000));
    assert_eq!(st("/usr/bin").mode, 0o040555);
    assert_eq!(st("/usr/bin/su").mode, 0o104755);
    assert_eq!(st("/usr/bin/sh-sym").mode & 0o170000, 0o120000);
    let s = st("/dev/null");
    assert_eq!((s.mode, s.uid, s.gid), (0o020666, 0, 0));
    let s = st("/dev/sda");
    assert_eq!((s.mode, s.gid), (0o060660, 6));
    assert_eq!(st("/run/initctl").mode, 0o010600);
    assert_eq!(
        ext4::read_file(&img, "/usr/bin/su-link").expect("hard link"),
        b"#!/bin/sh\n"
    );
}

#[test]
fn fixups_builder_and_path_checks() {
    if skip_without_e2fsprogs() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = dir.path().join("tree");
    fs::create_dir_all(tree.join("dev")).expect("mkdir");
    fs::write(tree.join("f"), "x").expect("write");
    let mut fx = Ext4Fixups::new();
    fx.set_owner("/f", 123, 456)
        .set_mode("/f", 0o100751)
        .mknod("/dev/console", NodeKind::Char, 5, 1, 0o600, 0, 5)
        .symlink("/link", "/f");
    let img = dir.path().join("i.ext4");
    ext4::make_ext4(&tree, &img, 8 << 20, &fx).expect("make_ext4");
    let f = ext4::stat(&img, "/f").expect("stat").expect("exists");
    assert_eq!((f.mode, f.uid, f.gid), (0o100751, 123, 456));
    let c = ext4::stat(&img, "/dev/console")
        .expect("stat")
        .expect("exists");
    assert_eq!((c.mode, c.gid), (0o020600, 5));
    assert!(ext4::stat(&img, "/nope").expect("stat").is_none());

    let mut bad = Ext4Fixups::new();
    bad.set_mode("/f", 0o644);
    assert!(bad.script().is_err(), "mode without type bits is refused");
    let mut bad = Ext4Fixups::new();
    bad.set_owner("/a\"b", 0, 0);
    assert!(bad.script().is_err(), "quotes are refused");
    assert!(ext4::check_guest_path("/etc/../x").is_err());
    assert!(ext4::check_guest_path("relative").is_err());

    // A failing debugfs command is an error, not silently ignored.
    let mut missing = Ext4Fixups::new();
    missing.set_owner("/does/not/exist", 1, 1);
    assert!(missing.apply(&img).is_err());
}

#[test]
fn write_files_replaces_creates_and_removes() {
    if skip_without_e2fsprogs() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = dir.path().join("tree");
    fs::create_dir_all(tree.join("etc/ssh")).expect("mkdir");
    fs::write(tree.join("etc/hostname"), "old\n").expect("write");
    fs::write(tree.join("etc/ssh/ssh_host_rsa_key"), "stale").expect("write");
    let img = dir.path().join("i.ext4");
    ext4::make_ext4(&tree, &img, 16 << 20, &Ext4Fixups::new()).expect("make_ext4");

    ext4::write_files(
        &img,
        &[
            GuestEntry::file("/etc/hostname", "sandbox\n", 0o644),
            GuestEntry::Remove {
                path: "/etc/ssh/ssh_host_rsa_key".into(),
            },
            GuestEntry::Remove {
                path: "/etc/ssh/never_existed".into(),
            },
            GuestEntry::file("/etc/ssh/ssh_host_ed25519_key", "PRIVATE", 0o600),
            GuestEntry::dir("/root/.ssh", 0o700),
            GuestEntry::file(
                "/root/.ssh/authorized_keys",
                "ssh-ed25519 AAAA test\n",
                0o600,
            ),
            GuestEntry::File {
                path: "/home/dev/.profile".into(),
                contents: b"export A=1\n".to_vec(),
                perm: 0o644,
                uid: 1000,
                gid: 1000,
            },
        ],
    )
    .expect("write_files");
    assert_eq!(
        ext4::read_file(&img, "/etc/hostname").expect("read"),
        b"sandbox\n"
    );
    assert!(
        ext4::stat(&img, "/etc/ssh/ssh_host_rsa_key")
            .expect("stat")
            .is_none()
    );
    let k = ext4::stat(&img, "/etc/ssh/ssh_host_ed25519_key")
        .expect("stat")
        .expect("key");
    assert_eq!((k.mode, k.uid), (0o100600, 0));
    assert_eq!(
        ext4::stat(&img, "/root").expect("stat").expect("root").mode,
        0o040755
    );
    assert_eq!(
        ext4::stat(&img, "/root/.ssh")
            .expect("stat")
            .expect("ssh")
            .mode,
        0o040700
    );
    let p = ext4::stat(&img, "/home/dev/.profile")
        .expect("stat")
        .expect("profile");
    assert_eq!((p.uid, p.gid), (1000, 1000));
    // Idempotent: writing the same set again works (replace, existing dirs).
    ext4::write_files(
        &img,
        &[
            GuestEntry::file("/etc/hostname", "again\n", 0o644),
            GuestEntry::dir("/root/.ssh", 0o700),
        ],
    )
    .expect("second write_files");
    assert_eq!(
        ext4::read_file(&img, "/etc/hostname").expect("read"),
        b"again\n"
    );
    ext4::fsck(&img).expect("fsck");

    let e = ext4::write_files(&img, &[GuestEntry::file("/etc/../x", "", 0o644)]).expect_err("..");
    assert!(e.to_string().contains(".."), "{e}");
}
