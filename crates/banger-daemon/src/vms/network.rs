//! A VM's host networking as the lifecycle needs it: the tap wiring asked
//! of the [`HostNetwork`](crate::HostNetwork) seam on start, undone on stop.

use banger_store::VmRecord;
use banger_vmm::NetSpec;

use super::{egress_of, extra_of, ipv4};
use crate::host_net::TapWiring;
use crate::{Daemon, DaemonError};

impl Daemon {
    /// Bridge, tap, NAT and egress for one VM; `None` when VMs get no NIC.
    pub(crate) async fn setup_network(
        &self,
        rec: &VmRecord,
    ) -> Result<Option<NetSpec>, DaemonError> {
        if !self.network.attaches() {
            return Ok(None);
        }
        let ip = ipv4(rec).ok_or_else(|| {
            DaemonError::internal(format!(
                "{} has no leased address to bind its tap to",
                rec.name
            ))
        })?;
        // Taps other VMs recorded at their last start stay theirs.
        let recorded = self
            .store
            .list_vms()?
            .iter()
            .filter(|v| v.name != rec.name)
            .filter_map(|v| extra_of(v).tap)
            .collect();
        let wiring = TapWiring {
            vm: rec.name.clone(),
            bridge: self.config().bridge_name().value,
            subnet: self.config().vm_subnet().value.to_string(),
            tap: self.slots.claim_tap(&rec.name, &recorded),
            // SAFETY: geteuid has no preconditions.
            owner_uid: unsafe { libc::geteuid() },
            mac: rec.mac.clone(),
            ip: ip.to_string(),
            egress: egress_of(rec),
        };
        let mac = rec
            .mac
            .parse()
            .map_err(|e: banger_vmm::VmmError| DaemonError::internal(e.to_string()))?;
        self.network.setup(&wiring).await?;
        self.forward_dns_for(rec);
        Ok(Some(NetSpec {
            tap: wiring.tap,
            mac,
        }))
    }

    /// Removes the VM's tap (the one recorded at its last start).
    pub(crate) async fn teardown_network(&self, rec: &VmRecord) -> Result<(), DaemonError> {
        if let Some(ip) = ipv4(rec) {
            self.dns_clients.revoke(ip.into());
        }
        if !self.network.attaches() {
            return Ok(());
        }
        let tap = extra_of(rec)
            .tap
            .unwrap_or_else(|| banger_net::tap_name(&rec.name));
        let r = self.network.teardown(&rec.name, &tap).await;
        if r.is_ok() {
            self.slots.release_tap(&rec.name);
        }
        r
    }

    /// Lets banger's DNS server relay names outside `.vm` for this VM under
    /// its egress policy (also after a re-adoption: the table lives in the
    /// daemon's memory): every name for `all`, only the allowed names for
    /// `allow:` (their answers' addresses granted through the root helper
    /// first, see `banger_dns::clients`). A `none` VM keeps getting
    /// REFUSED, so it cannot tunnel out through DNS.
    pub(crate) fn forward_dns_for(&self, rec: &VmRecord) {
        if let Some(ip) = ipv4(rec) {
            self.dns_clients.set(ip.into(), egress_of(rec));
        }
    }
}
