//! banger's nftables rules as libnftables JSON batches (`nft -j -f -`).
//!
//! banger owns exactly two tables and never reads or writes any other. The
//! split is by layer:
//!
//! * `bridge banger` — *who may speak on the bridge, and as whom*. Every
//!   frame a guest sends through its tap (`bangertap*`) must be ARP or IPv4
//!   (so 802.1Q/802.1ad-tagged frames, IPv6 and every other ethertype are
//!   dropped: the host would strip a VLAN-0 tag and route the inner packet
//!   past every IPv4 rule), must come from the MAC the tap was registered
//!   with, and must carry the tap's leased address as its IPv4 or ARP
//!   sender (so no ARP reply can claim the gateway or a sibling). The
//!   `ports` set binds `tap . mac . ip`. With `isolate_vms`, frames between
//!   two taps are dropped (`forward` hook: port to port).
//! * `ip banger` — *where a guest's packets may go*, keyed by the guest's
//!   source address (trustworthy once the bridge table has checked it):
//!   `input` lets guests reach only banger's DNS on the gateway (and ICMP
//!   echo to it), never the host's other addresses or services; `forward`
//!   drops new connections into the bridge from outside, traffic to the
//!   `blocked` ranges (0/8, loopback, link-local with cloud metadata,
//!   multicast and reserved, and — with `block_lan` — RFC 1918 and CGNAT),
//!   everything from `no_egress` guests, and for `egress_listed` guests
//!   everything not in `egress_allowed` (filled from banger's DNS answers,
//!   with their TTLs). `postrouting` masquerades the subnet out of the
//!   default-route interface.
//!
//! The filter chains hook with policy accept and scope every rule to
//! banger's bridge and taps: a drop policy on a base chain would drop the
//! host's other forwarded traffic (Docker, libvirt) too. For the bridge's
//! traffic the effect is a drop policy: what no rule accepts is dropped.
//!
//! [`ensure_batch`] is idempotent and keeps the per-tap sets, so guests
//! stay bound across a daemon restart; the chains are flushed and refilled.
//! Each batch is applied atomically by `nft`: either all of it or none.

use std::net::Ipv4Addr;

use banger_core::config::Subnet;
use serde_json::{Value, json};

use crate::alloc::TAP_PREFIX;
use crate::policy::NetPolicy;

pub const TABLE: &str = "banger";
/// bridge: `ifname . ether_addr . ipv4_addr` of every registered tap.
pub const PORTS_SET: &str = "ports";
/// ip: guest addresses with no egress.
pub const NO_EGRESS_SET: &str = "no_egress";
/// ip: guest addresses whose egress is an allowlist.
pub const LISTED_SET: &str = "egress_listed";
/// ip: `guest . destination` pairs granted to listed guests, with timeouts.
pub const ALLOWED_SET: &str = "egress_allowed";
/// ip: destination ranges no guest reaches.
pub const BLOCKED_SET: &str = "blocked";

/// Always blocked: "this network", loopback, link-local (cloud metadata
/// lives at 169.254.169.254), multicast and the reserved/broadcast block.
const ALWAYS_BLOCKED: [(Ipv4Addr, u8); 4] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    (Ipv4Addr::new(224, 0, 0, 0), 3),
];
/// Blocked with `block_lan`: the ranges a host's LAN uses.
const LAN_BLOCKED: [(Ipv4Addr, u8); 4] = [
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(100, 64, 0, 0), 10),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
];

fn cidr(addr: Ipv4Addr, len: u8) -> Value {
    json!({"prefix": {"addr": addr.to_string(), "len": len}})
}

fn subnet_v(subnet: &Subnet) -> Value {
    cidr(subnet.network, subnet.prefix)
}

fn rule(family: &str, chain: &str, expr: Vec<Value>) -> Value {
    json!({"add": {"rule": {"family": family, "table": TABLE, "chain": chain, "expr": expr}}})
}

fn eq(left: Value, right: Value) -> Value {
    json!({"match": {"op": "==", "left": left, "right": right}})
}

fn ne(left: Value, right: Value) -> Value {
    json!({"match": {"op": "!=", "left": left, "right": right}})
}

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

fn field(protocol: &str, field: &str) -> Value {
    json!({"payload": {"protocol": protocol, "field": field}})
}

fn set_ref(name: &str) -> Value {
    json!(format!("@{name}"))
}

fn concat(parts: Vec<Value>) -> Value {
    json!({"concat": parts})
}

fn ct_state(states: &[&str]) -> Value {
    json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": states}})
}

fn counter() -> Value {
    json!({"counter": null})
}

fn drop() -> Value {
    json!({"drop": null})
}

