//! The root helper's decision logic: validate every argument of a
//! [`RootOp`], then drive the [`HostNet`] primitives. Kept apart from the
//! socket handling in `bangerd-root` so it is unit-tested with
//! [`crate::host::FakeHostNet`].

use std::net::{Ipv4Addr, SocketAddrV4};

use banger_core::config::{Subnet, validate_ifname};
use banger_proto::root::{ROOT_PROTOCOL_VERSION, RootError, RootErrorKind, RootOp, RootReply};

use crate::host::{HostError, HostNet};
use crate::nft;
use crate::routes::{default_route_dev, overlapping_route};

/// Executes root operations for one owner uid.
pub struct RootService<H> {
    host: H,
    owner_uid: u32,
}

fn bad(msg: impl Into<String>) -> RootError {
    RootError::new(RootErrorKind::BadRequest, msg)
}

fn failed(e: HostError) -> RootError {
    RootError::new(RootErrorKind::Failed, e.to_string())
}

fn ifname(what: &str, name: &str) -> Result<(), RootError> {
    validate_ifname(name).map_err(|e| bad(format!("{what}: {e}")))
}

fn subnet(s: &str) -> Result<Subnet, RootError> {
    Subnet::parse(s).map_err(bad)
}

/// `a.b.c.d` or `a.b.c.d:port`, a unicast address. Returned in the form
/// `resolvectl dns` takes.
fn dns_addr(s: &str) -> Result<String, RootError> {
    let ip = match s.parse::<SocketAddrV4>() {
        Ok(sa) if sa.port() != 0 => *sa.ip(),
        Ok(_) => return Err(bad(format!("DNS address {s:?} has port 0"))),
        Err(_) => s.parse::<Ipv4Addr>().map_err(|_| {
            bad(format!(
                "DNS address {s:?} is not an IPv4 address or IPv4:port"
            ))
        })?,
    };
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
        return Err(bad(format!("DNS address {s:?} is not a unicast address")));
    }
    Ok(s.to_string())
}

impl<H: HostNet> RootService<H> {
    pub fn new(host: H, owner_uid: u32) -> Self {
        RootService { host, owner_uid }
    }

    pub fn host(&self) -> &H {
        &self.host
    }

    pub fn owner_uid(&self) -> u32 {
        self.owner_uid
    }

    /// Validate and carry out one operation.
    pub fn handle(&mut self, op: &RootOp) -> Result<RootReply, RootError> {
        match op {
            RootOp::Ping => Ok(RootReply::Pong {
                protocol_version: ROOT_PROTOCOL_VERSION,
                helper_version: env!("CARGO_PKG_VERSION").to_string(),
                owner_uid: self.owner_uid,
            }),
            RootOp::EnsureBridge { bridge, subnet: s } => {
                ifname("bridge", bridge)?;
                let s = subnet(s)?;
                let routes = self.host.routes().map_err(failed)?;
                if let Some(r) = overlapping_route(&s, bridge, &routes) {
                    return Err(RootError::new(
                        RootErrorKind::Conflict,
                        format!(
                            "VM subnet {s} overlaps the host route {r}; choose a free range with `subnet = \"…\"` in config.toml"
                        ),
                    ));
                }
                self.host
                    .ensure_bridge(bridge, s.gateway(), s.prefix)
                    .map_err(failed)?;
                Ok(RootReply::Done)
            }
            RootOp::DeleteBridge { bridge } => {
                ifname("bridge", bridge)?;
                self.host.delete_link(bridge).map_err(failed)?;
                Ok(RootReply::Done)
            }
            RootOp::CreateTap {
                tap,
                bridge,
                owner_uid,
            } => {
                ifname("tap", tap)?;
                ifname("bridge", bridge)?;
                if tap == bridge {
                    return Err(bad(format!("tap and bridge are both {tap:?}")));
                }
                if *owner_uid != self.owner_uid {
                    return Err(bad(format!(
                        "tap owner uid {owner_uid} is not this helper's owner uid {}; taps are only created for the owner",
                        self.owner_uid
                    )));
                }
                self.host.create_tap(tap, *owner_uid).map_err(failed)?;
                if let Err(e) = self.host.attach(tap, bridge) {
                    // Don't leave a half-made tap behind for the next create
                    // to trip over.
                    let _ = self.host.delete_link(tap);
                    return Err(failed(e));
                }
                Ok(RootReply::Done)
            }
            RootOp::DeleteTap { tap } => {
                ifname("tap", tap)?;
                self.host.delete_link(tap).map_err(failed)?;
                // A tap name is reused when a VM of the same id comes back;
                // it must not inherit an old egress block.
                if self.egress_table_present()? {
                    self.host
                        .nft_apply(&nft::egress_batch(tap, true))
                        .map_err(failed)?;
                }
                Ok(RootReply::Done)
            }
            RootOp::EnsureNat { bridge, subnet: s } => {
                ifname("bridge", bridge)?;
                let s = subnet(s)?;
                let routes = self.host.routes().map_err(failed)?;
                let uplink = default_route_dev(&routes)
                    .filter(|d| *d != bridge.as_str())
                    .map(str::to_string);
                self.host
                    .nft_apply(&nft::ensure_batch(bridge, &s, uplink.as_deref()))
                    .map_err(failed)?;
                Ok(RootReply::Nat { uplink })
            }
            RootOp::RemoveNat => {
                self.host.nft_apply(&nft::remove_batch()).map_err(failed)?;
                Ok(RootReply::Done)
            }
            RootOp::SetEgress { tap, allowed } => {
                ifname("tap", tap)?;
                if !self.egress_table_present()? {
                    return Err(RootError::new(
                        RootErrorKind::Conflict,
                        "banger's nftables tables are not installed; send ensure_nat before set_egress",
                    ));
                }
                self.host
                    .nft_apply(&nft::egress_batch(tap, *allowed))
                    .map_err(failed)?;
                Ok(RootReply::Done)
            }
            RootOp::WireResolved {
                bridge,
                dns_addr: a,
            } => {
                ifname("bridge", bridge)?;
                let a = dns_addr(a)?;
                for args in [
                    vec!["dns".to_string(), bridge.clone(), a],
                    vec!["domain".into(), bridge.clone(), "~vm".into()],
                    // Only .vm goes to banger; everything else keeps using
                    // the host's usual resolvers (banger would refuse it).
                    vec!["default-route".into(), bridge.clone(), "false".into()],
                ] {
                    self.host.resolvectl(&args).map_err(failed)?;
                }
                Ok(RootReply::Done)
            }
            RootOp::UnwireResolved { bridge } => {
                ifname("bridge", bridge)?;
                self.host
                    .resolvectl(&["revert".to_string(), bridge.clone()])
                    .map_err(failed)?;
                Ok(RootReply::Done)
            }
            RootOp::EnableForwarding => {
                self.host.set_ip_forward(true).map_err(failed)?;
                Ok(RootReply::Done)
            }
        }
    }

