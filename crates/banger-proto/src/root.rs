//! Owner daemon ↔ root helper (`bangerd-root`) protocol.
//!
//! The helper runs as root, so its surface is deliberately a *closed* set of
//! operations ([`RootOp`]): there is no "run this command" or "write this
//! path" escape hatch, and every argument is a name or an address the helper
//! validates itself.
//!
//! Framing: one JSON object per line (`\n`-terminated), at most
//! [`ROOT_MAX_FRAME`] bytes including the newline. The client writes one
//! [`RootRequest`] and reads one [`RootResponse`]; a connection may carry
//! several request/response pairs in sequence. A line longer than the cap is a
//! protocol error and the helper closes the connection.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Version of the daemon ↔ helper protocol. The helper answers a request of
/// another version with [`RootErrorKind::VersionMismatch`] rather than
/// guessing, so a daemon and helper from different builds fail loudly.
pub const ROOT_PROTOCOL_VERSION: u32 = 2;

/// Largest frame (one JSON line, newline included) either side accepts.
pub const ROOT_MAX_FRAME: usize = 16 * 1024;

/// Where the helper listens unless told otherwise (`bangerd-root --socket`).
pub const DEFAULT_ROOT_SOCKET: &str = "/run/banger-root/bangerd-root.sock";

/// Where a VM's traffic may go beyond the VM subnet. The host's own
/// services (banger's DNS on the gateway) are reachable under every policy;
/// cloud metadata (169.254.0.0/16) and, when the helper is configured to
/// block them, the host LAN's private ranges are reachable under none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Egress {
    /// Anywhere (through the masquerade), except the ranges above.
    All,
    /// Nowhere outside the VM subnet (`--no-egress`).
    None,
    /// Only the addresses later granted by [`RootOp::AllowEgress`]
    /// (`--egress allow:…`: what banger's DNS server resolved for the
    /// allowed names).
    Allowlist,
}

/// One address a VM with [`Egress::Allowlist`] may reach, for `ttl_secs`
/// seconds (the DNS answer's TTL; the helper clamps it to a sane range).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressGrant {
    pub addr: String,
    pub ttl_secs: u32,
}

/// One privileged operation. Interface names must carry banger's prefix
/// (`banger…`, at most 15 bytes); subnets are IPv4 CIDR strings as in
/// `config.toml`. The bridge and subnet are the helper's own configuration
/// (its command line, written by `banger system install`): requests that
/// name them are checked against it, never obeyed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum RootOp {
    /// Liveness and version check; touches nothing.
    Ping,
    /// Create the bridge if missing, give it the subnet's gateway address
    /// (`.1`) and bring it up. Refused if bridge or subnet differ from the
    /// helper's configuration, or the subnet overlaps a host route (of any
    /// routing table) that is not the bridge's own.
    EnsureBridge { bridge: String, subnet: String },
    /// Delete the bridge (idempotent).
    DeleteBridge { bridge: String },
    /// Create a persistent tap owned by `owner_uid` (must be the helper's
    /// configured owner), attach it to the bridge, bring it up, and bind it
    /// to the guest's identity: frames from it must carry source MAC `mac`
    /// and (for IPv4 and ARP) source address `ip`, which must be a VM
    /// address of the subnet that no other tap holds. `egress` is the VM's
    /// outbound policy.
    CreateTap {
        tap: String,
        bridge: String,
        owner_uid: u32,
        mac: String,
        ip: String,
        egress: Egress,
    },
    /// Delete the tap (idempotent) and forget its identity and egress policy.
    DeleteTap { tap: String },
    /// Install banger's own nftables tables in one atomic batch:
    /// masquerade of the subnet out of the default-route interface, the
    /// guest filters (per-tap identity, host and metadata ranges, egress
    /// policy, inbound drop). Idempotent; keeps the per-tap state.
    EnsureNat { bridge: String, subnet: String },
    /// Delete banger's own nftables tables (idempotent). Never touches others.
    RemoveNat,
    /// Let the VM with address `ip` (whose policy is [`Egress::Allowlist`])
    /// reach each granted address until its TTL runs out. Sent by the owner
    /// daemon when its DNS server answers that VM a query for an allowed
    /// name.
    AllowEgress {
        ip: String,
        grants: Vec<EgressGrant>,
    },
    /// Route `.vm` queries to `dns_addr` (an IPv4 address, optionally
    /// `:port`) through systemd-resolved's per-link settings on the bridge.
    WireResolved { bridge: String, dns_addr: String },
    /// Undo [`RootOp::WireResolved`].
    UnwireResolved { bridge: String },
    /// `net.ipv4.ip_forward = 1`.
    EnableForwarding,
}

impl RootOp {
    /// Short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            RootOp::Ping => "ping",
            RootOp::EnsureBridge { .. } => "ensure_bridge",
            RootOp::DeleteBridge { .. } => "delete_bridge",
            RootOp::CreateTap { .. } => "create_tap",
            RootOp::DeleteTap { .. } => "delete_tap",
            RootOp::EnsureNat { .. } => "ensure_nat",
            RootOp::RemoveNat => "remove_nat",
            RootOp::AllowEgress { .. } => "allow_egress",
            RootOp::WireResolved { .. } => "wire_resolved",
            RootOp::UnwireResolved { .. } => "unwire_resolved",
            RootOp::EnableForwarding => "enable_forwarding",
        }
    }
}

