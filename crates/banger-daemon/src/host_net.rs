//! Host networking as the daemon sees it, behind one trait so the lifecycle
//! can run without root: the real one asks the root helper
//! ([`RootNetwork`]); `--no-network` gives VMs no NIC at all ([`NoNetwork`]);
//! tests use [`FakeNetwork`], a named fake that records every call and fails
//! the ones it is told to.

use std::future::Future;
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::sync::Mutex;

use banger_proto::EgressPolicy;
use banger_proto::root::{Egress, RootOp};

use crate::DaemonError;

/// What a call returns; boxed so the daemon can hold any implementation.
pub type NetFuture<'a> = Pin<Box<dyn Future<Output = Result<(), DaemonError>> + Send + 'a>>;

/// One VM's wiring: its tap on the shared bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapWiring {
    pub vm: String,
    pub bridge: String,
    /// The VM subnet, CIDR (`172.16.0.0/24`).
    pub subnet: String,
    pub tap: String,
    /// The uid the tap belongs to (the VMM opens it as that user).
    pub owner_uid: u32,
    /// The guest's MAC and leased address: the helper binds the tap to
    /// them, so the guest can send from no other.
    pub mac: String,
    pub ip: String,
    /// Where the VM may reach beyond the host.
    pub egress: EgressPolicy,
}

/// The host side of VM networking.
pub trait HostNetwork: Send + Sync {
    /// Whether VMs get a NIC (and so an address on the kernel command line).
    fn attaches(&self) -> bool;
    /// The shared bridge and its gateway address exist.
    fn ensure_bridge<'a>(&'a self, bridge: &'a str, subnet: &'a str) -> NetFuture<'a>;
    /// Bridge, NAT, the VM's tap bound to its MAC, address and egress policy.
    fn setup<'a>(&'a self, wiring: &'a TapWiring) -> NetFuture<'a>;
    /// Removes the VM's tap (and its egress rule).
    fn teardown<'a>(&'a self, vm: &'a str, tap: &'a str) -> NetFuture<'a>;
    /// Routes `.vm` queries through the bridge link to `dns_addr`
    /// (systemd-resolved hosts).
    fn wire_resolved<'a>(&'a self, bridge: &'a str, dns_addr: &'a str) -> NetFuture<'a>;
    /// Lets the allowlisted guest at `guest` reach each `(address, ttl)` of
    /// a DNS answer banger's server is about to relay to it.
    fn allow_egress<'a>(&'a self, guest: Ipv4Addr, addrs: &'a [(Ipv4Addr, u32)]) -> NetFuture<'a>;
}

/// The DNS forwarder's grants for `allow:` VMs go to the host network.
pub struct NetGrants(pub std::sync::Arc<dyn HostNetwork>);

impl banger_dns::EgressGrants for NetGrants {
    fn grant<'a>(
        &'a self,
        guest: Ipv4Addr,
        addrs: &'a [(Ipv4Addr, u32)],
    ) -> banger_dns::GrantFuture<'a> {
        Box::pin(async move {
            self.0
                .allow_egress(guest, addrs)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// The real host networking: the root helper does it.
pub struct RootNetwork(pub banger_net::RootClient);

impl RootNetwork {
    async fn call(&self, what: &str, op: RootOp) -> Result<(), DaemonError> {
        self.0
            .call(op)
            .await
            .map(|_| ())
            .map_err(|e| DaemonError::conflict(format!("{what}: {e}")).with_source(e))
    }
}

impl HostNetwork for RootNetwork {
    fn attaches(&self) -> bool {
        true
    }

    fn ensure_bridge<'a>(&'a self, bridge: &'a str, subnet: &'a str) -> NetFuture<'a> {
        Box::pin(self.call(
            "preparing the bridge",
            RootOp::EnsureBridge {
                bridge: bridge.into(),
                subnet: subnet.into(),
            },
        ))
    }

    fn setup<'a>(&'a self, w: &'a TapWiring) -> NetFuture<'a> {
        Box::pin(async move {
            let what = format!("network setup for {}", w.vm);
            self.call(
                &what,
                RootOp::EnsureBridge {
                    bridge: w.bridge.clone(),
                    subnet: w.subnet.clone(),
                },
            )
            .await?;
            self.call(
                &what,
                RootOp::EnsureNat {
                    bridge: w.bridge.clone(),
                    subnet: w.subnet.clone(),
                },
            )
            .await?;
            self.call(
                &what,
                RootOp::CreateTap {
                    tap: w.tap.clone(),
                    bridge: w.bridge.clone(),
                    owner_uid: w.owner_uid,
                    mac: w.mac.clone(),
                    ip: w.ip.clone(),
                    egress: match w.egress {
                        EgressPolicy::All => Egress::All,
                        EgressPolicy::None => Egress::None,
                        EgressPolicy::Allow { .. } => Egress::Allowlist,
                    },
                },
            )
            .await?;
            if w.egress != EgressPolicy::None {
                // NAT routes nothing while the host does not forward (the
                // default on Debian/Ubuntu without Docker).
                self.call(&what, RootOp::EnableForwarding).await?;
            }
            Ok(())
        })
    }

    fn teardown<'a>(&'a self, vm: &'a str, tap: &'a str) -> NetFuture<'a> {
        Box::pin(async move {
            self.call(
                &format!("network teardown for {vm}"),
                RootOp::DeleteTap { tap: tap.into() },
            )
            .await
        })
    }

    fn wire_resolved<'a>(&'a self, bridge: &'a str, dns_addr: &'a str) -> NetFuture<'a> {
        Box::pin(self.call(
            "wiring systemd-resolved",
            RootOp::WireResolved {
                bridge: bridge.into(),
                dns_addr: dns_addr.into(),
            },
        ))
    }

    fn allow_egress<'a>(&'a self, guest: Ipv4Addr, addrs: &'a [(Ipv4Addr, u32)]) -> NetFuture<'a> {
        Box::pin(async move {
            self.0.allow_egress(guest, addrs).await.map_err(|e| {
                DaemonError::conflict(format!("granting egress to {guest}: {e}")).with_source(e)
            })
        })
    }
}

