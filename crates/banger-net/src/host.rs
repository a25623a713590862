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
    /// IPv4 routes of every routing table of the current network namespace.
    fn routes(&mut self) -> Result<Vec<Route>, HostError>;
    /// Create bridge `name` if missing, add `addr/prefix` if missing, bring it up.
    fn ensure_bridge(&mut self, name: &str, addr: Ipv4Addr, prefix: u8) -> Result<(), HostError>;
    /// Delete a link if it exists.
    fn delete_link(&mut self, name: &str) -> Result<(), HostError>;
    /// Whether a link of this name exists.
    fn link_exists(&mut self, name: &str) -> Result<bool, HostError>;
    /// Create (or reopen) persistent tap `name` owned by `owner_uid`.
    fn create_tap(&mut self, name: &str, owner_uid: u32) -> Result<(), HostError>;
    /// Attach `link` to `bridge` and bring it up.
    fn attach(&mut self, link: &str, bridge: &str) -> Result<(), HostError>;
    /// Apply one libnftables JSON batch atomically.
    fn nft_apply(&mut self, batch: &Value) -> Result<(), HostError>;
    /// `(family, name)` of every nftables table (only to check banger's own exist).
    fn nft_tables(&mut self) -> Result<Vec<(String, String)>, HostError>;
    /// The elements of one of banger's own sets (`nft -j list set`), as nft
    /// prints them; empty when the set or table does not exist.
    fn nft_set_elements(&mut self, family: &str, set: &str) -> Result<Vec<Value>, HostError>;
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
    LinkExists {
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
    NftSetElements {
        family: String,
        set: String,
    },
    Resolvectl {
        args: Vec<String>,
    },
    SetIpForward {
        on: bool,
    },
}

/// Recording fake: remembers every call, answers `routes`, `nft_tables` and
/// `nft_set_elements` from fields the test sets (`sets` is keyed by set
/// name), and fails the call named in `fail` (matched against the
/// `HostCall` variant name, e.g. `"CreateTap"`).
#[derive(Debug, Default)]
pub struct FakeHostNet {
    pub calls: Vec<HostCall>,
    pub routes: Vec<Route>,
    pub tables: Vec<(String, String)>,
    /// Links `link_exists` reports.
    pub links: Vec<String>,
    pub sets: std::collections::HashMap<String, Vec<Value>>,
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

    /// Calls other than the read-only queries.
    pub fn mutations(&self) -> Vec<&HostCall> {
        self.calls
            .iter()
            .filter(|c| {
                !matches!(
                    c,
                    HostCall::Routes
                        | HostCall::NftTables
                        | HostCall::NftSetElements { .. }
                        | HostCall::LinkExists { .. }
                )
            })
            .collect()
    }

    /// The nft batches applied, in order.
    pub fn batches(&self) -> Vec<&Value> {
        self.calls
            .iter()
            .filter_map(|c| match c {
                HostCall::NftApply { batch } => Some(batch),
                _ => None,
            })
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
    fn link_exists(&mut self, name: &str) -> Result<bool, HostError> {
        self.record(HostCall::LinkExists { name: name.into() })?;
        Ok(self.links.iter().any(|l| l == name))
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
    fn nft_set_elements(&mut self, family: &str, set: &str) -> Result<Vec<Value>, HostError> {
        self.record(HostCall::NftSetElements {
            family: family.into(),
            set: set.into(),
        })?;
        Ok(self.sets.get(set).cloned().unwrap_or_default())
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
