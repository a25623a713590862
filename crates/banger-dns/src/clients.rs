//! Who may have names outside `.vm` relayed, and under which egress policy.
//!
//! The daemon keeps one entry per running VM with egress (`all` or
//! `allow:NAMES`); a VM with `none`, and every other client, is absent and
//! gets REFUSED. For an `allow:` VM the forwarder relays only questions for
//! the allowed names ([`EgressPolicy::allows_name`]: exact names, and the
//! names under a `*.parent` entry) and, before relaying an answer, asks
//! [`EgressGrants`] to open the firewall for that VM to the answer's
//! addresses (the root helper's `egress_allowed` set, with the answer's
//! TTL). What the helper does not grant stays dropped.
//!
//! Each entry remembers when it last granted each address, so a guest that
//! asks for the same name in a loop costs one helper call per address per
//! [`REGRANT_AFTER`], not one per query. The memory is per entry, bounded
//! ([`MAX_REMEMBERED`]) and forgotten with the entry (a VM that gets the
//! address next starts with no grants, as the helper's sets do).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use banger_proto::EgressPolicy;

/// A grant is asked again for an address granted this long ago. The helper
/// grants at least 60 seconds, so a remembered grant has time left.
pub const REGRANT_AFTER: Duration = Duration::from_secs(10);
/// Most addresses remembered per client; beyond it the memory starts over.
pub const MAX_REMEMBERED: usize = 1024;

/// What [`EgressGrants::grant`] returns: `Err` carries the reason to log.
pub type GrantFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Opens the firewall for an allowlisted guest: the daemon's side sends the
/// root helper `allow_egress`.
pub trait EgressGrants: Send + Sync {
    /// Let `guest` reach each `(address, ttl_secs)`.
    fn grant<'a>(&'a self, guest: Ipv4Addr, addrs: &'a [(Ipv4Addr, u32)]) -> GrantFuture<'a>;
}

#[derive(Debug)]
struct Client {
    policy: Arc<EgressPolicy>,
    granted: HashMap<Ipv4Addr, Instant>,
}

/// The clients whose queries may leave the host. Cheap to clone; all clones
/// share one table, changed live by the daemon as VMs start and stop.
#[derive(Debug, Clone, Default)]
pub struct ForwardClients {
    inner: Arc<RwLock<HashMap<IpAddr, Client>>>,
}

impl ForwardClients {
    pub fn new() -> Self {
        Self::default()
    }

    /// Relay every outside name for `ip` (egress `all`).
    pub fn allow(&self, ip: IpAddr) {
        self.set(ip, EgressPolicy::All);
    }

    /// Relay for `ip` what `policy` allows; `none` removes it. A changed
    /// policy forgets the grants remembered under the old one.
    pub fn set(&self, ip: IpAddr, policy: EgressPolicy) {
        let mut t = self.write();
        if policy == EgressPolicy::None {
            t.remove(&ip);
            return;
        }
        if t.get(&ip).is_some_and(|c| *c.policy == policy) {
            return;
        }
        t.insert(
            ip,
            Client {
                policy: Arc::new(policy),
                granted: HashMap::new(),
            },
        );
    }

    pub fn revoke(&self, ip: IpAddr) {
        self.write().remove(&ip);
    }

    /// Whether anything is relayed for `ip`.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.read().contains_key(&ip)
    }

    /// The policy relayed under for `ip`, if any.
    pub fn policy(&self, ip: IpAddr) -> Option<Arc<EgressPolicy>> {
        self.read().get(&ip).map(|c| Arc::clone(&c.policy))
    }

    /// The addresses of `addrs` not granted to `guest` within
    /// [`REGRANT_AFTER`].
    pub(crate) fn not_recently_granted(
        &self,
        guest: Ipv4Addr,
        addrs: &[(Ipv4Addr, u32)],
    ) -> Vec<(Ipv4Addr, u32)> {
        let t = self.read();
        let granted = t.get(&IpAddr::V4(guest)).map(|c| &c.granted);
        addrs
            .iter()
            .filter(|(a, _)| {
                granted
                    .and_then(|g| g.get(a))
                    .is_none_or(|at| at.elapsed() >= REGRANT_AFTER)
            })
            .copied()
            .collect()
    }

    /// Remember that `addrs` were granted to `guest` now (if it is still a
    /// client: a VM stopped meanwhile keeps nothing).
    pub(crate) fn remember_granted(&self, guest: Ipv4Addr, addrs: &[(Ipv4Addr, u32)]) {
        let mut t = self.write();
        let Some(c) = t.get_mut(&IpAddr::V4(guest)) else {
            return;
        };
        if c.granted.len() + addrs.len() > MAX_REMEMBERED {
            c.granted.clear();
        }
        let now = Instant::now();
        for (a, _) in addrs {
            c.granted.insert(*a, now);
        }
    }

    // A poisoned lock only means a writer panicked mid-insert on a HashMap,
    // which leaves it consistent; keep serving.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<IpAddr, Client>> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<IpAddr, Client>> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_shared_between_clones() {
        let a = ForwardClients::new();
        let b = a.clone();
        let ip: IpAddr = "172.16.0.2".parse().expect("ip");
        a.allow(ip);
        assert!(b.allows(ip));
        assert_eq!(b.policy(ip).as_deref(), Some(&EgressPolicy::All));
        b.revoke(ip);
        assert!(!a.allows(ip));
        a.set(ip, EgressPolicy::None);
        assert!(!a.allows(ip), "none is never relayed");
    }

    #[test]
    fn grants_are_remembered_per_client_and_forgotten_with_it() {
        let c = ForwardClients::new();
        let g = Ipv4Addr::new(172, 16, 0, 2);
        let allow: EgressPolicy = "allow:github.com".parse().expect("policy");
        c.set(g.into(), allow.clone());
        let addrs = [(Ipv4Addr::new(140, 82, 112, 3), 60)];
        assert_eq!(c.not_recently_granted(g, &addrs), addrs);
        c.remember_granted(g, &addrs);
        assert!(c.not_recently_granted(g, &addrs).is_empty());
        c.set(g.into(), allow);
        assert!(
            c.not_recently_granted(g, &addrs).is_empty(),
            "the same policy keeps its grants"
        );
        c.revoke(g.into());
        c.remember_granted(g, &addrs);
        c.set(g.into(), "allow:github.com".parse().expect("policy"));
        assert_eq!(
            c.not_recently_granted(g, &addrs),
            addrs,
            "a VM that gets the address next starts with no grants"
        );
        let many: Vec<_> = (0..=MAX_REMEMBERED as u32)
            .map(|i| (Ipv4Addr::from(0x0a00_0000 + i), 60))
            .collect();
        c.remember_granted(g, &many);
        c.remember_granted(g, &addrs);
        assert!(c.read()[&IpAddr::V4(g)].granted.len() <= MAX_REMEMBERED);
    }
}
