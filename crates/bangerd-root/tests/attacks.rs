//! Attacks a guest with root would try, performed against the real helper
//! and the kernel's real verdicts: the test attaches to the taps the helper
//! made (as a VMM does) and writes crafted frames into them; listeners in
//! an "outside" namespace and on the host count what arrives. Everything
//! happens inside namespaces the test creates: the outside is 198.18.0.0/15
//! (a benchmarking range) plus addresses on its own loopback standing in
//! for cloud metadata (169.254.169.254) and a LAN (10.1.2.3, 192.168.7.7).

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::frames::{self, ETH_8021AD, ETH_8021Q, ETH_ARP, ETH_IP};
use common::tap::{Listener, Tap};
use common::{Helper, Netns, can_run};
use serde_json::{Value, json};

const OWNER: u32 = 4242;
const WAIT: Duration = Duration::from_millis(600);
const GW: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 1);
const OUT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const HOST_UPLINK: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

struct Guest {
    tap: Tap,
    mac: [u8; 6],
    ip: Ipv4Addr,
}

/// Host namespace with the helper, bridge and two guests (A: egress all,
/// B: no egress), an outside namespace behind the host's uplink.
struct World {
    r: Netns,
    o: Netns,
    dir: tempfile::TempDir,
    helper: Option<Helper>,
    bridge_mac: [u8; 6],
    a: Guest,
    b: Guest,
    /// UDP :9999 on every outside address.
    outside: Listener,
}

impl World {
    fn new(sfx: &str, helper_args: &[&str]) -> World {
        let r = Netns::new(&format!("{sfx}r"));
        let o = Netns::new(&format!("{sfx}o"));
        r.ip(&["link", "set", "lo", "up"]);
        o.ip(&["link", "set", "lo", "up"]);
        r.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up0p", "netns", &o.0]);
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
        let mut guest = |tap: &str, last: u8, egress: &str| {
            let mac = [2, 0, 0, 0, 0, last];
            let ip = Ipv4Addr::new(172, 16, 0, last);
            helper.ok(json!({"op": "create_tap", "tap": tap, "bridge": "banger0",
                "owner_uid": OWNER, "mac": mac_str(mac), "ip": ip.to_string(), "egress": egress}));
            // What the host would learn from the guest's first ARP; set
            // here so replies do not wait on a guest that answers no ARP.
            r.ip(&["neigh", "replace", &ip.to_string(), "lladdr", &mac_str(mac), "dev", "banger0", "nud", "permanent"]);
            Guest { tap: Tap::open(&r.0, tap), mac, ip }
        };
        let a = guest("bangertap00000a", 2, "all");
        let b = guest("bangertap00000b", 3, "none");
        let bridge_mac = r.mac_of("banger0");
        let outside = Listener::bind(&o.0, "0.0.0.0:9999");
        World { r, o, dir, helper: Some(helper), bridge_mac, a, b, outside }
    }

    fn helper(&self) -> &Helper {
        self.helper.as_ref().expect("helper")
    }

    /// Restart the helper with other arguments; the kernel state (tables,
    /// sets, taps) stays, and ensure_nat rewrites the rules.
    fn restart_helper(&mut self, args: &[&str]) {
        self.helper = None;
        let h = Helper::start(&self.r, self.dir.path(), OWNER, args);
        h.ok(json!({"op": "ensure_nat", "bridge": "banger0", "subnet": "172.16.0.0/24"}));
        self.helper = Some(h);
    }
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// A UDP datagram from `g` (as `src_mac`/`src_ip`) through the gateway,
/// inside `tags`.
fn udp(g: &mut Guest, to_mac: [u8; 6], tags: &[(u16, u16)], src: ([u8; 6], Ipv4Addr), dst: Ipv4Addr, dport: u16, tag: &[u8]) {
    let pkt = frames::ipv4_udp(src.1, dst, 5000, dport, tag);
    g.tap.send(&frames::eth(to_mac, src.0, tags, ETH_IP, &pkt));
}

/// A well-formed datagram from `g` as itself to `dst` via the gateway.
fn send_as_self(w: &mut World, which: char, dst: Ipv4Addr, dport: u16, tag: &[u8]) {
    let gw = w.bridge_mac;
    let g = if which == 'a' { &mut w.a } else { &mut w.b };
    let me = (g.mac, g.ip);
    udp(g, gw, &[], me, dst, dport, tag);
}

fn counter_sum(ns: &Netns, family: &str, chain: &str) -> u64 {
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

#[test]
fn no_egress_cannot_be_bypassed_with_vlan_tags() {
    if !can_run() {
        return;
    }
    let mut w = World::new("vl", &[]);
    send_as_self(&mut w, 'a', OUT, 9999, b"a-plain");
    assert!(w.outside.saw(b"a-plain", WAIT), "control: a guest with egress reaches the outside");
    send_as_self(&mut w, 'b', OUT, 9999, b"b-plain");
    assert!(!w.outside.saw(b"b-plain", WAIT), "a no-egress guest must not reach the outside");

    let before = counter_sum(&w.r, "bridge", "guest");
    let attacks: [(&[u8], &[(u16, u16)]); 4] = [
        (b"b-vlan0", &[(ETH_8021Q, 0)]),
        (b"b-vlan7", &[(ETH_8021Q, 7)]),
        (b"b-qinq", &[(ETH_8021AD, 0), (ETH_8021Q, 0)]),
        (b"b-8021ad", &[(ETH_8021AD, 0)]),
    ];
    let gw = w.bridge_mac;
    for (tag, tags) in attacks {
        let me = (w.b.mac, w.b.ip);
        udp(&mut w.b, gw, tags, me, OUT, 9999, tag);
        assert!(
            !w.outside.saw(tag, WAIT),
            "{} from a no-egress guest left the host",
            String::from_utf8_lossy(tag)
        );
    }
    // Tagged frames are dropped from every guest, not only no-egress ones.
    let me = (w.a.mac, w.a.ip);
    udp(&mut w.a, gw, &[(ETH_8021Q, 0)], me, OUT, 9999, b"a-vlan0");
    assert!(!w.outside.saw(b"a-vlan0", WAIT), "VLAN-0 frame from an egress guest");
    // IPv6 and unknown ethertypes do not pass either.
    w.b.tap.send(&frames::eth(gw, w.b.mac, &[], 0x86dd, &[0x60; 40]));
    w.b.tap.send(&frames::eth(gw, w.b.mac, &[], 0x88b5, b"local experimental"));
    let dropped = counter_sum(&w.r, "bridge", "guest") - before;
    assert!(dropped >= 7, "the non-IPv4 drop counted {dropped} of 7 frames");

    // The hole is real: without banger's rules the same VLAN-0 frame from
    // the same guest is stripped and routed out by the host.
    w.helper().ok(json!({"op": "remove_nat"}));
    let me = (w.b.mac, w.b.ip);
    udp(&mut w.b, gw, &[(ETH_8021Q, 0)], me, OUT, 9999, b"b-vlan0-unfiltered");
    assert!(
        w.outside.saw(b"b-vlan0-unfiltered", Duration::from_secs(2)),
        "control: on this kernel an unfiltered VLAN-0 frame is routed out, so the test above can fail"
    );
}
