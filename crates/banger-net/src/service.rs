//! The root helper's decision logic: validate every argument of a
//! [`RootOp`] against the helper's own [`NetPolicy`], then drive the
//! [`HostNet`] primitives. Kept apart from the socket handling in
//! `bangerd-root` so it is unit-tested with [`crate::host::FakeHostNet`].

use std::net::{Ipv4Addr, SocketAddrV4};

use banger_core::config::validate_ifname;
use banger_proto::root::{
    Egress, EgressGrant, ROOT_PROTOCOL_VERSION, RootError, RootErrorKind, RootOp, RootReply,
};

use crate::alloc::{Mac, TAP_PREFIX};
use crate::host::{HostError, HostNet};
use crate::nft;
use crate::policy::NetPolicy;
use crate::ports::{self, Port};
use crate::routes::{default_route_dev, overlapping_route};

/// Most addresses one `allow_egress` may grant (a DNS answer rarely holds
/// more than a dozen).
pub const MAX_GRANTS: usize = 64;

/// Executes root operations for one owner uid and one network.
pub struct RootService<H> {
    host: H,
    owner_uid: u32,
    policy: NetPolicy,
}

fn bad(msg: impl Into<String>) -> RootError {
    RootError::new(RootErrorKind::BadRequest, msg)
}

fn conflict(msg: impl Into<String>) -> RootError {
    RootError::new(RootErrorKind::Conflict, msg)
}

fn failed(e: HostError) -> RootError {
    RootError::new(RootErrorKind::Failed, e.to_string())
}