/// What the daemon sends: one operation, stamped with the protocol version.
///
/// Unknown fields are still refused: the flattened [`RootOp`] denies them
/// (serde cannot combine `deny_unknown_fields` with `flatten` on this outer
/// struct itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootRequest {
    pub version: u32,
    #[serde(flatten)]
    pub op: RootOp,
}

impl RootRequest {
    pub fn new(op: RootOp) -> Self {
        RootRequest {
            version: ROOT_PROTOCOL_VERSION,
            op,
        }
    }
}

/// Successful results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum RootReply {
    /// Answer to [`RootOp::Ping`].
    Pong {
        protocol_version: u32,
        helper_version: String,
        owner_uid: u32,
        /// The bridge and subnet this helper serves (its configuration).
        bridge: String,
        subnet: String,
    },
    /// The operation took effect (or there was nothing to do).
    Done,
    /// Answer to [`RootOp::EnsureNat`]: the interface masquerade goes out of,
    /// or `None` when the host has no default route (the tables are installed
    /// without a masquerade rule; VMs then reach only the host).
    Nat { uplink: Option<String> },
}

/// Why an operation was not carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RootErrorKind {
    /// Malformed frame or an argument the helper refuses (wrong prefix, bad
    /// subnet, wrong owner uid, …).
    BadRequest,
    /// The daemon speaks another protocol version.
    VersionMismatch,
    /// The request conflicts with the host's state (e.g. subnet overlap).
    Conflict,
    /// The host operation itself failed (netlink, ioctl, nft, resolvectl).
    Failed,
}

/// Error half of a [`RootResponse`]; `message` is meant for the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Error)]
#[error("{message}")]
pub struct RootError {
    pub kind: RootErrorKind,
    pub message: String,
}

impl RootError {
    pub fn new(kind: RootErrorKind, message: impl Into<String>) -> Self {
        RootError {
            kind,
            message: message.into(),
        }
    }
}

/// What the helper sends back for each request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RootResponse {
    Ok { reply: RootReply },
    Err { error: RootError },
}

impl From<Result<RootReply, RootError>> for RootResponse {
    fn from(r: Result<RootReply, RootError>) -> Self {
        match r {
            Ok(reply) => RootResponse::Ok { reply },
            Err(error) => RootResponse::Err { error },
        }
    }
}

impl From<RootResponse> for Result<RootReply, RootError> {
    fn from(r: RootResponse) -> Self {
        match r {
            RootResponse::Ok { reply } => Ok(reply),
            RootResponse::Err { error } => Err(error),
        }
    }
}

/// A frame that cannot be encoded or decoded.
#[derive(Debug, Error)]
pub enum FrameError {
    #[error(
        "frame of {len} bytes exceeds the {ROOT_MAX_FRAME}-byte limit of the root helper protocol"
    )]
    TooLarge { len: usize },
    #[error("frame is not valid JSON for this message: {0}")]
    Json(#[from] serde_json::Error),
}

/// Serialise `msg` as one newline-terminated frame.
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut buf = serde_json::to_vec(msg)?;
    buf.push(b'\n');
    if buf.len() > ROOT_MAX_FRAME {
        return Err(FrameError::TooLarge { len: buf.len() });
    }
    Ok(buf)
}

/// Parse one frame (with or without its trailing newline).
pub fn decode_frame<T: for<'de> Deserialize<'de>>(line: &[u8]) -> Result<T, FrameError> {
    if line.len() > ROOT_MAX_FRAME {
        return Err(FrameError::TooLarge { len: line.len() });
    }
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    Ok(serde_json::from_slice(line)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_shape_is_flat_and_versioned() {
        let req = RootRequest::new(RootOp::CreateTap {
            tap: "bangertap0".into(),
            bridge: "banger0".into(),
            owner_uid: 1000,
            mac: "02:00:00:00:00:01".into(),
            ip: "172.16.0.2".into(),
            egress: Egress::None,
        });
        let v: serde_json::Value =
            serde_json::from_slice(&encode_frame(&req).expect("encode")).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"version": 2, "op": "create_tap", "tap": "bangertap0",
                               "bridge": "banger0", "owner_uid": 1000,
                               "mac": "02:00:00:00:00:01", "ip": "172.16.0.2",
                               "egress": "none"})
        );
        let back: RootRequest = decode_frame(&encode_frame(&req).expect("encode")).expect("decode");
        assert_eq!(back, req);
    }

    #[test]
    fn unknown_ops_and_fields_are_rejected() {
        assert!(
            decode_frame::<RootRequest>(br#"{"version":1,"op":"run_shell","cmd":"id"}"#).is_err()
        );
        assert!(
            decode_frame::<RootRequest>(
                br#"{"version":1,"op":"delete_tap","tap":"bangerx","path":"/etc"}"#
            )
            .is_err()
        );
    }

    #[test]
    fn oversized_frames_are_refused_both_ways() {
        let huge = RootRequest::new(RootOp::DeleteTap {
            tap: "x".repeat(ROOT_MAX_FRAME),
        });
        assert!(matches!(
            encode_frame(&huge),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            decode_frame::<RootRequest>(&vec![b' '; ROOT_MAX_FRAME + 1]),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn responses_round_trip() {
        for r in [
            RootResponse::Ok {
                reply: RootReply::Nat {
                    uplink: Some("eth0".into()),
                },
            },
            RootResponse::Err {
                error: RootError::new(RootErrorKind::Conflict, "overlap"),
            },
        ] {
            let back: RootResponse =
                decode_frame(&encode_frame(&r).expect("encode")).expect("decode");
            assert_eq!(back, r);
        }
    }
}
