//! [`RootService`] decisions against the recording fake.

use serde_json::{Value, json};

use super::*;
use crate::host::{FakeHostNet, HostCall};
use crate::routes::Route;

fn svc() -> RootService<FakeHostNet> {
    let policy = NetPolicy::new("banger0", "172.16.0.0/24", 53, true, true).expect("policy");
    RootService::new(FakeHostNet::default(), 1000, policy)
}

/// A service whose nft tables exist.
fn installed() -> RootService<FakeHostNet> {
    let mut s = svc();
    s.host.tables = vec![
        ("bridge".into(), "banger".into()),
        ("ip".into(), "banger".into()),
    ];
    s
}

fn route(dest: [u8; 4], prefix: u8, dev: &str) -> Route {
    Route::main(dest.into(), prefix, dev)
}

fn tap_op(tap: &str, mac: &str, ip: &str, egress: Egress) -> RootOp {
    RootOp::CreateTap {
        tap: tap.into(),
        bridge: "banger0".into(),
        owner_uid: 1000,
        mac: mac.into(),
        ip: ip.into(),
        egress,
    }
}

fn port_elem(tap: &str, mac: &str, ip: &str) -> Value {
    json!({"concat": [tap, mac, ip]})
}

/// The ports set holds `bangertap0000NN` at `172.16.0.NN` (two digits).
fn registered(s: &mut RootService<FakeHostNet>, last: u8) {
    s.host.sets.insert(
        nft::PORTS_SET.into(),
        vec![port_elem(
            &format!("bangertap0000{last:02}"),
            &format!("02:00:00:00:00:{last:02}"),
            &format!("172.16.0.{last}"),
        )],
    );
}

#[test]
fn ensure_bridge_gives_gateway_address() {
    let mut s = svc();
    let r = s.handle(&RootOp::EnsureBridge {
        bridge: "banger0".into(),
        subnet: "172.16.0.0/24".into(),
    });
    assert_eq!(r, Ok(RootReply::Done));
    assert_eq!(
        s.host().mutations(),
        vec![&HostCall::EnsureBridge {
            name: "banger0".into(),
            addr: Ipv4Addr::new(172, 16, 0, 1),
            prefix: 24
        }]
    );
}

#[test]
fn overlapping_subnet_is_refused_naming_the_route() {
    let mut s = svc();
    s.host.routes = vec![
        route([0, 0, 0, 0], 0, "eth0"),
        route([172, 16, 0, 0], 12, "docker0"),
    ];
    let err = s
        .handle(&RootOp::EnsureBridge {
            bridge: "banger0".into(),
            subnet: "172.16.0.0/24".into(),
        })
        .expect_err("overlap");
    assert_eq!(err.kind, RootErrorKind::Conflict);
    assert!(
        err.message.contains("172.16.0.0/12 dev docker0"),
        "{}",
        err.message
    );
    assert!(
        s.host().mutations().is_empty(),
        "nothing may change on a conflict"
    );
}

#[test]
fn own_bridge_route_is_not_a_conflict() {
    let mut s = svc();
    s.host.routes = vec![route([172, 16, 0, 0], 24, "banger0")];
    assert!(
        s.handle(&RootOp::EnsureBridge {
            bridge: "banger0".into(),
            subnet: "172.16.0.0/24".into()
        })
        .is_ok()
    );
}

#[test]
fn the_request_cannot_choose_another_bridge_or_subnet() {
    let mut s = svc();
    for (bridge, subnet) in [
        ("banger1", "172.16.0.0/24"),
        ("banger0", "10.9.0.0/24"),
        ("banger0", "8.8.8.0/24"),
        ("banger0", "169.254.0.0/16"),
    ] {
        for op in [
            RootOp::EnsureBridge {
                bridge: bridge.into(),
                subnet: subnet.into(),
            },
            RootOp::EnsureNat {
                bridge: bridge.into(),
                subnet: subnet.into(),
            },
        ] {
            let err = s.handle(&op).expect_err("foreign network");
            assert_eq!(err.kind, RootErrorKind::BadRequest, "{op:?}: {err}");
            assert!(err.message.contains("this installation's"), "{err}");
        }
    }
    let err = s
        .handle(&RootOp::DeleteBridge {
            bridge: "banger1".into(),
        })
        .expect_err("second bridge");
    assert!(err.message.contains("one bridge"), "{err}");
    assert!(s.host().calls.is_empty(), "{:?}", s.host().calls);
}

