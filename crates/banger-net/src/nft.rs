//! banger's nftables rules as libnftables JSON batches (`nft -j -f -`).
//!
//! banger owns exactly two tables and never reads or writes any other:
//!
//! * `ip banger`: `postrouting` (NAT) masquerades the VM subnet out of the
//!   default-route interface; `forward` accepts the bridge's traffic out and
//!   the replies back in.
//! * `bridge banger`: a `prerouting` chain at the bridge layer drops, for the
//!   taps listed in the `no_egress` set, every IPv4 packet to a destination
//!   outside the VM subnet and all IPv6. It filters by the *ingress bridge
//!   port* (the tap), which a guest cannot spoof, where a filter on the
//!   guest's source address could be bypassed by a root user inside the
//!   guest changing its address. The host can still reach the VM, and the VM
//!   can still answer it and use the gateway's DNS, because those packets
//!   stay inside the subnet.
//!
//! Each batch is applied atomically by `nft`: either all of it or none.

use banger_core::config::Subnet;
use serde_json::{Value, json};

pub const TABLE: &str = "banger";
pub const EGRESS_SET: &str = "no_egress";

fn prefix(subnet: &Subnet) -> Value {
    json!({"prefix": {"addr": subnet.network.to_string(), "len": subnet.prefix}})
}

fn rule(family: &str, chain: &str, expr: Vec<Value>) -> Value {
    json!({"add": {"rule": {"family": family, "table": TABLE, "chain": chain, "expr": expr}}})
}

fn meta_eq(key: &str, right: Value) -> Value {
    json!({"match": {"op": "==", "left": {"meta": {"key": key}}, "right": right}})
}

/// Install (or refresh) both tables. `ip banger` is rebuilt from scratch
/// (add + delete + add is nft's idiom for "replace, whether or not it
/// exists"); `bridge banger` keeps its `no_egress` set so per-tap settings
/// survive a daemon restart, and only its chain is flushed and refilled.
pub fn ensure_batch(bridge: &str, subnet: &Subnet, uplink: Option<&str>) -> Value {
    let mut cmds = vec![
        json!({"add": {"table": {"family": "ip", "name": TABLE}}}),
        json!({"delete": {"table": {"family": "ip", "name": TABLE}}}),
        json!({"add": {"table": {"family": "ip", "name": TABLE}}}),
        json!({"add": {"chain": {"family": "ip", "table": TABLE, "name": "postrouting",
            "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}}),
        json!({"add": {"chain": {"family": "ip", "table": TABLE, "name": "forward",
            "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}}),
    ];
    if let Some(uplink) = uplink {
        cmds.push(rule(
            "ip",
            "postrouting",
            vec![
                json!({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": prefix(subnet)}}),
                meta_eq("oifname", json!(uplink)),
                json!({"masquerade": null}),
            ],
        ));
    }
    cmds.push(rule(
        "ip",
        "forward",
        vec![
            meta_eq("iifname", json!(bridge)),
            json!({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": prefix(subnet)}}),
            json!({"accept": null}),
        ],
    ));
    cmds.push(rule(
        "ip",
        "forward",
        vec![
            meta_eq("oifname", json!(bridge)),
            json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}),
            json!({"accept": null}),
        ],
    ));
    cmds.extend([
        json!({"add": {"table": {"family": "bridge", "name": TABLE}}}),
        json!({"add": {"set": {"family": "bridge", "table": TABLE, "name": EGRESS_SET, "type": "ifname"}}}),
        json!({"add": {"chain": {"family": "bridge", "table": TABLE, "name": "prerouting",
            "type": "filter", "hook": "prerouting", "prio": -200, "policy": "accept"}}}),
        json!({"flush": {"chain": {"family": "bridge", "table": TABLE, "name": "prerouting"}}}),
    ]);
    let from_blocked = meta_eq("iifname", json!(format!("@{EGRESS_SET}")));
    cmds.push(rule(
        "bridge",
        "prerouting",
        vec![
            from_blocked.clone(),
            json!({"match": {"op": "==", "left": {"payload": {"protocol": "ether", "field": "type"}}, "right": "ip"}}),
            json!({"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": prefix(subnet)}}),
            json!({"counter": null}),
            json!({"drop": null}),
        ],
    ));
    cmds.push(rule(
        "bridge",
        "prerouting",
        vec![
            from_blocked,
            json!({"match": {"op": "==", "left": {"payload": {"protocol": "ether", "field": "type"}}, "right": "ip6"}}),
            json!({"drop": null}),
        ],
    ));
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

/// Put `tap` into (blocked) or take it out of (allowed) the `no_egress` set.
/// Adding an element is idempotent; deleting one that is absent is an error
/// in nft, so "allow" adds it first and then deletes it, in one batch.
pub fn egress_batch(tap: &str, allowed: bool) -> Value {
    let elem =
        json!({"element": {"family": "bridge", "table": TABLE, "name": EGRESS_SET, "elem": [tap]}});
    let mut cmds = vec![json!({"add": elem.clone()})];
    if allowed {
        cmds.push(json!({"delete": elem}));
    }
    json!({"nftables": cmds})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensure_batch_touches_only_bangers_tables() {
        let s = Subnet::parse("172.16.0.0/24").expect("subnet");
        let b = ensure_batch("banger0", &s, Some("eth0"));
        let cmds = b["nftables"].as_array().expect("array");
        for c in cmds {
            let (_verb, obj) = c
                .as_object()
                .and_then(|o| o.iter().next())
                .expect("one verb");
            let (kind, body) = obj
                .as_object()
                .and_then(|o| o.iter().next())
                .expect("one object");
            let table = if kind == "table" {
                &body["name"]
            } else {
                &body["table"]
            };
            assert_eq!(table, TABLE, "{c}");
        }
        let text = b.to_string();
        assert!(text.contains("\"masquerade\""));
        assert!(text.contains("\"eth0\""));
    }

    #[test]
    fn no_uplink_means_no_masquerade() {
        let s = Subnet::parse("172.16.0.0/24").expect("subnet");
        let text = ensure_batch("banger0", &s, None).to_string();
        assert!(!text.contains("masquerade"));
    }

    #[test]
    fn allow_is_add_then_delete() {
        let b = egress_batch("bangertap00aa11", true);
        let cmds = b["nftables"].as_array().expect("array");
        assert_eq!(cmds.len(), 2);
        assert!(cmds[0].get("add").is_some() && cmds[1].get("delete").is_some());
        assert_eq!(
            egress_batch("bangertap00aa11", false)["nftables"]
                .as_array()
                .map(Vec::len),
            Some(1)
        );
    }
}