fn accept() -> Value {
    json!({"accept": null})
}

fn base_chain(family: &str, name: &str, kind: &str, hook: &str, prio: i32) -> [Value; 2] {
    [
        json!({"add": {"chain": {"family": family, "table": TABLE, "name": name,
            "type": kind, "hook": hook, "prio": prio, "policy": "accept"}}}),
        json!({"flush": {"chain": {"family": family, "table": TABLE, "name": name}}}),
    ]
}

fn set(family: &str, name: &str, kind: Value, flags: &[&str]) -> Value {
    let mut body = json!({"family": family, "table": TABLE, "name": name, "type": kind});
    if !flags.is_empty() {
        body["flags"] = json!(flags);
    }
    json!({"add": {"set": body}})
}

/// The bridge table: per-tap identity and VM-to-VM isolation.
fn bridge_cmds(policy: &NetPolicy) -> Vec<Value> {
    let taps = json!(format!("{TAP_PREFIX}*"));
    let ports = set_ref(PORTS_SET);
    let mut c = vec![
        json!({"add": {"table": {"family": "bridge", "name": TABLE}}}),
        set(
            "bridge",
            PORTS_SET,
            json!(["ifname", "ether_addr", "ipv4_addr"]),
            &[],
        ),
    ];
    c.extend(base_chain(
        "bridge",
        "prerouting",
        "filter",
        "prerouting",
        -200,
    ));
    c.extend(base_chain("bridge", "forward", "filter", "forward", 0));
    c.extend([
        json!({"add": {"chain": {"family": "bridge", "table": TABLE, "name": "guest"}}}),
        json!({"flush": {"chain": {"family": "bridge", "table": TABLE, "name": "guest"}}}),
    ]);
    c.push(rule(
        "bridge",
        "prerouting",
        vec![
            eq(meta("iifname"), taps.clone()),
            json!({"jump": {"target": "guest"}}),
        ],
    ));
    // ARP for IPv4 over Ethernet whose sender MAC (in the frame and in the
    // ARP body) and sender IP are the tap's own.
    c.push(rule(
        "bridge",
        "guest",
        vec![
            eq(field("ether", "type"), json!("arp")),
            eq(field("arp", "htype"), json!(1)),
            eq(field("arp", "ptype"), json!("ip")),
            eq(field("arp", "hlen"), json!(6)),
            eq(field("arp", "plen"), json!(4)),
            eq(
                concat(vec![
                    meta("iifname"),
                    field("ether", "saddr"),
                    field("arp", "saddr ip"),
                ]),
                ports.clone(),
            ),
            eq(
                concat(vec![
                    meta("iifname"),
                    field("arp", "saddr ether"),
                    field("arp", "saddr ip"),
                ]),
                ports.clone(),
            ),
            accept(),
        ],
    ));
    // Everything that is not IPv4 by its outermost ethertype: forged ARP,
    // 802.1Q (VLAN 0 included), 802.1ad, IPv6, anything else.
    c.push(rule(
        "bridge",
        "guest",
        vec![ne(field("ether", "type"), json!("ip")), counter(), drop()],
    ));
    c.push(rule(
        "bridge",
        "guest",
        vec![
            ne(
                concat(vec![
                    meta("iifname"),
                    field("ether", "saddr"),
                    field("ip", "saddr"),
                ]),
                ports,
            ),
            counter(),
            drop(),
        ],
    ));
    if policy.isolate_vms {
        c.push(rule(
            "bridge",
            "forward",
            vec![
                eq(meta("iifname"), taps.clone()),
                eq(meta("oifname"), taps),
                counter(),
                drop(),
            ],
        ));
    }
    c
}

fn blocked_list(policy: &NetPolicy) -> impl Iterator<Item = &'static (Ipv4Addr, u8)> {
    let lan: &[(Ipv4Addr, u8)] = if policy.block_lan { &LAN_BLOCKED } else { &[] };
    ALWAYS_BLOCKED.iter().chain(lan)
}

fn blocked_ranges(policy: &NetPolicy) -> Vec<Value> {
    blocked_list(policy).map(|(a, l)| cidr(*a, *l)).collect()
}

/// Whether `addr` is in a range the `blocked` set holds under `policy`
/// (no guest reaches it, whatever its egress).
pub fn is_blocked(policy: &NetPolicy, addr: Ipv4Addr) -> bool {
    blocked_list(policy).any(|(net, len)| {
        let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
        u32::from(addr) & mask == u32::from(*net) & mask
    })
}

