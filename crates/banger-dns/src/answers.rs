//! Reading an upstream's answer before it is relayed to a guest: the name
//! asked and the IPv4 addresses (with TTLs) the answer gives for it. An
//! egress allowlist opens the firewall for exactly those addresses, so the
//! parser follows the answer's CNAME chain from the question name and
//! counts only A records on that chain — an upstream cannot grant an
//! unrelated name's address by stuffing extra records into the answer.
//!
//! The input comes from the network: every read is bounds-checked, names
//! may be compressed (pointers only backwards, bounded hops), and anything
//! malformed yields `None`.

use std::net::Ipv4Addr;

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const CLASS_IN: u16 = 1;
/// Most records looked at in one answer; more is not a real answer.
const MAX_RECORDS: usize = 256;
/// Most CNAME links followed from the question name.
const MAX_CHAIN: usize = 16;

/// What a response says about its question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The question name, lower-case, without the final dot.
    pub name: String,
    /// A records on the question's CNAME chain, `(address, ttl)`.
    pub addrs: Vec<(Ipv4Addr, u32)>,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn u8(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }
    fn u32(&mut self) -> Option<u32> {
        Some((u32::from(self.u16()?) << 16) | u32::from(self.u16()?))
    }

    /// A possibly compressed name, read at the cursor; the cursor ends
    /// after the name's bytes in place (not after pointer targets).
    fn name(&mut self) -> Option<String> {
        let mut labels: Vec<String> = Vec::new();
        let mut pos = self.pos;
        let mut resume = None;
        let mut hops = 0;
        let mut total = 0usize;
        loop {
            let len = *self.buf.get(pos)?;
            match len {
                0 => {
                    self.pos = resume.unwrap_or(pos + 1);
                    return Some(labels.join("."));
                }
                1..=63 => {
                    let l = usize::from(len);
                    let bytes = self.buf.get(pos + 1..pos + 1 + l)?;
                    total += l + 1;
                    if total > 254 {
                        return None;
                    }
                    labels.push(String::from_utf8_lossy(bytes).to_ascii_lowercase());
                    pos += 1 + l;
                }
                0xc0..=0xff => {
                    let target =
                        usize::from(u16::from_be_bytes([len, *self.buf.get(pos + 1)?]) & 0x3fff);
                    // Only backwards: a forward or self pointer could loop.
                    hops += 1;
                    if target >= pos || hops > 32 {
                        return None;
                    }
                    resume.get_or_insert(pos + 2);
                    pos = target;
                }
                _ => return None,
            }
        }
    }
}

/// The question name and the addresses a standard response (QR set, one
/// question, NOERROR) gives for it; `None` for anything else.
pub fn resolved(resp: &[u8]) -> Option<Resolved> {
    let mut c = Cursor { buf: resp, pos: 0 };
    let _id = c.u16()?;
    let flags = c.u16()?;
    let (qd, an) = (c.u16()?, c.u16()?);
    let _ns_ar = (c.u16()?, c.u16()?);
    if flags & 0x8000 == 0 || (flags >> 11) & 0x0f != 0 || flags & 0x000f != 0 || qd != 1 {
        return None;
    }
    let name = c.name()?;
    let (_qtype, _qclass) = (c.u16()?, c.u16()?);
    let mut records = Vec::new();
    for _ in 0..usize::from(an).min(MAX_RECORDS) {
        let owner = c.name()?;
        let (rtype, class, ttl, rdlen) = (c.u16()?, c.u16()?, c.u32()?, usize::from(c.u16()?));
        let start = c.pos;
        let end = start.checked_add(rdlen)?;
        resp.get(start..end)?;
        let data = match (rtype, class, rdlen) {
            (TYPE_A, CLASS_IN, 4) => Some(Rdata::A(Ipv4Addr::new(
                resp[start],
                resp[start + 1],
                resp[start + 2],
                resp[start + 3],
            ))),
            (TYPE_CNAME, CLASS_IN, _) => {
                let mut t = Cursor {
                    buf: resp,
                    pos: start,
                };
                Some(Rdata::Cname(t.name()?))
            }
            _ => None,
        };
        c.pos = end;
        if let Some(d) = data {
            records.push((owner, ttl, d));
        }
    }
    let mut chain = vec![name.clone()];
    for _ in 0..MAX_CHAIN {
        let last = chain.last()?;
        let next = records.iter().find_map(|(o, _, d)| match d {
            Rdata::Cname(t) if o == last && !chain.contains(t) => Some(t.clone()),
            _ => None,
        });
        match next {
            Some(t) => chain.push(t),
            None => break,
        }
    }
    let addrs = records
        .iter()
        .filter_map(|(o, ttl, d)| match d {
            Rdata::A(a) if chain.contains(o) => Some((*a, *ttl)),
            _ => None,
        })
        .collect();
    Some(Resolved { name, addrs })
}

enum Rdata {
    A(Ipv4Addr),
    Cname(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for l in n.split('.').filter(|l| !l.is_empty()) {
            out.push(l.len() as u8);
            out.extend_from_slice(l.as_bytes());
        }
        out.push(0);
        out
    }

    fn rr(owner: &[u8], rtype: u16, ttl: u32, data: &[u8]) -> Vec<u8> {
        let mut out = owner.to_vec();
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
        out
    }

    fn response(q: &str, answers: &[Vec<u8>]) -> Vec<u8> {
        let mut out = vec![0x12, 0x34, 0x81, 0x80, 0, 1];
        out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&name(q));
        out.extend_from_slice(&[0, 1, 0, 1]);
        for a in answers {
            out.extend_from_slice(a);
        }
        out
    }

    #[test]
    fn follows_the_cname_chain_with_compressed_names() {
        // github.com CNAME (ptr to question) → lb.github.net, A 140.82.112.3,
        // plus an unrelated A record the upstream slipped in.
        let ptr_q = [0xc0, 12];
        let mut resp = response("GitHub.com", &[]);
        let an = [
            rr(&ptr_q, TYPE_CNAME, 300, &name("lb.github.net")),
            rr(&name("lb.github.net"), TYPE_A, 60, &[140, 82, 112, 3]),
            rr(&name("evil.example"), TYPE_A, 60, &[6, 6, 6, 6]),
        ];
        resp[7] = 3;
        for a in &an {
            resp.extend_from_slice(a);
        }
        let r = resolved(&resp).expect("parsed");
        assert_eq!(r.name, "github.com");
        assert_eq!(r.addrs, vec![(Ipv4Addr::new(140, 82, 112, 3), 60)]);
    }

    #[test]
    fn refuses_what_is_not_a_plain_answer() {
        let ok = response("a.example", &[rr(&[0xc0, 12], TYPE_A, 5, &[1, 2, 3, 4])]);
        assert_eq!(resolved(&ok).map(|r| r.addrs.len()), Some(1));
        let mut query = ok.clone();
        query[2] &= 0x7f;
        assert!(resolved(&query).is_none(), "a query");
        let mut nx = ok.clone();
        nx[3] |= 3;
        assert!(resolved(&nx).is_none(), "NXDOMAIN");
        for cut in 0..ok.len() {
            let _ = resolved(&ok[..cut]);
        }
        // A pointer to itself and a forward pointer.
        let mut looped = response("a.example", &[]);
        looped[7] = 1;
        let at = looped.len() as u16;
        looped.extend_from_slice(&rr(&(0xc000 | at).to_be_bytes(), TYPE_A, 5, &[1, 2, 3, 4]));
        assert!(resolved(&looped).is_none());
    }
}
