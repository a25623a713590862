//! The world the attack tests run in: a "host" namespace with the real
//! helper, its bridge and two guests on taps (A: egress all, B: none), and
//! an "outside" namespace behind the host's uplink on 198.18.0.0/15 (a
//! benchmarking range) plus addresses on its own loopback standing in for
//! cloud metadata (169.254.169.254) and a LAN (10.1.2.3, 192.168.7.7).
//! Guests are the test itself, writing crafted frames into the taps.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::{Value, json};

use super::frames::{self, ETH_IP};
use super::tap::{Listener, Tap};
use super::{Helper, Netns};

pub const OWNER: u32 = 4242;
/// How long a packet that must not arrive is waited for.
pub const WAIT: Duration = Duration::from_millis(600);
/// How long a packet that must arrive may take (a loaded host is slow).
pub const ARRIVES: Duration = Duration::from_secs(5);
pub const GW: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 1);
pub const OUT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const HOST_UPLINK: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

/// VLAN tags `(tpid, vid)`, outermost first.
pub type Tags = &'static [(u16, u16)];

pub struct Guest {
    pub tap: Tap,
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
}

/// Host namespace with the helper, bridge and two guests (A: egress all,
/// B: no egress), an outside namespace behind the host's uplink.
pub struct World {
    pub r: Netns,
    /// The outside namespace.
    pub o: Netns,
    pub dir: tempfile::TempDir,
    pub helper: Option<Helper>,
    pub bridge_mac: [u8; 6],
    pub a: Guest,
    pub b: Guest,
    /// UDP :9999 on every outside address.
    pub outside: Listener,
}

impl World {
    pub fn new(sfx: &str, helper_args: &[&str]) -> World {
        let r = Netns::new(&format!("{sfx}r"));
        let o = Netns::new(&format!("{sfx}o"));
        r.ip(&["link", "set", "lo", "up"]);
        o.ip(&["link", "set", "lo", "up"]);
        r.ip(&[
            "link", "add", "up0", "type", "veth", "peer", "name", "up0p", "netns", &o.0,
        ]);
        r.ip(&["addr", "add", "198.18.0.1/24", "dev", "up0"]);
        r.ip(&["link", "set", "up0", "up"]);
        o.ip(&["addr", "add", "198.18.0.2/24", "dev", "up0p"]);
        o.ip(&["link", "set", "up0p", "up"]);
        for a in ["169.254.169.254/32", "10.1.2.3/32", "192.168.7.7/32"] {
            o.ip(&["addr", "add", a, "dev", "lo"]);
        }
        o.ip(&["route", "add", "172.16.0.0/24", "via", "198.18.0.1"]);
        r.ip(&["route", "add", "default", "via", "198.18.0.2"]);
        let dir = tempfile::tempdir().expect("tempdir");
        let helper = Helper::start(&r, dir.path(), OWNER, helper_args);
        let net = json!({"bridge": "banger0", "subnet": "172.16.0.0/24"});
        let mut eb = net.clone();
        eb["op"] = json!("ensure_bridge");
        helper.ok(eb);
        let mut en = net.clone();
        en["op"] = json!("ensure_nat");
        helper.ok(en);
        helper.ok(json!({"op": "enable_forwarding"}));
        let a = add_guest(&r, &helper, "bangertap00000a", 2, "all");
        let b = add_guest(&r, &helper, "bangertap00000b", 3, "none");
        let bridge_mac = r.mac_of("banger0");
        let outside = Listener::bind(&o.0, "0.0.0.0:9999");
        World {
            r,
            o,
            dir,
            helper: Some(helper),
            bridge_mac,
            a,
            b,
            outside,
        }
    }

    pub fn helper(&self) -> &Helper {
        self.helper.as_ref().expect("helper")
    }

    /// Another guest at `172.16.0.<last>` with this egress.
    pub fn guest(&self, tap: &str, last: u8, egress: &str) -> Guest {
        add_guest(&self.r, self.helper(), tap, last, egress)
    }

    /// Restart the helper with other arguments; the kernel state (tables,
    /// sets, taps) stays, and ensure_nat rewrites the rules.
    pub fn restart_helper(&mut self, args: &[&str]) {
        self.helper = None;
        let h = Helper::start(&self.r, self.dir.path(), OWNER, args);
        h.ok(json!({"op": "ensure_nat", "bridge": "banger0", "subnet": "172.16.0.0/24"}));
        self.helper = Some(h);
    }
}

fn add_guest(r: &Netns, helper: &Helper, tap: &str, last: u8, egress: &str) -> Guest {
    let mac = [2, 0, 0, 0, 0, last];
    let ip = Ipv4Addr::new(172, 16, 0, last);
    helper.ok(json!({"op": "create_tap", "tap": tap, "bridge": "banger0",
        "owner_uid": OWNER, "mac": mac_str(mac), "ip": ip.to_string(), "egress": egress}));
    // What the host would learn from the guest's first ARP; set here so
    // replies do not wait on a guest that answers no ARP.
    r.ip(&[
        "neigh",
        "replace",
        &ip.to_string(),
        "lladdr",
        &mac_str(mac),
        "dev",
        "banger0",
        "nud",
        "permanent",
    ]);
    Guest {
        tap: Tap::open(&r.0, tap),
        mac,
        ip,
    }
}

pub fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A UDP datagram from `g` (as `src_mac`/`src_ip`) through the gateway,
/// inside `tags`.
pub fn udp(
    g: &mut Guest,
    to_mac: [u8; 6],
    tags: &[(u16, u16)],
    src: ([u8; 6], Ipv4Addr),
    dst: Ipv4Addr,
    dport: u16,
    tag: &[u8],
) {
    let pkt = frames::ipv4_udp(src.1, dst, 5000, dport, tag);
    g.tap.send(&frames::eth(to_mac, src.0, tags, ETH_IP, &pkt));
}

/// A well-formed datagram from guest `g` as itself to `dst` via the gateway.
pub fn send_from(g: &mut Guest, gw: [u8; 6], dst: Ipv4Addr, dport: u16, tag: &[u8]) {
    let me = (g.mac, g.ip);
    udp(g, gw, &[], me, dst, dport, tag);
}

/// A well-formed datagram from guest A or B as itself to `dst`.
pub fn send_as_self(w: &mut World, which: char, dst: Ipv4Addr, dport: u16, tag: &[u8]) {
    let gw = w.bridge_mac;
    let g = if which == 'a' { &mut w.a } else { &mut w.b };
    send_from(g, gw, dst, dport, tag);
}

pub fn counter_sum(ns: &Netns, family: &str, chain: &str) -> u64 {
    let text = ns.exec_ok(&["nft", "-j", "list", "chain", family, "banger", chain]);
    let v: Value = serde_json::from_str(&text).expect("json");
    v["nftables"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|e| e.get("rule"))
        .flat_map(|r| r["expr"].as_array().cloned().unwrap_or_default())
        .filter_map(|x| x.get("counter").and_then(|c| c["packets"].as_u64()))
        .sum()
}
