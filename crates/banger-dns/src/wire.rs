//! DNS message handling for the `.vm` zone: a deliberately small parser
//! that understands exactly what a stub resolver sends (one question,
//! optionally an EDNS OPT record) and answers or rejects it. Anything it
//! cannot parse is dropped (`None`) or answered FORMERR; nothing here can
//! panic on input (no indexing without a bounds check).

use std::net::Ipv4Addr;

/// The zone banger is authoritative for.
pub const ZONE: &str = "vm";
/// TTL of A answers. Short: VMs come and go and get renamed.
pub const ANSWER_TTL: u32 = 5;
/// Largest query accepted; anything longer is dropped unread.
pub const MAX_QUERY_LEN: usize = 4096;
/// UDP payload size advertised in EDNS answers (the DNS flag day value).
pub const EDNS_PAYLOAD: u16 = 1232;

const TYPE_A: u16 = 1;
const TYPE_OPT: u16 = 41;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;
const CLASS_ANY: u16 = 255;

const RCODE_NOERROR: u8 = 0;
const RCODE_FORMERR: u8 = 1;
const RCODE_SERVFAIL: u8 = 2;
const RCODE_NXDOMAIN: u8 = 3;
const RCODE_NOTIMP: u8 = 4;
const RCODE_REFUSED: u8 = 5;

/// What a name in the zone resolves to.
pub trait Lookup {
    /// `label` is the lower-cased single label before `.vm`.
    fn lookup(&self, label: &str) -> Option<Ipv4Addr>;
}

impl<F: Fn(&str) -> Option<Ipv4Addr>> Lookup for F {
    fn lookup(&self, label: &str) -> Option<Ipv4Addr> {
        self(label)
    }
}

struct Question<'a> {
    /// The question section exactly as received (name, type, class), echoed
    /// back so the client's case and encoding are preserved.
    raw: &'a [u8],
    labels: Vec<String>,
    qtype: u16,
    qclass: u16,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        let s = self.buf.get(self.pos..self.pos + 2)?;
        self.pos += 2;
        Some(u16::from_be_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        Some((u32::from(self.u16()?) << 16) | u32::from(self.u16()?))
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.buf.get(self.pos..self.pos + n)?;
        self.pos += n;
        Some(())
    }

    /// An uncompressed name (queries have nothing to point back to).
    fn name(&mut self) -> Option<Vec<String>> {
        let mut labels = Vec::new();
        let mut total = 0usize;
        loop {
            let len = usize::from(self.u8()?);
            if len == 0 {
                return Some(labels);
            }
            if len > 63 {
                return None; // compression pointer or reserved label type
            }
            total += len + 1;
            if total > 254 {
                return None;
            }
            let bytes = self.buf.get(self.pos..self.pos + len)?;
            self.pos += len;
            labels.push(String::from_utf8_lossy(bytes).to_ascii_lowercase());
        }
    }
}

fn parse_question<'a>(r: &mut Reader<'a>) -> Option<Question<'a>> {
    let start = r.pos;
    let labels = r.name()?;
    let qtype = r.u16()?;
    let qclass = r.u16()?;
    Some(Question {
        raw: r.buf.get(start..r.pos)?,
        labels,
        qtype,
        qclass,
    })
}

/// `Some(version)` if the additional section holds a well-formed OPT record.
fn parse_edns(r: &mut Reader<'_>, arcount: u16) -> Option<u8> {
    for _ in 0..arcount {
        let name = r.name()?;
        let rtype = r.u16()?;
        let _class = r.u16()?;
        let ttl = r.u32()?;
        let rdlen = r.u16()?;
        r.skip(usize::from(rdlen))?;
        if rtype == TYPE_OPT && name.is_empty() {
            return Some((ttl >> 16) as u8);
        }
    }
    None
}

