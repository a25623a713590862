//! Waiting for a guest to come up and reaching it: the daemon's bounded
//! readiness wait, the agent channel, whether sshd answers. Shared by
//! `vm run`, `vm exec`, `vm ssh` and `vm cp`.

use std::time::Duration;

use anyhow::{Context, bail};
use banger_agent::client::AgentClient;
use banger_proto::VmInfo;

use crate::api_path;
use crate::client::Client;

/// How long a command waits for the guest to come up (TCG boots are slow).
pub(super) const READY_SECS: u64 = 300;

pub(super) fn agent_for(vm: &VmInfo) -> anyhow::Result<AgentClient> {
    let path = vm.vsock_path.as_deref().with_context(|| {
        format!(
            "VM {} has no guest agent channel (is it running? see `banger vm show {}`)",
            vm.name, vm.name
        )
    })?;
    Ok(AgentClient::hybrid(path).with_connect_timeout(Duration::from_secs(10)))
}

/// The VM, once it is running and its guest has come up (a VM started a
/// moment ago is still booting).
pub(super) async fn wait_running(client: &Client, name: &str) -> anyhow::Result<VmInfo> {
    let vm: VmInfo = client.get(&api_path::vm(name)?).await?;
    if vm.state != banger_proto::VmState::Running {
        bail!(
            "VM {} is {}; start it with `banger vm start {}`",
            vm.name,
            vm.state,
            vm.name
        );
    }
    if vm.agent_ready {
        return Ok(vm);
    }
    let path = format!(
        "{}?timeout_secs={READY_SECS}",
        api_path::vm_action(name, "ready")?
    );
    client
        .post::<_, VmInfo>(&path, &())
        .await
        .with_context(|| format!("VM {name} is not ready; see `banger vm logs {name}`"))
}

/// Whether the guest's sshd accepts connections (bounded).
pub(super) async fn sshd_listening(vm: &VmInfo) -> bool {
    let Some(ip) = vm.ip.as_deref() else {
        return false;
    };
    let connect = tokio::net::TcpStream::connect((ip, 22));
    matches!(
        tokio::time::timeout(Duration::from_secs(3), connect).await,
        Ok(Ok(_))
    )
}
