//! Host IPv4 routes, as far as banger needs them: to refuse a VM subnet that
//! collides with a network the host already reaches, and to find the
//! default-route interface masquerade goes out of.

use std::net::Ipv4Addr;

use banger_core::config::Subnet;

/// One IPv4 route of the host's main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dest: Ipv4Addr,
    pub prefix: u8,
    pub dev: String,
}

impl Route {
    pub fn is_default(&self) -> bool {
        self.prefix == 0
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} dev {}", self.dest, self.prefix, self.dev)
    }
}

/// Parse `/proc/net/route` (the calling process's network namespace).
/// Addresses there are little-endian hex; malformed lines are skipped rather
/// than trusted.
pub fn parse_proc_net_route(text: &str) -> Vec<Route> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let dest = u32::from_str_radix(f[1], 16).ok()?;
            let mask = u32::from_str_radix(f[7], 16).ok()?;
            // The kernel prints the network-order word as a host-order
            // (little-endian here) integer.
            let mask = u32::from_be_bytes(mask.to_le_bytes());
            if mask.leading_ones() + mask.trailing_zeros() != 32 {
                return None;
            }
            Some(Route {
                dest: Ipv4Addr::from(dest.to_le_bytes()),
                prefix: mask.leading_ones() as u8,
                dev: f[0].to_string(),
            })
        })
        .collect()
}

/// First route (other than a default route, and other than routes on
/// banger's own bridge) whose network intersects `subnet`.
pub fn overlapping_route<'a>(
    subnet: &Subnet,
    bridge: &str,
    routes: &'a [Route],
) -> Option<&'a Route> {
    routes.iter().find(|r| {
        if r.is_default() || r.dev == bridge {
            return false;
        }
        // Two CIDR blocks intersect iff the shorter prefix contains the
        // other's network address.
        let common = r.mask() & subnet.mask();
        u32::from(r.dest) & common == u32::from(subnet.network) & common
    })
}

/// The interface of the (first) default route, if any.
pub fn default_route_dev(routes: &[Route]) -> Option<&str> {
    routes
        .iter()
        .find(|r| r.is_default())
        .map(|r| r.dev.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0102A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t0002A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
docker0\t000010AC\t00000000\t0001\t0\t0\t0\t0000F0FF\t0\t0\t0
banger0\t000010AC\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
garbage
";

    #[test]
    fn parses_proc_net_route() {
        let r = parse_proc_net_route(SAMPLE);
        assert_eq!(
            r,
            vec![
                Route {
                    dest: Ipv4Addr::UNSPECIFIED,
                    prefix: 0,
                    dev: "eth0".into()
                },
                Route {
                    dest: Ipv4Addr::new(192, 168, 2, 0),
                    prefix: 24,
                    dev: "eth0".into()
                },
                Route {
                    dest: Ipv4Addr::new(172, 16, 0, 0),
                    prefix: 12,
                    dev: "docker0".into()
                },
                Route {
                    dest: Ipv4Addr::new(172, 16, 0, 0),
                    prefix: 24,
                    dev: "banger0".into()
                },
            ]
        );
        assert_eq!(default_route_dev(&r), Some("eth0"));
    }

    #[test]
    fn overlap_ignores_default_and_own_bridge() {
        let routes = parse_proc_net_route(SAMPLE);
        let s = Subnet::parse("172.16.0.0/24").expect("subnet");
        let hit = overlapping_route(&s, "banger0", &routes).expect("docker0 /12 covers it");
        assert_eq!(hit.dev, "docker0");
        let free = Subnet::parse("10.77.0.0/24").expect("subnet");
        assert_eq!(overlapping_route(&free, "banger0", &routes), None);
        // A subnet containing a host route also conflicts.
        let wide = Subnet::parse("192.168.0.0/16").expect("subnet");
        assert_eq!(
            overlapping_route(&wide, "banger0", &routes).map(|r| r.dev.as_str()),
            Some("eth0")
        );
    }
}