    fn egress_table_present(&mut self) -> Result<bool, RootError> {
        let tables = self.host.nft_tables().map_err(failed)?;
        Ok(tables.iter().any(|(f, n)| f == "bridge" && n == nft::TABLE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{FakeHostNet, HostCall};
    use crate::routes::Route;

    fn svc() -> RootService<FakeHostNet> {
        RootService::new(FakeHostNet::default(), 1000)
    }

    fn route(dest: [u8; 4], prefix: u8, dev: &str) -> Route {
        Route {
            dest: dest.into(),
            prefix,
            dev: dev.into(),
        }
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
    fn foreign_interface_names_and_bad_subnets_are_refused_before_any_change() {
        let mut s = svc();
        for op in [
            RootOp::EnsureBridge {
                bridge: "eth0".into(),
                subnet: "172.16.0.0/24".into(),
            },
            RootOp::EnsureBridge {
                bridge: "banger0".into(),
                subnet: "0.0.0.0/0".into(),
            },
            RootOp::EnsureBridge {
                bridge: "banger0".into(),
                subnet: "172.16.0.1/24".into(),
            },
            RootOp::DeleteBridge {
                bridge: "docker0".into(),
            },
            RootOp::CreateTap {
                tap: "../../etc/passwd".into(),
                bridge: "banger0".into(),
                owner_uid: 1000,
            },
            RootOp::CreateTap {
                tap: "bangertap_much_too_long".into(),
                bridge: "banger0".into(),
                owner_uid: 1000,
            },
            RootOp::CreateTap {
                tap: "bangertap1".into(),
                bridge: "banger0".into(),
                owner_uid: 0,
            },
            RootOp::CreateTap {
                tap: "banger0".into(),
                bridge: "banger0".into(),
                owner_uid: 1000,
            },
            RootOp::DeleteTap { tap: "lo".into() },
            RootOp::EnsureNat {
                bridge: "br0".into(),
                subnet: "172.16.0.0/24".into(),
            },
            RootOp::SetEgress {
                tap: "eth0".into(),
                allowed: false,
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
    fn create_tap_owns_then_attaches_and_cleans_up_on_failure() {
        let mut s = svc();
        let op = RootOp::CreateTap {
            tap: "bangertap0a1b2c".into(),
            bridge: "banger0".into(),
            owner_uid: 1000,
        };
        assert_eq!(s.handle(&op), Ok(RootReply::Done));
        assert_eq!(
            s.host().mutations(),
            vec![
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
        let mut s = svc();
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
        let HostCall::NftApply { batch } = s.host().mutations()[0] else {
            panic!("expected nft")
        };
        assert!(batch.to_string().contains("enp3s0"));
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
    fn set_egress_needs_the_table_and_delete_tap_clears_it() {
        let mut s = svc();
        let err = s
            .handle(&RootOp::SetEgress {
                tap: "bangertapaaaaaa".into(),
                allowed: false,
            })
            .expect_err("no table");
        assert_eq!(err.kind, RootErrorKind::Conflict);
        s.host.tables = vec![("bridge".into(), "banger".into())];
        assert!(
            s.handle(&RootOp::SetEgress {
                tap: "bangertapaaaaaa".into(),
                allowed: false
            })
            .is_ok()
        );
        assert!(
            s.handle(&RootOp::DeleteTap {
                tap: "bangertapaaaaaa".into()
            })
            .is_ok()
        );
        let m = s.host().mutations();
        assert_eq!(
            m[0],
            &HostCall::NftApply {
                batch: nft::egress_batch("bangertapaaaaaa", false)
            }
        );
        assert_eq!(
            m[1],
            &HostCall::DeleteLink {
                name: "bangertapaaaaaa".into()
            }
        );
        assert_eq!(
            m[2],
            &HostCall::NftApply {
                batch: nft::egress_batch("bangertapaaaaaa", true)
            }
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
}