/// The ip table: host input, forwarding policy, masquerade.
fn ip_cmds(policy: &NetPolicy, uplink: Option<&str>) -> Vec<Value> {
    let br = json!(policy.bridge);
    let from_br = || eq(meta("iifname"), br.clone());
    let to_br = || eq(meta("oifname"), br.clone());
    let saddr = || field("ip", "saddr");
    let daddr = || field("ip", "daddr");
    let gw = json!(policy.subnet.gateway().to_string());
    let mut c = vec![
        json!({"add": {"table": {"family": "ip", "name": TABLE}}}),
        set("ip", NO_EGRESS_SET, json!("ipv4_addr"), &[]),
        set("ip", LISTED_SET, json!("ipv4_addr"), &[]),
        set(
            "ip",
            ALLOWED_SET,
            json!(["ipv4_addr", "ipv4_addr"]),
            &["timeout"],
        ),
        set("ip", BLOCKED_SET, json!("ipv4_addr"), &["interval"]),
        json!({"flush": {"set": {"family": "ip", "table": TABLE, "name": BLOCKED_SET}}}),
        json!({"add": {"element": {"family": "ip", "table": TABLE, "name": BLOCKED_SET,
            "elem": blocked_ranges(policy)}}}),
    ];
    c.extend(base_chain("ip", "postrouting", "nat", "postrouting", 100));
    c.extend(base_chain("ip", "forward", "filter", "forward", 0));
    c.extend(base_chain("ip", "input", "filter", "input", 0));
    if let Some(uplink) = uplink {
        c.push(rule(
            "ip",
            "postrouting",
            vec![
                eq(saddr(), subnet_v(&policy.subnet)),
                eq(meta("oifname"), json!(uplink)),
                json!({"masquerade": null}),
            ],
        ));
    }
    // Guest to guest through the host (routed back out of the bridge, or
    // bridged traffic seen here under br_netfilter): the isolation policy.
    c.push(rule(
        "ip",
        "forward",
        vec![
            from_br(),
            to_br(),
            if policy.isolate_vms { drop() } else { accept() },
        ],
    ));
    c.push(rule(
        "ip",
        "forward",
        vec![to_br(), ct_state(&["established", "related"]), accept()],
    ));
    c.push(rule("ip", "forward", vec![to_br(), counter(), drop()]));
    c.push(rule(
        "ip",
        "forward",
        vec![
            from_br(),
            eq(saddr(), set_ref(NO_EGRESS_SET)),
            counter(),
            drop(),
        ],
    ));
    c.push(rule(
        "ip",
        "forward",
        vec![
            from_br(),
            eq(daddr(), set_ref(BLOCKED_SET)),
            counter(),
            drop(),
        ],
    ));
    // A connection made while an address was granted outlives the grant.
    c.push(rule(
        "ip",
        "forward",
        vec![from_br(), ct_state(&["established", "related"]), accept()],
    ));
    c.push(rule(
        "ip",
        "forward",
        vec![
            from_br(),
            eq(saddr(), set_ref(LISTED_SET)),
            ne(concat(vec![saddr(), daddr()]), set_ref(ALLOWED_SET)),
            counter(),
            drop(),
        ],
    ));
    // The host itself: replies to what the host started, banger's DNS and
    // ICMP echo on the gateway; nothing else of the host's.
    c.push(rule(
        "ip",
        "input",
        vec![from_br(), ct_state(&["established", "related"]), accept()],
    ));
    for proto in ["udp", "tcp"] {
        c.push(rule(
            "ip",
            "input",
            vec![
                from_br(),
                eq(daddr(), gw.clone()),
                eq(field(proto, "dport"), json!(policy.dns_port)),
                accept(),
            ],
        ));
    }
    c.push(rule(
        "ip",
        "input",
        vec![
            from_br(),
            eq(daddr(), gw),
            eq(field("icmp", "type"), json!("echo-request")),
            accept(),
        ],
    ));
    c.push(rule("ip", "input", vec![from_br(), counter(), drop()]));
    c
}

/// Install (or refresh) both tables, keeping the per-tap sets.
pub fn ensure_batch(policy: &NetPolicy, uplink: Option<&str>) -> Value {
    let mut cmds = bridge_cmds(policy);
    cmds.extend(ip_cmds(policy, uplink));
    json!({"nftables": cmds})
}

/// Delete both tables; the leading adds make it succeed whether or not they
/// exist.
pub fn remove_batch() -> Value {
    json!({"nftables": [
        {"add": {"table": {"family": "ip", "name": TABLE}}},
        {"delete": {"table": {"family": "ip", "name": TABLE}}},
        {"add": {"table": {"family": "bridge", "name": TABLE}}},
        {"delete": {"table": {"family": "bridge", "name": TABLE}}},
    ]})
}

#[cfg(test)]
#[path = "nft_tests.rs"]
mod tests;
