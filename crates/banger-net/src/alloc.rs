//! Pure per-VM network identities: the address from the VM subnet, the MAC,
//! and the host tap name. The daemon persists what these return (the lease
//! table is its source of truth); these functions only decide.

use std::collections::HashSet;
use std::fmt;
use std::net::Ipv4Addr;

use banger_core::config::{IFNAME_PREFIX, Subnet};
use sha2::{Digest, Sha256};
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AllocError {
    #[error(
        "the VM subnet {subnet} has no free address left ({capacity} usable); delete a VM or configure a larger `subnet` in config.toml"
    )]
    Exhausted { subnet: Subnet, capacity: u32 },
}

/// Number of addresses VMs can get: everything but network, gateway (`.1`)
/// and broadcast.
pub fn vm_capacity(subnet: &Subnet) -> u32 {
    let size = 1u32 << (32 - subnet.prefix);
    size.saturating_sub(3)
}

/// First free VM address in `subnet`, given the addresses already leased.
///
/// The gateway (`.1`, the bridge) is reserved; the network and broadcast
/// addresses are never handed out. Entries of `used` outside the subnet are
/// ignored. "First free" keeps addresses small and predictable and reuses a
/// freed address quickly, which is what a user reading `vm list` expects.
pub fn allocate_ip(subnet: &Subnet, used: &HashSet<Ipv4Addr>) -> Result<Ipv4Addr, AllocError> {
    let first = u32::from(subnet.gateway()) + 1;
    let last = u32::from(subnet.broadcast()) - 1;
    (first..=last)
        .map(Ipv4Addr::from)
        .find(|ip| !used.contains(ip))
        .ok_or(AllocError::Exhausted {
            subnet: *subnet,
            capacity: vm_capacity(subnet),
        })
}

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl std::str::FromStr for Mac {
    type Err = String;

    /// `aa:bb:cc:dd:ee:ff` (hex, either case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a MAC address like 02:00:00:00:00:01");
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut out {
            let p = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(out))
    }
}

impl Mac {
    /// A MAC a guest NIC may have: unicast (bit 0 of the first byte clear)
    /// and not all zeros.
    pub fn is_guest_unicast(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }
}

/// Deterministic MAC for a VM: locally administered, unicast, derived from
/// `key` (the VM's name or id). Deterministic so a VM keeps its MAC (and the
/// guest's view of its NIC) across restarts without storing it.
pub fn vm_mac(key: &str) -> Mac {
    let h = Sha256::digest(format!("banger-mac\0{key}").as_bytes());
    // 0x02: locally administered (bit 1 set), unicast (bit 0 clear).
    Mac([0x02, h[0], h[1], h[2], h[3], h[4]])
}

/// The bridge's own MAC, fixed (derived from its name) so it never follows
/// the ports that come and go.
pub fn bridge_mac(bridge: &str) -> Mac {
    vm_mac(&format!("\0bridge\0{bridge}"))
}

/// Prefix of every tap banger creates (`bangertap` + 6 hex digits = 15 bytes,
/// the kernel's limit).
pub const TAP_PREFIX: &str = "bangertap";

/// Host tap name for a VM: `bangertap` + 6 hex digits of a hash of `key`.
///
/// Pass the VM's immutable id (not its name, which can be renamed) and store
/// the result; on the rare hash collision use [`tap_name_unique`].
pub fn tap_name(key: &str) -> String {
    tap_name_salted(key, 0)
}

/// Like [`tap_name`], but never returns a name in `taken`: on a collision it
/// re-hashes with a counter, so the result is still deterministic given the
/// same `taken` set.
pub fn tap_name_unique(key: &str, taken: &HashSet<String>) -> String {
    (0u32..)
        .map(|salt| tap_name_salted(key, salt))
        .find(|n| !taken.contains(n))
        .unwrap_or_else(|| tap_name(key))
}