/// `counts` = question, answer, additional (authority is always empty).
fn header(out: &mut Vec<u8>, id: u16, rd: bool, aa: bool, rcode: u8, counts: [u16; 3]) {
    out.extend_from_slice(&id.to_be_bytes());
    let b2 = 0x80 | if aa { 0x04 } else { 0 } | if rd { 0x01 } else { 0 };
    out.push(b2);
    out.push(rcode & 0x0f);
    let [qd, an, ar] = counts;
    for v in [qd, an, 0, ar] {
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// Whether `query` is a standard query (opcode 0) with one question for a
/// name outside [`ZONE`]: what a forwarder may relay. Everything else is
/// for [`answer`].
pub fn outside_zone(query: &[u8]) -> bool {
    if query.len() < 12 || query.len() > MAX_QUERY_LEN {
        return false;
    }
    let (flags, qdcount) = (query[2], u16::from_be_bytes([query[4], query[5]]));
    if flags & 0x80 != 0 || (flags >> 3) & 0x0f != 0 || qdcount != 1 {
        return false;
    }
    let mut r = Reader {
        buf: query,
        pos: 12,
    };
    parse_question(&mut r).is_some_and(|q| q.labels.last().is_none_or(|l| l != ZONE))
}

/// The question name of a query [`outside_zone`] accepts, lower-case and
/// without the final dot (`""` for the root); `None` for anything else,
/// and for a label holding a dot (one label `github.com` must not pass
/// for the two-label name).
pub fn question_name(query: &[u8]) -> Option<String> {
    if !outside_zone(query) {
        return None;
    }
    let mut r = Reader {
        buf: query,
        pos: 12,
    };
    let q = parse_question(&mut r)?;
    if q.labels.iter().any(|l| l.contains('.')) {
        return None;
    }
    Some(q.labels.join("."))
}

/// SERVFAIL for `query` (no upstream answered); `None` when it is too short
/// to carry an id.
pub fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let id = u16::from_be_bytes([*query.first()?, *query.get(1)?]);
    let rd = query.get(2)? & 0x01 != 0;
    let mut out = Vec::with_capacity(12);
    header(&mut out, id, rd, false, RCODE_SERVFAIL, [0; 3]);
    Some(out)
}

/// Answer one query. `None` means drop it silently: too short to carry an
/// id, oversized, or itself a response (answering those invites loops and
/// reflection).
pub fn answer(query: &[u8], names: &impl Lookup) -> Option<Vec<u8>> {
    if query.len() < 12 || query.len() > MAX_QUERY_LEN {
        return None;
    }
    let id = u16::from_be_bytes([query[0], query[1]]);
    let flags = query[2];
    if flags & 0x80 != 0 {
        return None;
    }
    let rd = flags & 0x01 != 0;
    let opcode = (flags >> 3) & 0x0f;
    let qdcount = u16::from_be_bytes([query[4], query[5]]);
    let arcount = u16::from_be_bytes([query[10], query[11]]);
    let mut out = Vec::with_capacity(128);
    if opcode != 0 {
        header(&mut out, id, rd, false, RCODE_NOTIMP, [0; 3]);
        return Some(out);
    }
    let mut r = Reader {
        buf: query,
        pos: 12,
    };
    let q = match (qdcount, parse_question(&mut r)) {
        (1, Some(q)) => q,
        _ => {
            header(&mut out, id, rd, false, RCODE_FORMERR, [0; 3]);
            return Some(out);
        }
    };
    // Answer and authority sections of a query are ignored, but must be
    // skipped to reach the OPT record; a query that has them gets no EDNS.
    let ancount = u16::from_be_bytes([query[6], query[7]]);
    let nscount = u16::from_be_bytes([query[8], query[9]]);
    let edns = if ancount == 0 && nscount == 0 {
        parse_edns(&mut r, arcount)
    } else {
        None
    };

    let in_zone = q.labels.last().is_some_and(|l| l == ZONE);
    let class_ok = q.qclass == CLASS_IN || q.qclass == CLASS_ANY;
    let (rcode, aa, ip) = if !in_zone || !class_ok {
        (RCODE_REFUSED, false, None)
    } else if edns.is_some_and(|v| v > 0) {
        // BADVERS is signalled through the OPT record below.
        (RCODE_NOERROR, true, None)
    } else {
        match q.labels.as_slice() {
            // The apex exists (it is the zone) but has no A record.
            [_zone] => (RCODE_NOERROR, true, None),
            [label, _zone] => match names.lookup(label) {
                Some(ip) => (RCODE_NOERROR, true, Some(ip)),
                None => (RCODE_NXDOMAIN, true, None),
            },
            _ => (RCODE_NXDOMAIN, true, None),
        }
    };
    let ip = ip.filter(|_| q.qtype == TYPE_A || q.qtype == TYPE_ANY);
    let badvers = edns.is_some_and(|v| v > 0);
    header(
        &mut out,
        id,
        rd,
        aa,
        rcode,
        [1, u16::from(ip.is_some()), u16::from(edns.is_some())],
    );
    out.extend_from_slice(q.raw);
    if let Some(ip) = ip {
        out.extend_from_slice(&[0xc0, 12]); // pointer to the question's name
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ANSWER_TTL.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    if edns.is_some() {
        out.push(0);
        out.extend_from_slice(&TYPE_OPT.to_be_bytes());
        out.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes());
        // Extended RCODE 1 (<< 4 | header 0) = BADVERS (16); version 0.
        let ttl: u32 = if badvers { 1 << 24 } else { 0 };
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn query(id: u16, name: &str, qtype: u16, edns: bool) -> Vec<u8> {
        let mut q = Vec::new();
        q.extend_from_slice(&id.to_be_bytes());
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(edns)]);
        for l in name.split('.').filter(|l| !l.is_empty()) {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        if edns {
            q.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
        }
        q
    }

    fn names(label: &str) -> Option<Ipv4Addr> {
        (label == "sandbox").then_some(Ipv4Addr::new(172, 16, 0, 2))
    }

    fn rcode(resp: &[u8]) -> u8 {
        resp[3] & 0x0f
    }
    fn ancount(resp: &[u8]) -> u16 {
        u16::from_be_bytes([resp[6], resp[7]])
    }

    #[test]
    fn known_name_gets_its_address() {
        let q = query(0x1234, "SandBox.VM.", TYPE_A, true);
        let r = answer(&q, &names).expect("answered");
        assert_eq!(&r[..2], &[0x12, 0x34]);
        assert_eq!(r[2] & 0x84, 0x84, "QR and AA set");
        assert_eq!(rcode(&r), RCODE_NOERROR);
        assert_eq!(ancount(&r), 1);
        let qlen = q.len() - 11 - 12; // minus OPT and header
        let ans = &r[12 + qlen..];
        assert_eq!(&ans[ans.len() - 11 - 4..ans.len() - 11], &[172, 16, 0, 2]);
        // The client's spelling is echoed back.
        assert!(r.windows(7).any(|w| w == b"SandBox"));
    }

    #[test]
    fn other_types_unknown_names_and_foreign_zones() {
        let r = answer(&query(1, "sandbox.vm", 28, false), &names).expect("answered");
        assert_eq!((rcode(&r), ancount(&r)), (RCODE_NOERROR, 0));
        let r = answer(&query(1, "nope.vm", TYPE_A, false), &names).expect("answered");
        assert_eq!((rcode(&r), r[2] & 0x04), (RCODE_NXDOMAIN, 0x04));
        let r = answer(&query(1, "a.sandbox.vm", TYPE_A, false), &names).expect("answered");
        assert_eq!(rcode(&r), RCODE_NXDOMAIN);
        for outside in ["example.com", "vm.example.com", "", "sandboxvm"] {
            let r = answer(&query(1, outside, TYPE_A, false), &names).expect("answered");
            assert_eq!(
                (rcode(&r), ancount(&r), r[2] & 0x04),
                (RCODE_REFUSED, 0, 0),
                "{outside}"
            );
        }
    }

    #[test]
    fn malformed_input_is_dropped_or_formerr() {
        assert!(answer(&[], &names).is_none());
        assert!(answer(&[0; 11], &names).is_none());
        assert!(answer(&vec![0; MAX_QUERY_LEN + 1], &names).is_none());
        let mut resp = query(1, "sandbox.vm", TYPE_A, false);
        resp[2] |= 0x80;
        assert!(
            answer(&resp, &names).is_none(),
            "responses are never answered"
        );
        let mut trunc = query(1, "sandbox.vm", TYPE_A, false);
        trunc.truncate(trunc.len() - 3);
        assert_eq!(
            answer(&trunc, &names).map(|r| rcode(&r)),
            Some(RCODE_FORMERR)
        );
        let mut ptr = query(1, "sandbox.vm", TYPE_A, false);
        ptr[12] = 0xc0;
        assert_eq!(answer(&ptr, &names).map(|r| rcode(&r)), Some(RCODE_FORMERR));
        let mut two = query(1, "sandbox.vm", TYPE_A, false);
        two[5] = 2;
        assert_eq!(answer(&two, &names).map(|r| rcode(&r)), Some(RCODE_FORMERR));
    }

    #[test]
    fn forwardable_queries_are_outside_the_zone() {
        assert!(outside_zone(&query(1, "example.com", TYPE_A, true)));
        assert!(outside_zone(&query(1, "vm.example.com", 28, false)));
        assert!(outside_zone(&query(1, "", 2, false)), "the root");
        assert!(!outside_zone(&query(1, "sandbox.vm", TYPE_A, false)));
        assert!(!outside_zone(&query(1, "VM", TYPE_A, false)));
        let mut resp = query(1, "example.com", TYPE_A, false);
        resp[2] |= 0x80;
        assert!(!outside_zone(&resp), "responses");
        let mut notify = query(1, "example.com", TYPE_A, false);
        notify[2] |= 4 << 3;
        assert!(!outside_zone(&notify), "other opcodes");
        let mut trunc = query(1, "example.com", TYPE_A, false);
        trunc.truncate(20);
        assert!(!outside_zone(&trunc));
        assert!(!outside_zone(&[0; 5]));
        let r = servfail(&query(0x4242, "example.com", TYPE_A, false)).expect("id");
        assert_eq!(
            (&r[..2], rcode(&r), r[2] & 0x81),
            (&[0x42, 0x42][..], 2, 0x81)
        );
        assert!(servfail(&[1]).is_none());
        assert_eq!(
            question_name(&query(1, "GitHub.COM.", TYPE_A, true)).as_deref(),
            Some("github.com")
        );
        assert_eq!(question_name(&query(1, "box.vm", TYPE_A, false)), None);
        assert_eq!(question_name(&trunc), None);
        let mut dotted = query(1, "githubxcom", TYPE_A, false);
        dotted[19] = b'.';
        assert_eq!(question_name(&dotted), None, "one label with a dot");
    }

    proptest! {
        #[test]
        fn never_panics_and_replies_carry_the_id(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Some(r) = answer(&bytes, &names) {
                prop_assert!(r.len() >= 12);
                prop_assert_eq!(&r[..2], &bytes[..2]);
                prop_assert!(r[2] & 0x80 != 0);
            }
        }

        #[test]
        fn mutated_queries_never_panic(pos in 0usize..40, val in any::<u8>()) {
            let mut q = query(7, "sandbox.vm", TYPE_A, true);
            if pos < q.len() { q[pos] = val; }
            let _ = answer(&q, &names);
        }
    }
}
