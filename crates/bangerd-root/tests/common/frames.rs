//! Hand-built Ethernet frames, as a guest with root can send them: any
//! ethertype, any VLAN tags, any source MAC and address, forged ARP.

use std::net::Ipv4Addr;

pub const ETH_IP: u16 = 0x0800;
pub const ETH_ARP: u16 = 0x0806;
pub const ETH_8021Q: u16 = 0x8100;
pub const ETH_8021AD: u16 = 0x88a8;
pub const BROADCAST: [u8; 6] = [0xff; 6];

/// Ethernet header with zero or more VLAN tags (`(tpid, vid)`, outermost
/// first) around `payload` of type `ethertype`.
pub fn eth(
    dst: [u8; 6],
    src: [u8; 6],
    tags: &[(u16, u16)],
    ethertype: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(64 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    for (tpid, vid) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    while f.len() < 60 {
        f.push(0);
    }
    f
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 packet carrying one UDP datagram (UDP checksum 0: none).
pub fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut p = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0];
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let c = checksum(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

/// An ARP body for IPv4 over Ethernet; `op` 1 is a request, 2 a reply.
pub fn arp(op: u16, sha: [u8; 6], spa: Ipv4Addr, tha: [u8; 6], tpa: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0, 1, 0x08, 0, 6, 4];
    p.extend_from_slice(&op.to_be_bytes());
    p.extend_from_slice(&sha);
    p.extend_from_slice(&spa.octets());
    p.extend_from_slice(&tha);
    p.extend_from_slice(&tpa.octets());
    p
}

/// Whether `frame` is an untagged IPv4/UDP frame to `dport` carrying `tag`.
pub fn is_udp_with(frame: &[u8], dport: u16, tag: &[u8]) -> bool {
    frame.len() >= 42
        && frame[12..14] == ETH_IP.to_be_bytes()
        && frame[23] == 17
        && frame[36..38] == dport.to_be_bytes()
        && frame[42..].starts_with(tag)
}

/// Whether `frame` is an ARP frame whose sender is `(sha, spa)`.
pub fn is_arp_from(frame: &[u8], sha: [u8; 6], spa: Ipv4Addr) -> bool {
    frame.len() >= 42
        && frame[12..14] == ETH_ARP.to_be_bytes()
        && frame[22..28] == sha
        && frame[28..32] == spa.octets()
}
