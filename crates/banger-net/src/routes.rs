//! Host IPv4 routes, as far as banger needs them: to refuse a VM subnet that
//! collides with a network the host already reaches (in *any* routing
//! table: a policy-routing table can claim a range the main table does not
//! show), and to find the default-route interface masquerade goes out of.

use std::net::Ipv4Addr;

use banger_core::config::Subnet;

/// The main routing table's id.
pub const MAIN_TABLE: u32 = 254;

/// One IPv4 route of one of the host's routing tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dest: Ipv4Addr,
    pub prefix: u8,
    /// Output interface; empty for routes without one (blackhole,
    /// unreachable, multipath).
    pub dev: String,
    pub table: u32,
}

impl Route {
    /// A main-table route (what most tests and hosts have).
    pub fn main(dest: Ipv4Addr, prefix: u8, dev: &str) -> Route {
        Route {
            dest,
            prefix,
            dev: dev.into(),
            table: MAIN_TABLE,
        }
    }

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
        write!(f, "{}/{}", self.dest, self.prefix)?;
        if !self.dev.is_empty() {
            write!(f, " dev {}", self.dev)?;
        }
        match self.table {
            MAIN_TABLE => Ok(()),
            255 => write!(f, " (table local)"),
            t => write!(f, " (table {t})"),
        }
    }
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

/// The interface of the (first) default route of the main table, if any.
pub fn default_route_dev(routes: &[Route]) -> Option<&str> {
    routes
        .iter()
        .find(|r| r.is_default() && r.table == MAIN_TABLE && !r.dev.is_empty())
        .map(|r| r.dev.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Route> {
        vec![
            Route::main(Ipv4Addr::UNSPECIFIED, 0, "eth0"),
            Route::main(Ipv4Addr::new(192, 168, 2, 0), 24, "eth0"),
            Route::main(Ipv4Addr::new(172, 16, 0, 0), 12, "docker0"),
            Route::main(Ipv4Addr::new(172, 16, 0, 0), 24, "banger0"),
            Route {
                dest: Ipv4Addr::new(10, 99, 0, 0),
                prefix: 16,
                dev: "wg0".into(),
                table: 51820,
            },
            Route {
                dest: Ipv4Addr::UNSPECIFIED,
                prefix: 0,
                dev: "wg0".into(),
                table: 51820,
            },
        ]
    }

    #[test]
    fn overlap_ignores_default_and_own_bridge() {
        let routes = sample();
        assert_eq!(default_route_dev(&routes), Some("eth0"));
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

    #[test]
    fn routes_of_other_tables_conflict_too() {
        let routes = sample();
        let s = Subnet::parse("10.99.3.0/24").expect("subnet");
        let hit = overlapping_route(&s, "banger0", &routes).expect("table 51820 has it");
        assert_eq!(hit.to_string(), "10.99.0.0/16 dev wg0 (table 51820)");
        // Only the main table's default route is the uplink.
        assert_eq!(default_route_dev(&routes[4..]), None);
    }
}
