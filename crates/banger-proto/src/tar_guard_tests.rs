//! The guard against real archives from the `tar` crate's builder and a
//! generated 20 GiB PAX header that is streamed, never stored.

use super::*;

/// A raw header block of `ty` with `size`, its checksum filled in.
fn header(ty: u8, size: u64, name: &str) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name).expect("name");
    h.set_size(size);
    h.set_entry_type(tar::EntryType::new(ty));
    h.set_mode(0o644);
    h.set_cksum();
    h.as_bytes().to_vec()
}

/// `head`, then 8 MiB of zeros: a reader that took a bomb header's data
/// would reach their end and fail with another error.
fn then_zeros(head: Vec<u8>) -> impl Read {
    io::Cursor::new(head).chain(io::repeat(0).take(8 << 20))
}

fn entries_of(r: impl Read) -> io::Result<Vec<String>> {
    let mut a = tar::Archive::new(r);
    let mut out = Vec::new();
    for e in a.entries()? {
        let e = e?;
        out.push(String::from_utf8_lossy(&e.path_bytes()).into_owned());
    }
    Ok(out)
}

#[test]
fn a_20_gib_pax_header_is_refused_before_its_data_is_read() {
    let src = then_zeros(header(b'x', 20 << 30, "PaxHeaders/bomb"));
    let err = entries_of(TarGuard::new(src)).expect_err("refused");
    assert!(
        err.to_string()
            .contains("PAX extended header of 21474836480 bytes"),
        "{err}"
    );
    for ty in [b'L', b'K'] {
        let src = then_zeros(header(ty, 2 << 20, "././@LongLink"));
        let err = entries_of(TarGuard::new(src)).expect_err("refused");
        assert!(err.to_string().contains("GNU long name/link"), "{err}");
    }
}

#[test]
fn real_archives_pass_unchanged() {
    let mut b = tar::Builder::new(Vec::new());
    let long = format!("{}/file", "d".repeat(300));
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    h.set_mode(0o644);
    b.append_data(&mut h, &long, &b"hello"[..])
        .expect("long name");
    // A PAX header with records, then an entry it describes.
    b.append_pax_extensions([("SCHILY.xattr.user.k", &b"v"[..]), ("path", b"pax/named")])
        .expect("pax");
    let mut h = tar::Header::new_ustar();
    h.set_size(1000);
    h.set_mode(0o644);
    b.append_data(&mut h, "short", &[7u8; 1000][..])
        .expect("data");
    let mut h = tar::Header::new_ustar();
    h.set_size(0);
    b.append_data(&mut h, "after", &b""[..]).expect("after");
    let bytes = b.into_inner().expect("tar");
    let plain = entries_of(&bytes[..]).expect("plain");
    assert_eq!(
        entries_of(TarGuard::new(&bytes[..])).expect("guarded"),
        plain
    );
    assert_eq!(plain, [long.as_str(), "pax/named", "after"]);
    let mut copy = Vec::new();
    TarGuard::new(&bytes[..])
        .read_to_end(&mut copy)
        .expect("read");
    assert_eq!(copy, bytes, "not a byte changed");
}

#[test]
fn the_pax_size_override_is_followed() {
    // PAX says the next entry holds 1024 bytes while its header says 0:
    // the guard must find the next header where the tar crate does, and
    // so refuse the bomb hidden after those 1024 bytes.
    let mut pax = Vec::new();
    pax.extend_from_slice(b"13 size=1024\n");
    let mut s = header(b'x', pax.len() as u64, "PaxHeaders/f");
    s.extend_from_slice(&pax);
    s.resize(s.len().div_ceil(512) * 512, 0);
    s.extend_from_slice(&header(b'0', 0, "f"));
    s.extend_from_slice(&[1u8; 1024]);
    s.extend_from_slice(&header(b'L', 4 << 20, "././@LongLink"));
    let err = entries_of(TarGuard::new(then_zeros(s))).expect_err("refused");
    assert!(err.to_string().contains("GNU long name/link"), "{err}");
    assert_eq!(pax_size(b"13 size=1024\n"), Some(1024));
    assert_eq!(pax_size(b"99 size=1\n"), None, "a record past the end");
}
