//! The stream multiplexer of the serial agent channel (QEMU VMs).
//!
//! A virtio-serial port is one byte stream between the host and the guest
//! that, unlike vsock, survives QEMU's migration (so snapshots and restores).
//! Agent sessions are one connection each over vsock; here each is a stream
//! of this multiplexer. Why banger frames its own instead of using yamux is
//! in docs/architecture.md ("The agent channel under QEMU"); in short: the
//! link must resynchronise after a restore, in the middle of whatever either
//! side was writing, and must start a clean session whenever the host says so.
//!
//! * [`frame`]: frames, COBS-encoded between `0x00` delimiters.
//! * [`link`]: streams, flow control and session resets (both ends).

pub mod frame;
pub mod link;

pub use frame::{Decoder, Frame, Kind, MAX_DATA};
pub use link::{Link, MuxStream, Outgoing, WINDOW};

/// Version of the multiplexer's framing, exchanged in `Hello`/`HelloAck`.
pub const MUX_VERSION: u32 = 1;

/// Most streams the guest serves at once; more are refused with `Close`.
pub const MAX_STREAMS: usize = 256;

/// `Hello`'s payload: mux version and nonce.
pub fn hello_payload(nonce: u64) -> Vec<u8> {
    let mut p = MUX_VERSION.to_be_bytes().to_vec();
    p.extend_from_slice(&nonce.to_be_bytes());
    p
}

/// Splits a `Hello` or `HelloAck` payload into (mux version, nonce, rest).
pub fn parse_hello(payload: &[u8]) -> Option<(u32, u64, &[u8])> {
    let version = u32::from_be_bytes(payload.get(..4)?.try_into().ok()?);
    let nonce = u64::from_be_bytes(payload.get(4..12)?.try_into().ok()?);
    Some((version, nonce, &payload[12..]))
}

/// A fresh random u64 (std's per-process random hash keys; no dependency).
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

#[cfg(test)]
mod tests;