fn tap_name_salted(key: &str, salt: u32) -> String {
    let h = Sha256::digest(format!("banger-tap\0{salt}\0{key}").as_bytes());
    let name = format!("{TAP_PREFIX}{:02x}{:02x}{:02x}", h[0], h[1], h[2]);
    debug_assert!(name.starts_with(IFNAME_PREFIX) && name.len() <= 15);
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_core::config::validate_ifname;
    use proptest::prelude::*;

    fn subnet(s: &str) -> Subnet {
        Subnet::parse(s).expect("valid subnet")
    }

    #[test]
    fn first_allocation_is_dot_two() {
        let s = subnet("172.16.0.0/24");
        assert_eq!(
            allocate_ip(&s, &HashSet::new()),
            Ok(Ipv4Addr::new(172, 16, 0, 2))
        );
    }

    #[test]
    fn freed_address_is_reused_first() {
        let s = subnet("172.16.0.0/24");
        let used: HashSet<_> = [2, 3, 5].map(|i| Ipv4Addr::new(172, 16, 0, i)).into();
        assert_eq!(allocate_ip(&s, &used), Ok(Ipv4Addr::new(172, 16, 0, 4)));
    }

    #[test]
    fn smallest_subnet_is_exhausted_after_five() {
        // /29: 8 addresses - network, gateway, broadcast = 5.
        let s = subnet("10.9.0.8/29");
        let mut used = HashSet::new();
        for _ in 0..5 {
            let ip = allocate_ip(&s, &used).expect("room left");
            used.insert(ip);
        }
        let err = allocate_ip(&s, &used).expect_err("exhausted");
        assert!(err.to_string().contains("10.9.0.8/29"), "{err}");
        assert!(!used.contains(&Ipv4Addr::new(10, 9, 0, 8)));
        assert!(!used.contains(&Ipv4Addr::new(10, 9, 0, 9)));
        assert!(!used.contains(&Ipv4Addr::new(10, 9, 0, 15)));
    }

    /// The shape of the daemon's concurrent creates: 50 callers race for a
    /// lease under one lock (the daemon's store transaction plays this role).
    #[test]
    fn fifty_concurrent_allocations_never_collide() {
        use std::sync::{Arc, Mutex};
        let s = subnet("172.16.0.0/24");
        let used = Arc::new(Mutex::new(HashSet::new()));
        let handles: Vec<_> = (0..50)
            .map(|_| {
                let used = Arc::clone(&used);
                std::thread::spawn(move || {
                    let mut used = used.lock().expect("lock");
                    let ip = allocate_ip(&s, &used).expect("room left");
                    assert!(used.insert(ip), "{ip} handed out twice");
                    ip
                })
            })
            .collect();
        let ips: HashSet<_> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        assert_eq!(ips.len(), 50);
        assert!(ips.iter().all(|ip| s.contains(*ip) && *ip != s.gateway()));
    }

    #[test]
    fn tap_names_are_valid_interface_names() {
        for key in ["a", "sandbox", "a-very-long-vm-name-that-goes-on", "ü"] {
            let t = tap_name(key);
            assert_eq!(t.len(), 15, "{t}");
            validate_ifname(&t).expect("tap name must pass the helper's check");
        }
    }

    #[test]
    fn tap_name_unique_steps_around_collisions() {
        let first = tap_name("vm1");
        let taken: HashSet<String> = [first.clone()].into();
        let second = tap_name_unique("vm1", &taken);
        assert_ne!(first, second);
        validate_ifname(&second).expect("valid");
        assert_eq!(tap_name_unique("vm1", &HashSet::new()), first);
    }

    #[test]
    fn mac_format() {
        let m = vm_mac("sandbox");
        assert_eq!(m.to_string().len(), 17);
        assert_eq!(m, vm_mac("sandbox"));
        assert_ne!(m, vm_mac("sandbox2"));
        assert_eq!(m.to_string().parse::<Mac>(), Ok(m));
        assert!(m.is_guest_unicast());
        assert_eq!(
            "02:AB:00:00:00:01".parse::<Mac>(),
            Ok(Mac([2, 0xab, 0, 0, 0, 1]))
        );
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:01:02",
            "2:00:00:00:00:01",
            "zz:00:00:00:00:01",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
        assert!(!Mac([1, 0, 0, 0, 0, 1]).is_guest_unicast());
        assert!(!Mac([0; 6]).is_guest_unicast());
    }

    proptest! {
        #[test]
        fn allocation_is_in_range_free_and_first(
            prefix in 22u8..=29,
            net in any::<u32>(),
            used_offsets in proptest::collection::vec(0u32..1024, 0..300),
        ) {
            let mask = u32::MAX << (32 - prefix);
            let s = Subnet { network: Ipv4Addr::from(net & mask), prefix };
            let base = u32::from(s.network);
            let size = 1u32 << (32 - prefix);
            let used: HashSet<Ipv4Addr> = used_offsets
                .iter()
                .map(|o| Ipv4Addr::from(base.wrapping_add(o % (size + 8))))
                .collect();
            match allocate_ip(&s, &used) {
                Ok(ip) => {
                    prop_assert!(s.contains(ip));
                    prop_assert!(ip != s.network && ip != s.gateway() && ip != s.broadcast());
                    prop_assert!(!used.contains(&ip));
                    // Nothing smaller was free.
                    for cand in (u32::from(s.gateway()) + 1)..u32::from(ip) {
                        prop_assert!(used.contains(&Ipv4Addr::from(cand)));
                    }
                }
                Err(AllocError::Exhausted { capacity, .. }) => {
                    let in_range = used
                        .iter()
                        .filter(|ip| s.contains(**ip) && **ip != s.network && **ip != s.gateway() && **ip != s.broadcast())
                        .count() as u32;
                    prop_assert_eq!(in_range, capacity);
                }
            }
        }

        #[test]
        fn repeated_allocation_fills_subnet_without_duplicates(prefix in 26u8..=29) {
            let s = Subnet { network: Ipv4Addr::new(10, 200, 0, 0), prefix };
            let mut used = HashSet::new();
            while let Ok(ip) = allocate_ip(&s, &used) {
                prop_assert!(used.insert(ip));
            }
            prop_assert_eq!(used.len() as u32, vm_capacity(&s));
        }

        #[test]
        fn tap_and_mac_properties(key in ".{0,80}") {
            let t = tap_name(&key);
            prop_assert!(validate_ifname(&t).is_ok(), "{}", t);
            prop_assert_eq!(&t, &tap_name(&key));
            let m = vm_mac(&key);
            prop_assert_eq!(m.0[0] & 0x01, 0, "unicast");
            prop_assert_eq!(m.0[0] & 0x02, 0x02, "locally administered");
            prop_assert_eq!(m, vm_mac(&key));
        }
    }
}
