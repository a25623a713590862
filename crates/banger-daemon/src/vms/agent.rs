//! How the daemon reaches a VM's guest agent: the one place that picks the
//! transport per VMM.
//!
//! - Firecracker: vsock. The VM's hybrid-vsock socket is `v.sock`; the agent
//!   announces readiness by connecting to `v.sock_10790`.
//! - QEMU: the virtio-serial channel (vhost-user vsock would block
//!   snapshots). QEMU listens on `agent.sock`; the daemon holds the one
//!   connection, every session a stream on it, and serves a gateway at
//!   `v.sock` speaking the hybrid-vsock protocol, so the CLI (and anything
//!   else given the VM's `vsock_path`) reaches the agent the same way under
//!   both VMMs. Readiness is the agent's answer on the channel.
//!
//! Why the serial channel and its own multiplexer: docs/architecture.md.

use std::future::Future;
use std::time::Duration;

use banger_agent::client::{AgentClient, ReadinessListener};
use banger_agent::{Gateway, SerialChannel};
use banger_proto::agent::{AGENT_SERIAL_PORT, GuestHello, READY_PORT};
use banger_vmm::{AgentPortSpec, VmmKind, VsockSpec};

use super::GUEST_CID;
use crate::{Daemon, DaemonError, VmDir};

/// The agent devices a VM's spec gets under `kind`.
pub(crate) fn agent_devices(
    kind: VmmKind,
    dir: &VmDir,
) -> (Option<VsockSpec>, Option<AgentPortSpec>) {
    match kind {
        VmmKind::Firecracker => (
            Some(VsockSpec {
                guest_cid: GUEST_CID,
                uds_path: dir.vsock(),
            }),
            None,
        ),
        VmmKind::Qemu => (
            None,
            Some(AgentPortSpec {
                socket: dir.agent_socket(),
                name: AGENT_SERIAL_PORT.to_string(),
            }),
        ),
    }
}

/// What waits for the agent's readiness; made before the VMM starts so a
/// vsock announcement cannot be missed.
pub(crate) enum Readiness {
    Vsock(ReadinessListener),
    /// The host speaks first on the serial channel: nothing to bind.
    Serial,
}

/// The daemon's way to one running VM's agent.
pub struct AgentLink {
    client: AgentClient,
    serial: Option<SerialChannel>,
    /// Serves `v.sock` for other processes (QEMU); removed when dropped.
    _gateway: Option<Gateway>,
}

impl AgentLink {
    pub fn client(&self) -> AgentClient {
        self.client.clone()
    }

    /// Waits for the agent's readiness (the vsock announcement, or the
    /// agent's answer on the serial channel). Owns what it needs, so the
    /// link itself can sit in the VM's slot meanwhile.
    pub(crate) fn ready(
        &self,
        readiness: Readiness,
        timeout: Duration,
        vm: &str,
    ) -> impl Future<Output = Result<GuestHello, DaemonError>> + Send + 'static {
        let serial = self.serial.clone();
        let vm = vm.to_string();
        async move {
            let r = match (readiness, serial) {
                (Readiness::Vsock(l), _) => l.wait(timeout, &vm).await,
                (Readiness::Serial, Some(ch)) => ch.wait_ready(timeout, &vm).await,
                (Readiness::Serial, None) => {
                    return Err(DaemonError::internal("no serial agent channel to wait on"));
                }
            };
            r.map_err(|e| DaemonError::conflict(e.to_string()))
        }
    }
}

/// Binds what readiness needs before a VM of `kind` starts.
pub(crate) fn prepare(kind: VmmKind, dir: &VmDir) -> Result<Readiness, DaemonError> {
    match kind {
        VmmKind::Firecracker => ReadinessListener::bind(&dir.vsock(), READY_PORT)
            .map(Readiness::Vsock)
            .map_err(DaemonError::internal),
        VmmKind::Qemu => Ok(Readiness::Serial),
    }
}

/// The link to a running VM's agent (QEMU: the channel and its gateway).
pub(crate) fn link(kind: VmmKind, dir: &VmDir) -> Result<AgentLink, DaemonError> {
    match kind {
        VmmKind::Firecracker => Ok(AgentLink {
            client: AgentClient::hybrid(dir.vsock()),
            serial: None,
            _gateway: None,
        }),
        VmmKind::Qemu => {
            let ch = SerialChannel::new(dir.agent_socket());
            let gateway = Gateway::serve(ch.clone(), &dir.vsock()).map_err(|e| {
                DaemonError::internal(format!("cannot serve the agent gateway: {e}"))
            })?;
            Ok(AgentLink {
                client: AgentClient::new(banger_agent::AgentTarget::Serial(ch.clone())),
                serial: Some(ch),
                _gateway: Some(gateway),
            })
        }
    }
}

impl Daemon {
    /// A client for VM `name`'s agent: the running VM's link, else its vsock
    /// socket (which fails clearly if nothing is there).
    pub fn agent_client(&self, name: &str) -> AgentClient {
        self.slots
            .peek(name)
            .and_then(|s| {
                s.agent
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .map(AgentLink::client)
            })
            .unwrap_or_else(|| AgentClient::hybrid(self.vm_dir(name).vsock()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_vmm_gets_its_own_agent_device() {
        let dir = VmDir::new("/state/vms/a");
        let (vsock, port) = agent_devices(VmmKind::Firecracker, &dir);
        assert_eq!(vsock.map(|v| v.uds_path), Some(dir.vsock()));
        assert!(port.is_none(), "Firecracker has no virtio-serial");
        let (vsock, port) = agent_devices(VmmKind::Qemu, &dir);
        assert!(vsock.is_none(), "QEMU needs no vhost-device-vsock");
        let port = port.expect("serial port");
        assert_eq!(port.socket, dir.agent_socket());
        assert_eq!(port.name, AGENT_SERIAL_PORT);
    }
}