#[test]
fn foreign_interface_names_and_bad_arguments_are_refused_before_any_change() {
    let mut s = installed();
    let ok_mac = "02:00:00:00:00:02";
    for op in [
        RootOp::EnsureBridge {
            bridge: "eth0".into(),
            subnet: "172.16.0.0/24".into(),
        },
        RootOp::EnsureBridge {
            bridge: "banger0".into(),
            subnet: "0.0.0.0/0".into(),
        },
        RootOp::DeleteBridge {
            bridge: "docker0".into(),
        },
        tap_op("../../etc/passwd", ok_mac, "172.16.0.2", Egress::All),
        tap_op("bangertap_much_too_long", ok_mac, "172.16.0.2", Egress::All),
        tap_op("bangerveth0", ok_mac, "172.16.0.2", Egress::All),
        tap_op("bangertap1", "01:00:5e:00:00:01", "172.16.0.2", Egress::All),
        tap_op("bangertap1", "00:00:00:00:00:00", "172.16.0.2", Egress::All),
        tap_op("bangertap1", "not-a-mac", "172.16.0.2", Egress::All),
        tap_op("bangertap1", ok_mac, "172.16.0.1", Egress::All),
        tap_op("bangertap1", ok_mac, "172.16.0.0", Egress::All),
        tap_op("bangertap1", ok_mac, "172.16.0.255", Egress::All),
        tap_op("bangertap1", ok_mac, "172.16.1.2", Egress::All),
        RootOp::CreateTap {
            tap: "bangertap1".into(),
            bridge: "banger0".into(),
            owner_uid: 0,
            mac: ok_mac.into(),
            ip: "172.16.0.2".into(),
            egress: Egress::All,
        },
        RootOp::DeleteTap { tap: "lo".into() },
        RootOp::EnsureNat {
            bridge: "br0".into(),
            subnet: "172.16.0.0/24".into(),
        },
        RootOp::AllowEgress {
            ip: "8.8.8.8".into(),
            grants: vec![],
        },
        RootOp::AllowEgress {
            ip: "172.16.0.2".into(),
            grants: vec![EgressGrant {
                addr: "224.0.0.1".into(),
                ttl_secs: 60,
            }],
        },
        RootOp::WireResolved {
            bridge: "banger0".into(),
            dns_addr: "8.8.8.8; rm -rf /".into(),
        },
        RootOp::WireResolved {
            bridge: "banger0".into(),
            dns_addr: "0.0.0.0".into(),
        },
        RootOp::WireResolved {
            bridge: "banger0".into(),
            dns_addr: "172.16.0.1:0".into(),
        },
        RootOp::UnwireResolved {
            bridge: "wlan0".into(),
        },
    ] {
        let err = s.handle(&op).expect_err(&format!("{op:?} must be refused"));
        assert_eq!(err.kind, RootErrorKind::BadRequest, "{op:?}: {err}");
    }
    assert!(s.host().mutations().is_empty(), "{:?}", s.host().calls);
}

