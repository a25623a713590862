//! banger's guest agent (`banger-vsock-agent`) and the host side of its
//! protocol.
//!
//! * [`server`]: the agent's handlers (exec, upload, download, shutdown,
//!   sync-time), transport-agnostic; the binary serves them on AF_VSOCK and
//!   on the virtio-serial port ([`guest_serial`]), tests on Unix sockets.
//! * [`client`]: what the daemon calls: [`client::AgentClient`] over
//!   Firecracker's hybrid vsock (`CONNECT <port>`) or QEMU's serial channel
//!   ([`serial`]), and [`client::ReadinessListener`] for the boot-time
//!   announcement over vsock.
//! * [`mux`]: the serial channel's stream multiplexer (both ends).
//! * [`init`]: `banger-init`, PID 1 for OCI images without an init.
//! * [`readiness`]: what "ready" means, collected in the guest, judged by
//!   the host.
//! * [`transfer`]: the tar rules of every transfer in or out of a guest
//!   (one packer, the contained unpacker, the host's hostile-archive check).
//!
//! The wire format is in [`banger_proto::agent`].

pub mod client;
pub mod guest_serial;
pub mod init;
pub mod mux;
pub mod readiness;
pub mod serial;
pub mod server;
pub mod transfer;
pub mod wire;

pub use banger_proto::agent as proto;
pub use client::{
    AgentClient, AgentError, AgentTarget, DownloadStream, ExecControl, ExecOutput,
    ReadinessListener, connect_hybrid, ready_socket_path,
};
pub use serial::{Gateway, SerialChannel};

/// The systemd unit installed into golden images, next to the binary at
/// [`AGENT_INSTALL_PATH`].
pub const SYSTEMD_UNIT: &str = include_str!("../assets/banger-vsock-agent.service");

/// File name of [`SYSTEMD_UNIT`] under /etc/systemd/system.
pub const SYSTEMD_UNIT_NAME: &str = "banger-vsock-agent.service";

/// Where images install the agent binary (the unit's `ExecStart`).
pub use banger_proto::agent::AGENT_INSTALL_PATH;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_starts_early_and_restarts() {
        assert!(SYSTEMD_UNIT.contains("DefaultDependencies=no"));
        assert!(SYSTEMD_UNIT.contains("Restart=always"));
        assert!(!SYSTEMD_UNIT.contains("network-online"));
        assert!(SYSTEMD_UNIT.contains(&format!("ExecStart={AGENT_INSTALL_PATH}")));
    }
}
