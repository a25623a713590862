//! Per-tap state in banger's nftables sets: a tap's identity
//! (`tap . mac . ip` in the bridge table's `ports` set), its egress policy
//! (its address in `no_egress` or `egress_listed`), and the destinations
//! granted to an allowlisted guest (`egress_allowed`). Batches here only
//! add and delete set elements; the rules that read them are in
//! [`crate::nft`].

use std::net::Ipv4Addr;

use banger_proto::root::Egress;
use serde_json::{Value, json};

use crate::alloc::Mac;
use crate::nft::{ALLOWED_SET, LISTED_SET, NO_EGRESS_SET, PORTS_SET, TABLE};

/// Shortest and longest time a DNS answer grants an address for. The floor
/// keeps a resolver's 0- or 1-second TTLs from racing the guest's connect;
/// the ceiling bounds how long a stale answer stays open.
pub const MIN_GRANT_SECS: u32 = 60;
pub const MAX_GRANT_SECS: u32 = 24 * 3600;

/// One registered tap, as read back from the `ports` set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub tap: String,
    pub mac: Mac,
    pub ip: Ipv4Addr,
}

fn element(family: &str, set: &str, elems: Vec<Value>) -> Value {
    json!({"element": {"family": family, "table": TABLE, "name": set, "elem": elems}})
}

fn port_elem(p: &Port) -> Value {
    json!({"concat": [p.tap, p.mac.to_string(), p.ip.to_string()]})
}

/// Delete `ip` from `set` whether or not it is there (nft refuses to delete
/// an absent element, so add it first, in the same batch).
fn forget_ip(cmds: &mut Vec<Value>, set: &str, ip: Ipv4Addr) {
    let e = element("ip", set, vec![json!(ip.to_string())]);
    cmds.push(json!({"add": e.clone()}));
    cmds.push(json!({"delete": e}));
}

fn forget(cmds: &mut Vec<Value>, old: &[Port], grants: &[(Ipv4Addr, Ipv4Addr)]) {
    for p in old {
        cmds.push(json!({"delete": element("bridge", PORTS_SET, vec![port_elem(p)])}));
        forget_ip(cmds, NO_EGRESS_SET, p.ip);
        forget_ip(cmds, LISTED_SET, p.ip);
    }
    if !grants.is_empty() {
        let elems = grants
            .iter()
            .map(|(g, d)| json!({"concat": [g.to_string(), d.to_string()]}))
            .collect();
        cmds.push(json!({"delete": element("ip", ALLOWED_SET, elems)}));
    }
}

/// Bind `port` and its egress policy, replacing whatever `old` entries
/// (read from the sets: the same tap's earlier identity) and `grants`
/// (earlier allowlist grants of either address) say.
pub fn register_batch(
    port: &Port,
    egress: Egress,
    old: &[Port],
    grants: &[(Ipv4Addr, Ipv4Addr)],
) -> Value {
    let mut cmds = Vec::new();
    forget(&mut cmds, old, grants);
    // A previous owner of this address may have left a policy behind.
    forget_ip(&mut cmds, NO_EGRESS_SET, port.ip);
    forget_ip(&mut cmds, LISTED_SET, port.ip);
    cmds.push(json!({"add": element("bridge", PORTS_SET, vec![port_elem(port)])}));
    let ip = json!(port.ip.to_string());
    match egress {
        Egress::All => {}
        Egress::None => cmds.push(json!({"add": element("ip", NO_EGRESS_SET, vec![ip])})),
        Egress::Allowlist => cmds.push(json!({"add": element("ip", LISTED_SET, vec![ip])})),
    }
    json!({"nftables": cmds})
}

/// Forget `old` ports (a deleted tap) and their grants.
pub fn unregister_batch(old: &[Port], grants: &[(Ipv4Addr, Ipv4Addr)]) -> Value {
    let mut cmds = Vec::new();
    forget(&mut cmds, old, grants);
    json!({"nftables": cmds})
}

/// Let `guest` reach each `(addr, ttl)` until the (clamped) TTL runs out.
/// Re-granting an address refreshes its timeout.
pub fn grant_batch(guest: Ipv4Addr, grants: &[(Ipv4Addr, u32)]) -> Value {
    let elems: Vec<Value> = grants
        .iter()
        .map(|(a, ttl)| {
            json!({"elem": {
                "val": {"concat": [guest.to_string(), a.to_string()]},
                "timeout": (*ttl).clamp(MIN_GRANT_SECS, MAX_GRANT_SECS),
            }})
        })
        .collect();
    let e = element("ip", ALLOWED_SET, elems);
    // Delete-then-add would fail on absent elements; add of an existing
    // element keeps its old timeout, so add, delete, add.
    json!({"nftables": [{"add": e.clone()}, {"delete": e.clone()}, {"add": e}]})
}