#[test]
fn create_tap_binds_then_creates_and_cleans_up_on_failure() {
    let mut s = installed();
    let op = tap_op(
        "bangertap0a1b2c",
        "02:00:00:00:00:02",
        "172.16.0.2",
        Egress::None,
    );
    assert_eq!(s.handle(&op), Ok(RootReply::Done));
    let m = s.host().mutations();
    let HostCall::NftApply { batch } = m[0] else {
        panic!("binds first: {m:?}")
    };
    let text = batch.to_string();
    assert!(
        text.contains("bangertap0a1b2c") && text.contains("02:00:00:00:00:02"),
        "{text}"
    );
    assert!(text.contains(nft::NO_EGRESS_SET), "{text}");
    assert_eq!(
        &m[1..],
        &[
            &HostCall::CreateTap {
                name: "bangertap0a1b2c".into(),
                owner_uid: 1000
            },
            &HostCall::Attach {
                link: "bangertap0a1b2c".into(),
                bridge: "banger0".into()
            },
        ]
    );
    let mut s = installed();
    s.host.fail = Some("Attach");
    let err = s.handle(&op).expect_err("attach fails");
    assert_eq!(err.kind, RootErrorKind::Failed);
    assert_eq!(
        s.host().calls.last(),
        Some(&HostCall::DeleteLink {
            name: "bangertap0a1b2c".into()
        })
    );
}

#[test]
fn create_tap_needs_the_filters_installed() {
    let mut s = svc();
    let err = s
        .handle(&tap_op(
            "bangertap000001",
            "02:00:00:00:00:02",
            "172.16.0.2",
            Egress::All,
        ))
        .expect_err("no tables");
    assert_eq!(err.kind, RootErrorKind::Conflict);
    assert!(s.host().mutations().is_empty());
}

#[test]
fn a_live_siblings_address_or_mac_cannot_be_taken_but_a_stale_one_is_replaced() {
    let mut s = installed();
    registered(&mut s, 9);
    s.host.links = vec!["bangertap000009".into()];
    for op in [
        tap_op(
            "bangertap000001",
            "02:00:00:00:00:01",
            "172.16.0.9",
            Egress::All,
        ),
        tap_op(
            "bangertap000001",
            "02:00:00:00:00:09",
            "172.16.0.2",
            Egress::All,
        ),
    ] {
        let err = s.handle(&op).expect_err("taken");
        assert_eq!(err.kind, RootErrorKind::Conflict, "{err}");
        assert!(err.message.contains("bangertap000009"), "{err}");
    }
    assert!(s.host().mutations().is_empty());
    s.host.links.clear();
    s.handle(&tap_op(
        "bangertap000001",
        "02:00:00:00:00:01",
        "172.16.0.9",
        Egress::All,
    ))
    .expect("stale binding replaced");
    let b = s.host().batches()[0].to_string();
    assert!(
        b.contains("\"delete\"") && b.contains("bangertap000009"),
        "{b}"
    );
}

#[test]
fn delete_tap_forgets_identity_policy_and_grants() {
    let mut s = installed();
    registered(&mut s, 2);
    s.host.sets.insert(
        nft::ALLOWED_SET.into(),
        vec![
            json!({"elem": {"val": {"concat": ["172.16.0.2", "140.82.112.3"]}, "timeout": 60}}),
            json!({"elem": {"val": {"concat": ["172.16.0.3", "1.1.1.1"]}, "timeout": 60}}),
        ],
    );
    s.handle(&RootOp::DeleteTap {
        tap: "bangertap000002".into(),
    })
    .expect("delete");
    let m = s.host().mutations();
    assert_eq!(
        m[0],
        &HostCall::DeleteLink {
            name: "bangertap000002".into()
        }
    );
    let b = s.host().batches()[0].to_string();
    assert!(b.contains("140.82.112.3"), "its grant goes: {b}");
    assert!(!b.contains("1.1.1.1"), "a sibling's grant stays: {b}");
}

#[test]
fn allow_egress_only_for_allowlisted_guests() {
    let mut s = installed();
    let op = RootOp::AllowEgress {
        ip: "172.16.0.2".into(),
        grants: vec![EgressGrant {
            addr: "140.82.112.3".into(),
            ttl_secs: 300,
        }],
    };
    registered(&mut s, 2);
    let err = s.handle(&op).expect_err("not listed");
    assert_eq!(err.kind, RootErrorKind::Conflict);
    s.host
        .sets
        .insert(nft::LISTED_SET.into(), vec![json!("172.16.0.2")]);
    s.handle(&op).expect("granted");
    let b = s.host().batches()[0].to_string();
    assert!(b.contains("140.82.112.3") && b.contains("300"), "{b}");
}

