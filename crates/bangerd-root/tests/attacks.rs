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
/// How long a packet that must not arrive is waited for.
const WAIT: Duration = Duration::from_millis(600);
/// How long a packet that must arrive may take (a loaded host is slow).
const ARRIVES: Duration = Duration::from_secs(5);
const GW: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 1);
const OUT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const HOST_UPLINK: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

/// VLAN tags `(tpid, vid)`, outermost first.
type Tags = &'static [(u16, u16)];

struct Guest {
    tap: Tap,
    mac: [u8; 6],
    ip: Ipv4Addr,
}

/// Host namespace with the helper, bridge and two guests (A: egress all,
/// B: no egress), an outside namespace behind the host's uplink.
struct World {
    r: Netns,
    /// The outside namespace, kept until the end of the test.
    _o: Netns,
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
        let guest = |tap: &str, last: u8, egress: &str| {
            let mac = [2, 0, 0, 0, 0, last];
            let ip = Ipv4Addr::new(172, 16, 0, last);
            helper.ok(json!({"op": "create_tap", "tap": tap, "bridge": "banger0",
                "owner_uid": OWNER, "mac": mac_str(mac), "ip": ip.to_string(), "egress": egress}));
            // What the host would learn from the guest's first ARP; set
            // here so replies do not wait on a guest that answers no ARP.
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
        };
        let a = guest("bangertap00000a", 2, "all");
        let b = guest("bangertap00000b", 3, "none");
        let bridge_mac = r.mac_of("banger0");
        let outside = Listener::bind(&o.0, "0.0.0.0:9999");
        World {
            r,
            _o: o,
            dir,
            helper: Some(helper),
            bridge_mac,
            a,
            b,
            outside,
        }
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
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A UDP datagram from `g` (as `src_mac`/`src_ip`) through the gateway,
/// inside `tags`.
fn udp(
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
    assert!(
        w.outside.saw(b"a-plain", ARRIVES),
        "control: a guest with egress reaches the outside"
    );
    send_as_self(&mut w, 'b', OUT, 9999, b"b-plain");
    assert!(
        !w.outside.saw(b"b-plain", WAIT),
        "a no-egress guest must not reach the outside"
    );

    let before = counter_sum(&w.r, "bridge", "guest");
    let attacks: [(&[u8], Tags); 4] = [
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
    assert!(
        !w.outside.saw(b"a-vlan0", WAIT),
        "VLAN-0 frame from an egress guest"
    );
    // IPv6 and unknown ethertypes do not pass either.
    w.b.tap
        .send(&frames::eth(gw, w.b.mac, &[], 0x86dd, &[0x60; 40]));
    w.b.tap.send(&frames::eth(
        gw,
        w.b.mac,
        &[],
        0x88b5,
        b"local experimental",
    ));
    let dropped = counter_sum(&w.r, "bridge", "guest") - before;
    assert!(
        dropped >= 7,
        "the non-IPv4 drop counted {dropped} of 7 frames"
    );

    // The hole is real: without banger's rules the same VLAN-0 frame from
    // the same guest is stripped and routed out by the host.
    w.helper().ok(json!({"op": "remove_nat"}));
    let me = (w.b.mac, w.b.ip);
    udp(
        &mut w.b,
        gw,
        &[(ETH_8021Q, 0)],
        me,
        OUT,
        9999,
        b"b-vlan0-unfiltered",
    );
    assert!(
        w.outside.saw(b"b-vlan0-unfiltered", ARRIVES),
        "control: on this kernel an unfiltered VLAN-0 frame is routed out, so the test above can fail"
    );
}

#[test]
fn guests_cannot_spoof_addresses_or_arp_or_reach_siblings() {
    if !can_run() {
        return;
    }
    let mut w = World::new("sp", &["--isolate-vms", "false"]);
    let gw = w.bridge_mac;
    let (a_mac, a_ip, b_mac, b_ip) = (w.a.mac, w.a.ip, w.b.mac, w.b.ip);
    send_as_self(&mut w, 'a', OUT, 9999, b"a-own");
    assert!(
        w.outside.saw(b"a-own", ARRIVES),
        "control: A as itself gets out"
    );
    udp(
        &mut w.a,
        gw,
        &[],
        (a_mac, Ipv4Addr::new(172, 16, 0, 9)),
        OUT,
        9999,
        b"a-as-.9",
    );
    assert!(!w.outside.saw(b"a-as-.9", WAIT), "a forged source address");
    udp(&mut w.a, gw, &[], (b_mac, b_ip), OUT, 9999, b"a-as-b");
    assert!(
        !w.outside.saw(b"a-as-b", WAIT),
        "a sibling's MAC and address"
    );
    udp(
        &mut w.a,
        gw,
        &[],
        ([2, 0, 0, 0, 0, 0x55], a_ip),
        OUT,
        9999,
        b"a-new-mac",
    );
    assert!(!w.outside.saw(b"a-new-mac", WAIT), "a forged source MAC");

    // Isolation off: A's genuine ARP and datagrams reach B (so B's tap
    // would see the forged ones too if they passed).
    let genuine_arp = frames::eth(
        frames::BROADCAST,
        a_mac,
        &[],
        ETH_ARP,
        &frames::arp(1, a_mac, a_ip, [0; 6], b_ip),
    );
    let _ = w.b.tap.received(Duration::from_millis(100));
    w.a.tap.send(&genuine_arp);
    assert!(
        w.b.tap
            .saw(|f| frames::is_arp_from(f, a_mac, a_ip), ARRIVES),
        "control: B sees A's genuine ARP"
    );
    // Forged ARP: A claims the gateway, then B's address, as a gratuitous
    // reply and as a request's sender.
    for (spa, sha) in [(GW, a_mac), (b_ip, a_mac), (a_ip, gw)] {
        for op in [1u16, 2] {
            let body = frames::arp(op, sha, spa, [0; 6], spa);
            w.a.tap
                .send(&frames::eth(frames::BROADCAST, a_mac, &[], ETH_ARP, &body));
        }
        let got = w.b.tap.received(WAIT);
        assert!(
            !got.iter().any(|f| frames::is_arp_from(f, sha, spa)),
            "an ARP claiming {spa} is at {} reached a sibling",
            mac_str(sha)
        );
    }
    udp(&mut w.a, b_mac, &[], (a_mac, a_ip), b_ip, 7000, b"a-to-b");
    assert!(
        w.b.tap
            .saw(|f| frames::is_udp_with(f, 7000, b"a-to-b"), ARRIVES),
        "control: with isolate_vms = false, A reaches B"
    );

    // Isolation on (the default): neither bridged nor routed through the
    // host does anything of A's reach B.
    w.restart_helper(&[]);
    let _ = w.b.tap.received(Duration::from_millis(100));
    w.a.tap.send(&genuine_arp);
    udp(
        &mut w.a,
        b_mac,
        &[],
        (a_mac, a_ip),
        b_ip,
        7000,
        b"a-to-b-bridged",
    );
    udp(
        &mut w.a,
        gw,
        &[],
        (a_mac, a_ip),
        b_ip,
        7000,
        b"a-to-b-routed",
    );
    let got = w.b.tap.received(Duration::from_secs(1));
    assert!(
        !got.iter().any(|f| frames::is_arp_from(f, a_mac, a_ip)
            || frames::is_udp_with(f, 7000, b"a-to-b-bridged")
            || frames::is_udp_with(f, 7000, b"a-to-b-routed")),
        "isolated: B got {} frames from A",
        got.len()
    );
}

#[test]
fn guests_reach_neither_metadata_nor_the_host_nor_its_lan() {
    if !can_run() {
        return;
    }
    let mut w = World::new("md", &[]);
    let host = Listener::bind(&w.r.0, "0.0.0.0:7777");
    let dns = Listener::bind(&w.r.0, "172.16.0.1:53");
    send_as_self(&mut w, 'a', OUT, 9999, b"out");
    assert!(
        w.outside.saw(b"out", ARRIVES),
        "control: the outside is reachable"
    );
    for (dst, tag) in [
        (Ipv4Addr::new(169, 254, 169, 254), &b"metadata"[..]),
        (Ipv4Addr::new(10, 1, 2, 3), b"lan-10"),
        (Ipv4Addr::new(192, 168, 7, 7), b"lan-192"),
    ] {
        send_as_self(&mut w, 'a', dst, 9999, tag);
        assert!(!w.outside.saw(tag, WAIT), "{dst} reached");
    }
    send_as_self(&mut w, 'a', HOST_UPLINK, 7777, b"host-uplink");
    send_as_self(&mut w, 'a', GW, 7777, b"host-gw");
    assert!(
        host.got(WAIT).is_empty(),
        "a host service other than DNS was reached"
    );
    send_as_self(&mut w, 'a', GW, 53, b"dns-a");
    send_as_self(&mut w, 'b', GW, 53, b"dns-b");
    assert!(
        dns.saw_all(&[b"dns-a", b"dns-b"], ARRIVES),
        "banger's DNS on the gateway serves every guest, no-egress ones too"
    );

    // New connections from outside into the bridge are dropped; replies to
    // what the guest started come back.
    let _ = w.a.tap.received(Duration::from_millis(100));
    w.outside
        .send_to(b"inbound", "172.16.0.2:5000".parse().expect("addr"));
    send_as_self(&mut w, 'a', OUT, 9999, b"ask");
    let from = w
        .outside
        .first_from(b"ask", ARRIVES)
        .expect("the guest's datagram arrives");
    w.outside.send_to(b"reply", from);
    let mut inbound_seen = false;
    let replied = w.a.tap.saw(
        |f| {
            inbound_seen |= frames::is_udp_with(f, 5000, b"inbound");
            frames::is_udp_with(f, 5000, b"reply")
        },
        ARRIVES,
    );
    assert!(
        replied,
        "control: the reply to the guest's own datagram comes back"
    );
    assert!(
        !inbound_seen,
        "an unsolicited datagram from outside reached the guest"
    );

    // block_lan = false opens the LAN ranges, never metadata.
    w.restart_helper(&["--block-lan", "false"]);
    send_as_self(&mut w, 'a', Ipv4Addr::new(10, 1, 2, 3), 9999, b"lan-open");
    assert!(
        w.outside.saw(b"lan-open", ARRIVES),
        "block_lan = false lets the LAN through"
    );
    send_as_self(
        &mut w,
        'a',
        Ipv4Addr::new(169, 254, 169, 254),
        9999,
        b"metadata-2",
    );
    assert!(
        !w.outside.saw(b"metadata-2", WAIT),
        "metadata stays blocked"
    );
}
