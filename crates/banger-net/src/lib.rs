//! Host networking for banger.
//!
//! * [`alloc`]: pure per-VM identities — IP from the subnet, tap name (the MAC is banger-vmm's `MacAddr::derive`).
//! * [`host`]: the privileged primitives behind [`HostNet`], with the
//!   recording [`FakeHostNet`]; [`real::RealHostNet`] is the kernel-backed one.
//! * [`service`]: the root helper's validation and decisions ([`RootService`]).
//! * [`policy`]: the network the helper was configured with ([`NetPolicy`]).
//! * [`nft`]: banger's own nftables tables as atomic JSON batches.
//! * [`ports`]: per-tap identity, egress policy and allowlist grants in them.
//! * [`client`]: [`RootClient`], the daemon's side of the helper socket.

pub mod alloc;
pub mod client;
pub mod host;
pub mod nft;
pub mod policy;
pub mod ports;
pub mod real;
pub mod routes;
pub mod service;

pub use alloc::{AllocError, TAP_PREFIX, allocate_ip, tap_name, tap_name_unique, vm_capacity};
pub use client::{RootClient, RootClientError};
pub use host::{FakeHostNet, HostCall, HostError, HostNet};
pub use policy::{NetPolicy, PolicyError};
pub use real::RealHostNet;
pub use routes::Route;
pub use service::RootService;