fn ifname(what: &str, name: &str) -> Result<(), RootError> {
    validate_ifname(name).map_err(|e| bad(format!("{what}: {e}")))
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
    pub fn new(host: H, owner_uid: u32, policy: NetPolicy) -> Self {
        RootService {
            host,
            owner_uid,
            policy,
        }
    }

    pub fn host(&self) -> &H {
        &self.host
    }

    pub fn owner_uid(&self) -> u32 {
        self.owner_uid
    }

    pub fn policy(&self) -> &NetPolicy {
        &self.policy
    }

    /// The bridge a request names must be this installation's one bridge.
    fn our_bridge(&self, bridge: &str) -> Result<(), RootError> {
        ifname("bridge", bridge)?;
        if bridge != self.policy.bridge {
            return Err(bad(format!(
                "bridge {bridge:?} is not this installation's bridge {:?}; the root helper serves                  one bridge, set by its own configuration (`banger system install` writes it from                  [network] in config.toml)",
                self.policy.bridge
            )));
        }
        Ok(())
    }

    /// Bridge and subnet of a request must be the helper's own.
    fn our_network(&self, bridge: &str, subnet: &str) -> Result<(), RootError> {
        self.our_bridge(bridge)?;
        if subnet != self.policy.subnet.to_string() {
            return Err(bad(format!(
                "subnet {subnet:?} is not this installation's VM subnet {}; the root helper decides                  the subnet from its own configuration — set the same `subnet` under [network] in                  config.toml, or reinstall with `banger system install` to change it",
                self.policy.subnet
            )));
        }
        Ok(())
    }

    /// An address a VM can hold: inside the subnet, not its network,
    /// gateway or broadcast address.
    fn vm_ip(&self, s: &str) -> Result<Ipv4Addr, RootError> {
        let ip: Ipv4Addr = s
            .parse()
            .map_err(|_| bad(format!("VM address {s:?} is not an IPv4 address")))?;
        let n = &self.policy.subnet;
        if !n.contains(ip) || ip == n.network || ip == n.gateway() || ip == n.broadcast() {
            return Err(bad(format!(
                "VM address {ip} is not a VM address of the subnet {n} (network, gateway and                  broadcast are not)"
            )));
        }
        Ok(ip)
    }

    /// Validate and carry out one operation.
    pub fn handle(&mut self, op: &RootOp) -> Result<RootReply, RootError> {
        match op {
            RootOp::Ping => Ok(RootReply::Pong {
                protocol_version: ROOT_PROTOCOL_VERSION,
                helper_version: env!("CARGO_PKG_VERSION").to_string(),
                owner_uid: self.owner_uid,
                bridge: self.policy.bridge.clone(),
                subnet: self.policy.subnet.to_string(),
            }),
            RootOp::EnsureBridge { bridge, subnet } => {
                self.our_network(bridge, subnet)?;
                let s = self.policy.subnet;
                let routes = self.host.routes().map_err(failed)?;
                if let Some(r) = overlapping_route(&s, bridge, &routes) {
                    return Err(conflict(format!(
                        "VM subnet {s} overlaps the host route {r}; choose a free range with                          `subnet = \"…\"` under [network] and reinstall (`banger system install`)"
                    )));
                }
                self.host
                    .ensure_bridge(bridge, s.gateway(), s.prefix)
                    .map_err(failed)?;
                Ok(RootReply::Done)
            }
            RootOp::DeleteBridge { bridge } => {
                self.our_bridge(bridge)?;
                self.host.delete_link(bridge).map_err(failed)?;
                Ok(RootReply::Done)
            }
            RootOp::CreateTap {
                tap,
                bridge,
                owner_uid,
                mac,
                ip,
                egress,
            } => self.create_tap(tap, bridge, *owner_uid, mac, ip, *egress),
            RootOp::DeleteTap { tap } => {
                ifname("tap", tap)?;
                self.host.delete_link(tap).map_err(failed)?;
                // A tap name is reused when a VM comes back; it must not
                // inherit an old identity or egress policy.
                if self.tables_present()? {
                    let old = self.ports_of(|p| p.tap == *tap)?;
                    let grants = self.grants_of(&old)?;
                    if !old.is_empty() {
                        self.host
                            .nft_apply(&ports::unregister_batch(&old, &grants))
                            .map_err(failed)?;
                    }
                }
                Ok(RootReply::Done)
            }
            RootOp::EnsureNat { bridge, subnet } => {
                self.our_network(bridge, subnet)?;
                let routes = self.host.routes().map_err(failed)?;
                let uplink = default_route_dev(&routes)
                    .filter(|d| *d != bridge.as_str())
                    .map(str::to_string);
                self.host
                    .nft_apply(&nft::ensure_batch(&self.policy, uplink.as_deref()))
                    .map_err(failed)?;
                Ok(RootReply::Nat { uplink })
            }
            RootOp::RemoveNat => {
                self.host.nft_apply(&nft::remove_batch()).map_err(failed)?;
                Ok(RootReply::Done)
            }
            RootOp::AllowEgress { ip, grants } => self.allow_egress(ip, grants),
            RootOp::WireResolved {
                bridge,
                dns_addr: a,
            } => {
                self.our_bridge(bridge)?;
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
                self.our_bridge(bridge)?;
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

    fn create_tap(
        &mut self,
        tap: &str,
        bridge: &str,
        owner_uid: u32,
        mac: &str,
        ip: &str,
        egress: Egress,
    ) -> Result<RootReply, RootError> {
        ifname("tap", tap)?;
        // The guest filters match taps by this prefix: a tap named
        // otherwise would escape them.
        if !tap.starts_with(TAP_PREFIX) {
            return Err(bad(format!(
                "tap {tap:?} does not start with {TAP_PREFIX:?}; banger's guest filters only                  cover taps with that prefix"
            )));
        }
        self.our_bridge(bridge)?;
        if owner_uid != self.owner_uid {
            return Err(bad(format!(
                "tap owner uid {owner_uid} is not this helper's owner uid {}; taps are only                  created for the owner",
                self.owner_uid
            )));
        }
        let mac: Mac = mac.parse().map_err(|e| bad(format!("tap MAC: {e}")))?;
        if !mac.is_guest_unicast() {
            return Err(bad(format!(
                "tap MAC {mac} is multicast or all zeros; a guest NIC needs a unicast MAC"
            )));
        }
        let ip = self.vm_ip(ip)?;
        if !self.tables_present()? {
            return Err(conflict(
                "banger's nftables tables are not installed; send ensure_nat before create_tap                  (a tap without its guest filters would be a hole)",
            ));
        }
        // Another tap's binding of this address or MAC: a conflict while
        // that tap exists, stale (its VM went while the helper was down)
        // once it does not.
        let mut stale_others = Vec::new();
        for other in self.ports_of(|p| p.tap != tap && (p.ip == ip || p.mac == mac))? {
            if self.host.link_exists(&other.tap).map_err(failed)? {
                return Err(conflict(format!(
                    "{} already holds {} / {}; a VM's address and MAC are its own",
                    other.tap, other.ip, other.mac
                )));
            }
            stale_others.push(other);
        }
        let port = Port {
            tap: tap.to_string(),
            mac,
            ip,
        };
        let mut old = self.ports_of(|p| p.tap == tap)?;
        old.extend(stale_others);
        let mut stale = old.clone();
        stale.push(port.clone());
        let grants = self.grants_of(&stale)?;
        // Bind first: until the tap exists nothing can use the binding, and
        // a tap that exists unbound has all its frames dropped.
        self.host
            .nft_apply(&ports::register_batch(&port, egress, &old, &grants))
            .map_err(failed)?;
        self.host.create_tap(tap, owner_uid).map_err(failed)?;
        if let Err(e) = self.host.attach(tap, bridge) {
            // Don't leave a half-made tap behind for the next create to trip
            // over.
            let _ = self.host.delete_link(tap);
            return Err(failed(e));
        }
        Ok(RootReply::Done)
    }

    /// Grants for an allowlisted guest, from its DNS answers. Everything is
    /// checked here, not trusted from the daemon: the guest is a registered
    /// tap's address whose policy is the allowlist, each address is one a
    /// guest may reach at all (outside the VM subnet and every blocked
    /// range: a compromised daemon cannot grant metadata or the LAN), at
    /// most [`MAX_GRANTS`] per request; the TTL is clamped in the batch.
    fn allow_egress(&mut self, ip: &str, grants: &[EgressGrant]) -> Result<RootReply, RootError> {
        let guest = self.vm_ip(ip)?;
        if grants.len() > MAX_GRANTS {
            return Err(bad(format!(
                "{} grants in one request; at most {MAX_GRANTS} (one DNS answer's addresses)",
                grants.len()
            )));
        }
        let mut parsed = Vec::with_capacity(grants.len());
        for g in grants {
            let a: Ipv4Addr = g.addr.parse().map_err(|_| {
                bad(format!(
                    "granted address {:?} is not an IPv4 address",
                    g.addr
                ))
            })?;
            if a.is_broadcast()
                || self.policy.subnet.contains(a)
                || nft::is_blocked(&self.policy, a)
            {
                return Err(bad(format!(
                    "granted address {a} is in the VM subnet or a range no guest may reach \
                     (loopback, link-local and cloud metadata, multicast, reserved{})",
                    if self.policy.block_lan {
                        ", the LAN's private ranges"
                    } else {
                        ""
                    }
                )));
            }
            parsed.push((a, g.ttl_secs));
        }
        if !self.tables_present()? {
            return Err(conflict(
                "banger's nftables tables are not installed; send ensure_nat first",
            ));
        }
        if self.ports_of(|p| p.ip == guest)?.is_empty() {
            return Err(conflict(format!(
                "no tap is registered for {guest}; grants are only for a running VM's address"
            )));
        }
        let listed = self
            .host
            .nft_set_elements("ip", nft::LISTED_SET)
            .map_err(failed)?;
        if !listed
            .iter()
            .any(|e| e.as_str() == Some(&guest.to_string()))
        {
            return Err(conflict(format!(
                "the VM at {guest} has no allowlist egress policy; create its tap with egress                  \"allowlist\" first"
            )));
        }
        if !parsed.is_empty() {
            self.host
                .nft_apply(&ports::grant_batch(guest, &parsed))
                .map_err(failed)?;
        }
        Ok(RootReply::Done)
    }

    fn tables_present(&mut self) -> Result<bool, RootError> {
        let tables = self.host.nft_tables().map_err(failed)?;
        let has = |fam: &str| tables.iter().any(|(f, n)| f == fam && n == nft::TABLE);
        Ok(has("bridge") && has("ip"))
    }

    fn ports_of(&mut self, pick: impl Fn(&Port) -> bool) -> Result<Vec<Port>, RootError> {
        let elems = self
            .host
            .nft_set_elements("bridge", nft::PORTS_SET)
            .map_err(failed)?;
        Ok(ports::parse_ports(&elems)
            .into_iter()
            .filter(pick)
            .collect())
    }

    /// Allowlist grants held by any of these ports' addresses.
    fn grants_of(&mut self, of: &[Port]) -> Result<Vec<(Ipv4Addr, Ipv4Addr)>, RootError> {
        if of.is_empty() {
            return Ok(Vec::new());
        }
        let elems = self
            .host
            .nft_set_elements("ip", nft::ALLOWED_SET)
            .map_err(failed)?;
        Ok(ports::parse_grants(&elems)
            .into_iter()
            .filter(|(g, _)| of.iter().any(|p| p.ip == *g))
            .collect())
    }
}

#[cfg(test)]
#[path = "service_tests.rs"]
mod tests;