/// `--no-network`: VMs get no NIC; every call succeeds doing nothing.
pub struct NoNetwork;

impl HostNetwork for NoNetwork {
    fn attaches(&self) -> bool {
        false
    }
    fn ensure_bridge<'a>(&'a self, _: &'a str, _: &'a str) -> NetFuture<'a> {
        Box::pin(async { Ok(()) })
    }
    fn setup<'a>(&'a self, _: &'a TapWiring) -> NetFuture<'a> {
        Box::pin(async { Ok(()) })
    }
    fn teardown<'a>(&'a self, _: &'a str, _: &'a str) -> NetFuture<'a> {
        Box::pin(async { Ok(()) })
    }
    fn wire_resolved<'a>(&'a self, _: &'a str, _: &'a str) -> NetFuture<'a> {
        Box::pin(async { Ok(()) })
    }
    fn allow_egress<'a>(&'a self, _: Ipv4Addr, _: &'a [(Ipv4Addr, u32)]) -> NetFuture<'a> {
        Box::pin(async { Ok(()) })
    }
}

/// One call a [`FakeNetwork`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetCall {
    EnsureBridge {
        bridge: String,
    },
    Setup(TapWiring),
    Teardown {
        vm: String,
        tap: String,
    },
    WireResolved {
        dns_addr: String,
    },
    AllowEgress {
        guest: Ipv4Addr,
        addrs: Vec<(Ipv4Addr, u32)>,
    },
}

/// Which call a [`FakeNetwork`] should fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOn {
    EnsureBridge,
    Setup,
    Teardown,
    WireResolved,
    AllowEgress,
}

/// A FAKE host network for tests: no root, no bridge, no taps. It records
/// every call, keeps the set of taps it was asked to create and not yet to
/// delete, and fails the calls named in [`FakeNetwork::fail`].
#[derive(Default)]
pub struct FakeNetwork {
    calls: Mutex<Vec<NetCall>>,
    taps: Mutex<Vec<String>>,
    fail: Mutex<Vec<FailOn>>,
}

impl FakeNetwork {
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on, calls of this kind fail (until [`FakeNetwork::heal`]).
    pub fn fail(&self, on: FailOn) {
        lock(&self.fail).push(on);
    }

    pub fn heal(&self) {
        lock(&self.fail).clear();
    }

    pub fn calls(&self) -> Vec<NetCall> {
        lock(&self.calls).clone()
    }

    /// Taps that were set up and not torn down.
    pub fn live_taps(&self) -> Vec<String> {
        lock(&self.taps).clone()
    }

    fn record(&self, call: NetCall, kind: FailOn) -> Result<(), DaemonError> {
        lock(&self.calls).push(call);
        if lock(&self.fail).contains(&kind) {
            return Err(DaemonError::conflict(format!(
                "fake network: {kind:?} fails (as the test asked)"
            )));
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl HostNetwork for FakeNetwork {
    fn attaches(&self) -> bool {
        true
    }

    fn ensure_bridge<'a>(&'a self, bridge: &'a str, _: &'a str) -> NetFuture<'a> {
        let r = self.record(
            NetCall::EnsureBridge {
                bridge: bridge.into(),
            },
            FailOn::EnsureBridge,
        );
        Box::pin(async move { r })
    }

    fn setup<'a>(&'a self, w: &'a TapWiring) -> NetFuture<'a> {
        let r = self.record(NetCall::Setup(w.clone()), FailOn::Setup);
        if r.is_ok() {
            let mut taps = lock(&self.taps);
            if !taps.contains(&w.tap) {
                taps.push(w.tap.clone());
            }
        }
        Box::pin(async move { r })
    }

    fn teardown<'a>(&'a self, vm: &'a str, tap: &'a str) -> NetFuture<'a> {
        let r = self.record(
            NetCall::Teardown {
                vm: vm.into(),
                tap: tap.into(),
            },
            FailOn::Teardown,
        );
        if r.is_ok() {
            lock(&self.taps).retain(|t| t != tap);
        }
        Box::pin(async move { r })
    }

    fn wire_resolved<'a>(&'a self, _: &'a str, dns_addr: &'a str) -> NetFuture<'a> {
        let r = self.record(
            NetCall::WireResolved {
                dns_addr: dns_addr.into(),
            },
            FailOn::WireResolved,
        );
        Box::pin(async move { r })
    }

    fn allow_egress<'a>(&'a self, guest: Ipv4Addr, addrs: &'a [(Ipv4Addr, u32)]) -> NetFuture<'a> {
        let r = self.record(
            NetCall::AllowEgress {
                guest,
                addrs: addrs.to_vec(),
            },
            FailOn::AllowEgress,
        );
        Box::pin(async move { r })
    }
}
