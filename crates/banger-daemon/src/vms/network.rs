//! A VM's host networking as the daemon sees it: bridge, NAT, tap and
//! egress through the root helper when VMs get networking, nothing when
//! the daemon runs with `--no-network`.

use banger_store::VmRecord;
use banger_vmm::NetSpec;

use super::extra_of;
use crate::{Daemon, DaemonError};

impl Daemon {
    /// Bridge, tap, NAT and egress for one VM through the root helper.
    pub(crate) async fn setup_network(
        &self,
        rec: &VmRecord,
    ) -> Result<Option<NetSpec>, DaemonError> {
        let Some(root) = &self.network else {
            return Ok(None);
        };
        use banger_proto::root::RootOp;
        let bridge = self.config.bridge_name().value;
        let subnet = self.config.vm_subnet().value.to_string();
        let tap = banger_net::tap_name(&rec.name);
        let call = |op: RootOp| async move {
            root.call(op)
                .await
                .map_err(|e| DaemonError::conflict(format!("network setup for {}: {e}", rec.name)))
        };
        call(RootOp::EnsureBridge {
            bridge: bridge.clone(),
            subnet: subnet.clone(),
        })
        .await?;
        call(RootOp::EnsureNat {
            bridge: bridge.clone(),
            subnet,
        })
        .await?;
        call(RootOp::CreateTap {
            tap: tap.clone(),
            bridge,
            // SAFETY: geteuid has no preconditions.
            owner_uid: unsafe { libc::geteuid() },
        })
        .await?;
        call(RootOp::SetEgress {
            tap: tap.clone(),
            allowed: !rec.no_egress,
        })
        .await?;
        let mac = rec
            .mac
            .parse()
            .map_err(|e: banger_vmm::VmmError| DaemonError::internal(e.to_string()))?;
        Ok(Some(NetSpec { tap, mac }))
    }

    pub(crate) async fn teardown_network(&self, rec: &VmRecord) -> Result<(), DaemonError> {
        let Some(root) = &self.network else {
            return Ok(());
        };
        let tap = extra_of(rec)
            .tap
            .unwrap_or_else(|| banger_net::tap_name(&rec.name));
        root.call(banger_proto::root::RootOp::DeleteTap { tap })
            .await
            .map_err(|e| {
                DaemonError::conflict(format!("network teardown for {}: {e}", rec.name))
            })?;
        Ok(())
    }
}
