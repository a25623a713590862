//! Memory bombs in a layer, applied by the real flattener: a 20 GiB PAX
//! header (zeros generated as they are read, never stored) and an xattr bomb (many
//! entries each carrying the largest allowed xattr).

use std::io::{self, Read};

use banger_oci::{Flattener, Limits};

#[test]
fn a_20_gib_pax_header_fails_at_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut f = Flattener::new(&dir.path().join("root"), Limits::default()).expect("flattener");
    let mut h = tar::Header::new_ustar();
    h.set_path("PaxHeaders/bomb").expect("path");
    h.set_size(20 << 30);
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_cksum();
    // 8 MiB of the claimed 20 GiB follow: a reader that took the header's
    // data would hit their end and fail otherwise.
    let src = h.as_bytes().chain(io::repeat(0).take(8 << 20));
    let started = std::time::Instant::now();
    let err = f.apply_layer("bomb", src, None).expect_err("refused");
    assert!(err.to_string().contains("PAX extended header"), "{err}");
    assert!(started.elapsed().as_secs() < 10, "{:?}", started.elapsed());
}

#[test]
fn an_xattr_bomb_is_refused_per_layer() {
    let mut b = tar::Builder::new(Vec::new());
    let value = vec![b'x'; 60 * 1024];
    for i in 0..40 {
        b.append_pax_extensions([("SCHILY.xattr.user.bomb", &value[..])])
            .expect("pax");
        let mut h = tar::Header::new_ustar();
        h.set_size(0);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        b.append_data(&mut h, format!("f{i}"), &b""[..])
            .expect("entry");
    }
    let layer = b.into_inner().expect("tar");
    let dir = tempfile::tempdir().expect("tmp");
    let limits = Limits {
        max_xattr_bytes: 1 << 20,
        ..Limits::default()
    };
    let mut f = Flattener::new(&dir.path().join("root"), limits).expect("flattener");
    let err = f.apply_layer("xattrs", &layer[..], None).expect_err("bomb");
    assert!(err.to_string().contains("xattr bomb"), "{err}");
    // Under the cap the same entries are fine.
    let dir = tempfile::tempdir().expect("tmp");
    let mut f = Flattener::new(&dir.path().join("root"), Limits::default()).expect("flattener");
    f.apply_layer("xattrs", &layer[..], None)
        .expect("2.4 MiB is allowed");
    assert_eq!(f.finish().expect("finish").xattrs.len(), 40);
}
