//! [`create_owned_dir`] against the swaps an owner could try. Needs root
//! (it chowns); skips otherwise. Everything happens in a temp dir.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

use super::*;

const WHO: Untrusted = Untrusted {
    uid: 65534,
    gid: 65534,
};

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let is = unsafe { libc::geteuid() } == 0;
    if !is {
        eprintln!("SKIP: owned_dir tests need root (they chown)");
    }
    is
}

/// A root-owned 0755 temp dir (tempdir makes 0700).
fn base() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tmp");
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    d
}

fn owner_of(p: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).expect("meta");
    (m.uid(), m.gid())
}

fn lchown(p: &Path, uid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(uid)).expect("lchown");
}

#[test]
fn creates_the_chain_and_hands_over_only_the_last_directory() {
    if !root() {
        return;
    }
    let b = base();
    let dir = b.path().join("prefix/state");
    assert!(create_owned_dir(&dir, 0o700, Some((WHO.uid, WHO.gid)), WHO).expect("create"));
    assert_eq!(owner_of(&dir), (WHO.uid, WHO.gid));
    assert_eq!(
        std::fs::metadata(&dir).expect("m").permissions().mode() & 0o7777,
        0o700
    );
    assert_eq!(owner_of(&b.path().join("prefix")), (0, 0));
    // Existing: left exactly as it is.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).expect("chmod");
    assert!(!create_owned_dir(&dir, 0o700, Some((0, 0)), WHO).expect("exists"));
    assert_eq!(owner_of(&dir), (WHO.uid, WHO.gid));
    // Root's own links are followed.
    std::os::unix::fs::symlink(b.path().join("prefix"), b.path().join("alias")).expect("ln");
    let via = b.path().join("alias/cache");
    assert!(create_owned_dir(&via, 0o700, Some((WHO.uid, WHO.gid)), WHO).expect("via link"));
    assert_eq!(owner_of(&b.path().join("prefix/cache")), (WHO.uid, WHO.gid));
}

#[test]
fn a_parent_the_owner_can_write_is_refused() {
    if !root() {
        return;
    }
    let b = base();
    let p = b.path().join("owners");
    std::fs::create_dir(&p).expect("mkdir");
    lchown(&p, WHO.uid);
    let err = create_owned_dir(&p.join("state"), 0o700, Some((WHO.uid, WHO.gid)), WHO)
        .expect_err("owner-writable parent");
    assert!(matches!(err, SystemError::UnsafeDir { .. }), "{err}");
    assert!(
        err.to_string().contains("can be written by uid 65534"),
        "{err}"
    );
    assert!(!p.join("state").exists(), "nothing was created");
}

#[test]
fn the_prefix_symlink_swap_changes_no_owner() {
    if !root() {
        return;
    }
    let b = base();
    // What root must never hand over, and a sticky world-writable place
    // like /tmp where the owner plants links before `system run --prefix`.
    let victim = b.path().join("etc");
    std::fs::create_dir(&victim).expect("mkdir");
    let tmp = b.path().join("tmp");
    std::fs::create_dir(&tmp).expect("mkdir");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    // The prefix itself, then a directory inside it, swapped for links.
    for (link, dir) in [
        (tmp.join("play"), tmp.join("play/state")),
        (tmp.join("state"), tmp.join("state")),
    ] {
        std::os::unix::fs::symlink(&victim, &link).expect("ln");
        lchown(&link, WHO.uid);
        let err = create_owned_dir(&dir, 0o700, Some((WHO.uid, WHO.gid)), WHO)
            .expect_err("the owner's link");
        assert!(
            err.to_string().contains("symlink owned by uid 65534"),
            "{err}"
        );
        assert_eq!(owner_of(&victim), (0, 0), "{}", dir.display());
        assert!(!victim.join("state").exists());
        std::fs::remove_file(&link).expect("rm");
    }
    // Without the links the sticky /tmp-like parent is fine.
    let dir = tmp.join("play/state");
    assert!(create_owned_dir(&dir, 0o700, Some((WHO.uid, WHO.gid)), WHO).expect("create"));
    assert_eq!(owner_of(&dir), (WHO.uid, WHO.gid));
    assert_eq!(owner_of(&victim), (0, 0));
}
