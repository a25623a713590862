//! Shape of the batches [`super::ensure_batch`] builds. The kernel's
//! verdicts on real frames are tested in `bangerd-root/tests/attacks.rs`.

use super::*;

fn policy(isolate: bool, block_lan: bool) -> NetPolicy {
    NetPolicy::new("banger0", "172.16.0.0/24", 53, isolate, block_lan).expect("policy")
}

fn rules<'a>(b: &'a Value, family: &str, chain: &str) -> Vec<&'a Value> {
    b["nftables"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|c| c["add"].get("rule"))
        .filter(|r| r["family"] == family && r["chain"] == chain)
        .map(|r| &r["expr"])
        .collect()
}

#[test]
fn ensure_batch_touches_only_bangers_tables() {
    let b = ensure_batch(&policy(true, true), Some("eth0"));
    for c in b["nftables"].as_array().expect("array") {
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
    let masq = rules(&b, "ip", "postrouting");
    assert_eq!(masq.len(), 1);
    assert!(masq[0].to_string().contains("\"eth0\""));
}

#[test]
fn no_uplink_means_no_masquerade() {
    let text = ensure_batch(&policy(true, true), None).to_string();
    assert!(!text.contains("masquerade"));
}

#[test]
fn every_guest_frame_that_is_not_ipv4_or_checked_arp_is_dropped() {
    let b = ensure_batch(&policy(true, true), None);
    let pre = rules(&b, "bridge", "prerouting");
    assert_eq!(pre.len(), 1);
    assert!(pre[0].to_string().contains("bangertap*"), "{}", pre[0]);
    let guest = rules(&b, "bridge", "guest");
    assert_eq!(guest.len(), 3, "arp accept, non-ip drop, identity drop");
    let arp = guest[0].to_string();
    assert!(
        arp.contains("saddr ether") && arp.contains("\"accept\""),
        "{arp}"
    );
    let non_ip = guest[1].to_string();
    assert!(
        non_ip.contains("\"!=\"") && non_ip.contains("\"type\"") && non_ip.contains("\"drop\""),
        "{non_ip}"
    );
    let ident = guest[2].to_string();
    assert!(
        ident.contains("@ports") && ident.contains("\"drop\""),
        "{ident}"
    );
}

#[test]
fn isolation_and_lan_blocking_follow_the_policy() {
    let on = ensure_batch(&policy(true, true), None);
    let off = ensure_batch(&policy(false, false), None);
    assert_eq!(rules(&on, "bridge", "forward").len(), 1);
    assert!(rules(&off, "bridge", "forward").is_empty());
    let hairpin = |b: &Value| rules(b, "ip", "forward")[0].to_string();
    assert!(hairpin(&on).contains("\"drop\""));
    assert!(hairpin(&off).contains("\"accept\""));
    let ranges = |b: &Value| -> Vec<String> {
        b["nftables"]
            .as_array()
            .expect("array")
            .iter()
            .filter(|c| c["add"]["element"]["name"] == BLOCKED_SET)
            .flat_map(|c| {
                c["add"]["element"]["elem"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .map(|e| {
                format!(
                    "{}/{}",
                    e["prefix"]["addr"].as_str().unwrap_or(""),
                    e["prefix"]["len"]
                )
            })
            .collect()
    };
    assert!(ranges(&on).contains(&"169.254.0.0/16".to_string()));
    assert!(ranges(&on).contains(&"192.168.0.0/16".to_string()));
    assert!(ranges(&off).contains(&"169.254.0.0/16".to_string()));
    assert!(!ranges(&off).contains(&"10.0.0.0/8".to_string()));
}

#[test]
fn the_host_offers_guests_only_dns_and_echo_on_the_gateway() {
    let b = ensure_batch(&policy(true, true), None);
    let input = rules(&b, "ip", "input");
    let last = input.last().expect("rules").to_string();
    assert!(
        last.contains("banger0") && last.contains("\"drop\"") && !last.contains("daddr"),
        "input ends in a drop of everything else from the bridge: {last}"
    );
    let accepts: Vec<String> = input
        .iter()
        .map(|r| r.to_string())
        .filter(|r| r.contains("\"accept\""))
        .collect();
    assert_eq!(accepts.len(), 4, "{accepts:?}");
    for a in &accepts[1..] {
        assert!(a.contains("172.16.0.1"), "only the gateway: {a}");
    }
}

#[test]
fn blocked_addresses_follow_the_blocked_set() {
    let ip = |s: &str| s.parse::<Ipv4Addr>().expect("ip");
    let (lan, open) = (policy(true, true), policy(true, false));
    for a in [
        "169.254.169.254",
        "127.0.0.1",
        "0.1.2.3",
        "224.0.0.1",
        "255.255.255.255",
    ] {
        assert!(is_blocked(&lan, ip(a)) && is_blocked(&open, ip(a)), "{a}");
    }
    for a in ["10.1.2.3", "192.168.7.7", "172.16.0.9", "100.64.0.1"] {
        assert!(is_blocked(&lan, ip(a)), "{a}");
        assert!(!is_blocked(&open, ip(a)), "{a} with block_lan = false");
    }
    for a in [
        "198.18.0.2",
        "140.82.112.3",
        "172.32.0.1",
        "223.255.255.255",
    ] {
        assert!(!is_blocked(&lan, ip(a)), "{a}");
    }
}