/// The strings of one set element as `nft -j list set` prints it: a plain
/// value, a `{"concat": […]}`, or either wrapped in `{"elem": {"val": …}}`
/// when the element has a timeout.
fn elem_parts(v: &Value) -> Option<Vec<String>> {
    let v = v.get("elem").and_then(|e| e.get("val")).unwrap_or(v);
    match v.get("concat") {
        Some(parts) => parts
            .as_array()?
            .iter()
            .map(|p| p.as_str().map(str::to_string))
            .collect(),
        None => Some(vec![v.as_str()?.to_string()]),
    }
}

/// Parse the `ports` set's elements; malformed ones are skipped.
pub fn parse_ports(elems: &[Value]) -> Vec<Port> {
    elems
        .iter()
        .filter_map(|e| {
            let p = elem_parts(e)?;
            let [tap, mac, ip] = p.as_slice() else {
                return None;
            };
            Some(Port {
                tap: tap.clone(),
                mac: mac.parse().ok()?,
                ip: ip.parse().ok()?,
            })
        })
        .collect()
}

/// Parse the `egress_allowed` set's elements as `(guest, destination)`.
pub fn parse_grants(elems: &[Value]) -> Vec<(Ipv4Addr, Ipv4Addr)> {
    elems
        .iter()
        .filter_map(|e| {
            let p = elem_parts(e)?;
            let [g, d] = p.as_slice() else {
                return None;
            };
            Some((g.parse().ok()?, d.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(tap: &str, last: u8) -> Port {
        Port {
            tap: tap.into(),
            mac: Mac([2, 0, 0, 0, 0, last]),
            ip: Ipv4Addr::new(172, 16, 0, last),
        }
    }

    #[test]
    fn parses_what_nft_prints() {
        let elems: Vec<Value> = serde_json::from_str(
            r#"[{"concat": ["bangertap000001", "02:00:00:00:00:02", "172.16.0.2"]},
                {"concat": ["bad", "zz", "1.2.3.4"]}, "x"]"#,
        )
        .expect("json");
        assert_eq!(parse_ports(&elems), vec![port("bangertap000001", 2)]);
        let grants: Vec<Value> = serde_json::from_str(
            r#"[{"elem": {"val": {"concat": ["172.16.0.2", "140.82.112.3"]}, "timeout": 60, "expires": 59}}]"#,
        )
        .expect("json");
        assert_eq!(
            parse_grants(&grants),
            vec![(Ipv4Addr::new(172, 16, 0, 2), Ipv4Addr::new(140, 82, 112, 3))]
        );
    }

    #[test]
    fn register_replaces_the_old_identity_and_sets_one_policy() {
        let old = port("bangertap000001", 9);
        let new = port("bangertap000001", 2);
        let b = register_batch(&new, Egress::None, std::slice::from_ref(&old), &[]);
        let text = b.to_string();
        let cmds = b["nftables"].as_array().expect("array");
        let first_add_port = cmds
            .iter()
            .position(|c| c["add"]["element"]["name"] == PORTS_SET)
            .expect("adds the port");
        let delete_old = cmds
            .iter()
            .position(|c| c["delete"]["element"]["name"] == PORTS_SET)
            .expect("deletes the old port");
        assert!(delete_old < first_add_port, "{text}");
        assert!(text.contains("172.16.0.9") && text.contains("02:00:00:00:00:02"));
        let last = cmds.last().expect("cmd");
        assert_eq!(last["add"]["element"]["name"], NO_EGRESS_SET, "{text}");
        let all = register_batch(&new, Egress::All, &[], &[]);
        assert_eq!(
            all["nftables"]
                .as_array()
                .expect("array")
                .last()
                .expect("x")["add"]["element"]["name"],
            PORTS_SET
        );
    }

    #[test]
    fn grants_are_clamped_and_refreshed() {
        let b = grant_batch(
            Ipv4Addr::new(172, 16, 0, 2),
            &[
                (Ipv4Addr::new(1, 1, 1, 1), 0),
                (Ipv4Addr::new(2, 2, 2, 2), u32::MAX),
            ],
        );
        let cmds = b["nftables"].as_array().expect("array");
        assert_eq!(cmds.len(), 3);
        let elems = &cmds[2]["add"]["element"]["elem"];
        assert_eq!(elems[0]["elem"]["timeout"], MIN_GRANT_SECS);
        assert_eq!(elems[1]["elem"]["timeout"], MAX_GRANT_SECS);
    }
}
