//! Feeds arbitrary bytes to banger's DNS parsers: the `.vm` server's query
//! handling (`wire::answer`, `question_name`) and the reader of upstream
//! answers that decides which addresses an allowlisted guest is granted
//! (`answers::resolved`). Invariants: no panic; a reply carries the
//! query's id and the QR bit; a granted name is never longer than DNS
//! allows.
#![no_main]

use std::net::Ipv4Addr;

use banger_dns::{answers, wire};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let names = |label: &str| (label == "box").then_some(Ipv4Addr::new(172, 16, 0, 2));
    if let Some(r) = wire::answer(data, &names) {
        assert!(r.len() >= 12);
        assert_eq!(&r[..2], &data[..2]);
        assert!(r[2] & 0x80 != 0);
    }
    if let Some(n) = wire::question_name(data) {
        assert!(n.len() <= 254);
    }
    if let Some(got) = answers::resolved(data) {
        assert!(got.name.len() <= 254);
        assert!(got.addrs.len() <= 256);
    }
});
