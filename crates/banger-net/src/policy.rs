//! The network one banger installation runs, as the root helper was
//! configured with it (its command line, written by `banger system install`
//! or passed by `banger system run`). The helper decides the network from
//! this, never from a request: a compromised owner daemon cannot point the
//! helper at another bridge, a public range, or a second subnet.

use banger_core::config::{Subnet, validate_ifname};
use thiserror::Error;

/// Built-in values, the same as the daemon's config defaults.
pub const DEFAULT_BRIDGE: &str = "banger0";
pub const DEFAULT_SUBNET: &str = "172.16.0.0/24";
pub const DEFAULT_DNS_PORT: u16 = 53;

/// A configuration the helper refuses to run with.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    #[error("bridge: {0}")]
    Bridge(String),
    #[error("subnet: {0}")]
    Subnet(String),
    #[error(
        "subnet {0} is not inside a private range (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16); \
         a public, loopback or link-local range on the bridge would take over addresses the host \
         really uses — choose a free private /24 with `subnet = \"…\"` under [network]"
    )]
    NotPrivate(Subnet),
    #[error("DNS port 0 is not a port; use the port banger's DNS server listens on (53)")]
    DnsPort,
}

/// What the helper enforces for every VM of this installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetPolicy {
    /// The one bridge this installation uses.
    pub bridge: String,
    /// The VM subnet; the bridge holds its gateway (`.1`).
    pub subnet: Subnet,
    /// Port of banger's DNS server on the gateway: the only host service
    /// guests may reach (with ICMP echo to the gateway, for diagnostics).
    pub dns_port: u16,
    /// Drop VM-to-VM traffic (`[network] isolate_vms`).
    pub isolate_vms: bool,
    /// Drop traffic to the private ranges of the host's LAN
    /// (`[network] block_lan`): RFC 1918 and CGNAT 100.64.0.0/10.
    pub block_lan: bool,
}

impl NetPolicy {
    pub fn new(
        bridge: &str,
        subnet: &str,
        dns_port: u16,
        isolate_vms: bool,
        block_lan: bool,
    ) -> Result<Self, PolicyError> {
        validate_ifname(bridge).map_err(PolicyError::Bridge)?;
        let subnet = Subnet::parse(subnet).map_err(PolicyError::Subnet)?;
        if subnet.private_range().is_none() {
            return Err(PolicyError::NotPrivate(subnet));
        }
        if dns_port == 0 {
            return Err(PolicyError::DnsPort);
        }
        Ok(NetPolicy {
            bridge: bridge.to_string(),
            subnet,
            dns_port,
            isolate_vms,
            block_lan,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_daemon_config() {
        let p = NetPolicy::new(DEFAULT_BRIDGE, DEFAULT_SUBNET, DEFAULT_DNS_PORT, true, true)
            .expect("defaults");
        let cfg = banger_core::config::Config::default();
        assert_eq!(cfg.bridge_name().value, p.bridge);
        assert_eq!(cfg.vm_subnet().value, p.subnet);
        assert_eq!(cfg.dns_port().value, p.dns_port);
        assert_eq!(cfg.isolate_vms().value, p.isolate_vms);
        assert_eq!(cfg.block_lan().value, p.block_lan);
    }

    #[test]
    fn public_loopback_and_link_local_subnets_are_refused() {
        for s in [
            "8.8.8.0/24",
            "127.0.0.0/24",
            "169.254.0.0/16",
            "198.18.0.0/24",
            "100.64.0.0/24",
            "172.32.0.0/24",
            "192.169.0.0/24",
        ] {
            let e = NetPolicy::new("banger0", s, 53, true, true).expect_err(s);
            assert!(matches!(e, PolicyError::NotPrivate(_)), "{s}: {e}");
            assert!(e.to_string().contains("private range"), "{e}");
        }
        for s in ["10.200.0.0/24", "172.31.255.0/24", "192.168.77.0/24"] {
            assert!(NetPolicy::new("banger0", s, 53, true, true).is_ok(), "{s}");
        }
        assert!(matches!(
            NetPolicy::new("eth0", "10.0.0.0/24", 53, true, true),
            Err(PolicyError::Bridge(_))
        ));
        assert!(matches!(
            NetPolicy::new("banger0", "10.0.0.0/24", 0, true, true),
            Err(PolicyError::DnsPort)
        ));
    }
}
