//! The privileged primitives, behind a trait so the root helper's decisions
//! ([`crate::service`]) are tested against [`FakeHostNet`] without root, and
//! run against [`crate::real::RealHostNet`] in `bangerd-root`.
//!
//! Primitives are deliberately dumb and idempotent where the kernel allows
//! it; validation and policy live in the service, not here.

use std::net::Ipv4Addr;

use serde_json::Value;
use thiserror::Error;

use crate::routes::Route;

/// A host operation failed; the message names the operation and the cause.
#[derive(Debug, Error)]
pub enum HostError {
    #[error("netlink: {op}: {detail}")]
    Netlink { op: String, detail: String },
    #[error("tap {tap}: {op} failed: {source}")]
    Tap {
        tap: String,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    Command {
        program: String,
        status: String,
        stderr: String,
    },
    #[error("{program} was not found in {searched}; install it (Debian package {package})")]
    MissingProgram {
        program: &'static str,
        searched: String,
        package: &'static str,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// Privileged host networking primitives.
pub trait HostNet: Send {
    /// IPv4 routes of the main table of the current network namespace.
    fn routes(&mut self) -> Result<Vec<Route>, HostError>;
    /// Create bridge `name` if missing, add `addr/prefix` if missing, bring it up.
    fn ensure_bridge(&mut self, name: &str, addr: Ipv4Addr, prefix: u8) -> Result<(), HostError>;
    /// Delete a link if it exists.
    fn delete_link(&mut self, name: &str) -> Result<(), HostError>;
    /// Create (or reopen) persistent tap `name` owned by `owner_uid`.
    fn create_tap(&mut self, name: &str, owner_uid: u32) -> Result<(), HostError>;
    /// Attach `link` to `bridge` and bring it up.
    fn attach(&mut self, link: &str, bridge: &str) -> Result<(), HostError>;
    /// Apply one libnftables JSON batch atomically.
    fn nft_apply(&mut self, batch: &Value) -> Result<(), HostError>;
    /// `(family, name)` of every nftables table (only to check banger's own exist).
    fn nft_tables(&mut self) -> Result<Vec<(String, String)>, HostError>;
    /// Run `resolvectl` with these arguments.
    fn resolvectl(&mut self, args: &[String]) -> Result<(), HostError>;
    /// Set `net.ipv4.ip_forward`.
    fn set_ip_forward(&mut self, on: bool) -> Result<(), HostError>;
}

/// One call recorded by [`FakeHostNet`].
#[derive(Debug, Clone, PartialEq)]
pub enum HostCall {
    Routes,
    EnsureBridge {
        name: String,
        addr: Ipv4Addr,
        prefix: u8,
    },
    DeleteLink {
        name: String,
    },
    CreateTap {
        name: String,
        owner_uid: u32,
    },
    Attach {
        link: String,
        bridge: String,
    },
    NftApply {
        batch: Value,
    },
    NftTables,
    Resolvectl {
        args: Vec<String>,
    },
    SetIpForward {
        on: bool,
    },
}

/// Recording fake: remembers every call, answers `routes` and `nft_tables`
/// from fields the test sets, and fails the call named in `fail` (matched
/// against the `HostCall` variant name, e.g. `"CreateTap"`).
#[derive(Debug, Default)]
pub struct FakeHostNet {
    pub calls: Vec<HostCall>,
    pub routes: Vec<Route>,
    pub tables: Vec<(String, String)>,
    pub fail: Option<&'static str>,
}

impl FakeHostNet {
    fn record(&mut self, call: HostCall) -> Result<(), HostError> {
        let name = format!("{call:?}");
        let variant = name
            .split([' ', '{', '('])
            .next()
            .unwrap_or_default()
            .to_string();
        self.calls.push(call);
        if self.fail == Some(variant.as_str()) {
            return Err(HostError::Command {
                program: "fake".into(),
                status: "injected failure".into(),
                stderr: variant,
            });
        }
        Ok(())
    }

    /// Calls other than the read-only queries (`Routes`, `NftTables`).
    pub fn mutations(&self) -> Vec<&HostCall> {
        self.calls
            .iter()
            .filter(|c| !matches!(c, HostCall::Routes | HostCall::NftTables))
            .collect()
    }
}

impl HostNet for FakeHostNet {
    fn routes(&mut self) -> Result<Vec<Route>, HostError> {
        self.record(HostCall::Routes)?;
        Ok(self.routes.clone())
    }
    fn ensure_bridge(&mut self, name: &str, addr: Ipv4Addr, prefix: u8) -> Result<(), HostError> {
        self.record(HostCall::EnsureBridge {
            name: name.into(),
            addr,
            prefix,
        })
    }
    fn delete_link(&mut self, name: &str) -> Result<(), HostError> {
        self.record(HostCall::DeleteLink { name: name.into() })
    }
    fn create_tap(&mut self, name: &str, owner_uid: u32) -> Result<(), HostError> {
        self.record(HostCall::CreateTap {
            name: name.into(),
            owner_uid,
        })
    }
    fn attach(&mut self, link: &str, bridge: &str) -> Result<(), HostError> {
        self.record(HostCall::Attach {
            link: link.into(),
            bridge: bridge.into(),
        })
    }
    fn nft_apply(&mut self, batch: &Value) -> Result<(), HostError> {
        self.record(HostCall::NftApply {
            batch: batch.clone(),
        })
    }
    fn nft_tables(&mut self) -> Result<Vec<(String, String)>, HostError> {
        self.record(HostCall::NftTables)?;
        Ok(self.tables.clone())
    }
    fn resolvectl(&mut self, args: &[String]) -> Result<(), HostError> {
        self.record(HostCall::Resolvectl {
            args: args.to_vec(),
        })
    }
    fn set_ip_forward(&mut self, on: bool) -> Result<(), HostError> {
        self.record(HostCall::SetIpForward { on })
    }
}