#[test]
fn allow_egress_never_grants_blocked_ranges_or_unregistered_guests() {
    let mut s = installed();
    s.host
        .sets
        .insert(nft::LISTED_SET.into(), vec![json!("172.16.0.2")]);
    let grant = |ip: &str, addr: &str| RootOp::AllowEgress {
        ip: ip.into(),
        grants: vec![EgressGrant {
            addr: addr.into(),
            ttl_secs: 60,
        }],
    };
    let err = s
        .handle(&grant("172.16.0.2", "140.82.112.3"))
        .expect_err("no tap holds the address");
    assert_eq!(err.kind, RootErrorKind::Conflict, "{err}");
    registered(&mut s, 2);
    for addr in [
        "169.254.169.254",
        "127.0.0.1",
        "10.1.2.3",
        "192.168.7.7",
        "172.16.0.3",
        "172.16.0.1",
        "224.0.0.251",
        "255.255.255.255",
        "0.0.0.0",
        "2001:db8::1",
        "example.com",
    ] {
        let err = s.handle(&grant("172.16.0.2", addr)).expect_err(addr);
        assert_eq!(err.kind, RootErrorKind::BadRequest, "{addr}: {err}");
    }
    for ip in ["172.16.0.1", "198.18.0.2", "172.16.0.0"] {
        let err = s.handle(&grant(ip, "140.82.112.3")).expect_err(ip);
        assert_eq!(err.kind, RootErrorKind::BadRequest, "{ip}: {err}");
    }
    let many = RootOp::AllowEgress {
        ip: "172.16.0.2".into(),
        grants: (0..=MAX_GRANTS as u32)
            .map(|i| EgressGrant {
                addr: Ipv4Addr::from(0x8c52_0000 + i).to_string(),
                ttl_secs: 60,
            })
            .collect(),
    };
    assert_eq!(
        s.handle(&many).expect_err("too many").kind,
        RootErrorKind::BadRequest
    );
    assert!(s.host().batches().is_empty(), "nothing was granted");
    s.handle(&grant("172.16.0.2", "198.18.0.4"))
        .expect("an outside address");
}

#[test]
fn nat_uses_default_route_interface() {
    let mut s = svc();
    s.host.routes = vec![route([0, 0, 0, 0], 0, "enp3s0")];
    let r = s.handle(&RootOp::EnsureNat {
        bridge: "banger0".into(),
        subnet: "172.16.0.0/24".into(),
    });
    assert_eq!(
        r,
        Ok(RootReply::Nat {
            uplink: Some("enp3s0".into())
        })
    );
    assert!(s.host().batches()[0].to_string().contains("enp3s0"));
    let mut s = svc();
    assert_eq!(
        s.handle(&RootOp::EnsureNat {
            bridge: "banger0".into(),
            subnet: "172.16.0.0/24".into()
        }),
        Ok(RootReply::Nat { uplink: None })
    );
}

#[test]
fn resolved_wiring_is_argv_only_vm_domain() {
    let mut s = svc();
    s.handle(&RootOp::WireResolved {
        bridge: "banger0".into(),
        dns_addr: "172.16.0.1".into(),
    })
    .expect("wire");
    s.handle(&RootOp::UnwireResolved {
        bridge: "banger0".into(),
    })
    .expect("unwire");
    let args: Vec<Vec<String>> = s
        .host()
        .calls
        .iter()
        .filter_map(|c| match c {
            HostCall::Resolvectl { args } => Some(args.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        args,
        vec![
            vec!["dns", "banger0", "172.16.0.1"],
            vec!["domain", "banger0", "~vm"],
            vec!["default-route", "banger0", "false"],
            vec!["revert", "banger0"],
        ]
    );
}
