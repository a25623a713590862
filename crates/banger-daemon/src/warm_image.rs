//! `banger image warm NAME`: make the warm snapshot of a shape now, instead of at the
//! first cold `vm run` of that shape.
//!
//! It is that first run, done by the daemon: a throwaway VM of the shape is created
//! with `cold`, booted to ready (which makes the snapshot, see
//! [`crate::vms::warm_start`]), and deleted. A shape that has a usable snapshot already
//! is answered with it, untouched.

use std::sync::Arc;

use banger_proto::{CreateVmRequest, EgressPolicy, WarmSnapshotInfo};
use banger_vmm::Vmm;

use crate::warm::warm_info;
use crate::{Daemon, DaemonError};

impl Daemon {
    /// The warm snapshot of `image` in the shape of `req` (its vcpu, memory_mib and
    /// disk_bytes; the rest is ignored), made now when there is none.
    pub async fn warm_image(
        self: &Arc<Self>,
        image: &str,
        req: &CreateVmRequest,
    ) -> Result<WarmSnapshotInfo, DaemonError> {
        banger_core::names::validate_image_name(image)
            .map_err(|e| DaemonError::bad_request(e.to_string()))?;
        self.store.get_image(image).map_err(|_| {
            DaemonError::not_found(format!("no image named {image:?}; see `banger image list`"))
        })?;
        let driver = self.driver_for(None)?;
        let create = CreateVmRequest {
            name: Some(format!("warm-{}", banger_core::names::random_vm_name())),
            image: Some(image.to_string()),
            vcpu: req.vcpu,
            memory_mib: req.memory_mib,
            disk_bytes: req.disk_bytes,
            egress: Some(EgressPolicy::None),
            no_egress: true,
            cold: true,
            start: false,
            ssh_public_key: None,
        };
        let spec = self.resolve_spec(&create);
        if let Some((key, snap)) = self.warm_for(image, &spec) {
            return Ok(warm_info(&key, &snap, false, false));
        }
        let (rec, _) = self.create_vm(create).await?;
        let name = rec.name.clone();
        tracing::info!(vm = %name, image, vmm = %driver.kind(), "booting a VM to make a warm snapshot");
        let booted = async {
            self.start_vm(&name).await?;
            self.wait_ready(&name, crate::vms::READY_TIMEOUT).await
        }
        .await;
        if let Err(e) = self.delete_vm(&name).await {
            tracing::warn!(vm = %name, "cannot delete the VM a warm snapshot was made from: {}", e.message);
        }
        booted?;
        let (key, snap) = self.warm_for(image, &spec).ok_or_else(|| {
            DaemonError::internal(format!(
                "the VM booted, but no warm snapshot of {image} was made ({} cannot snapshot \
                 this VM, or saving failed); the daemon's log says why",
                driver.kind()
            ))
        })?;
        Ok(warm_info(&key, &snap, true, false))
    }
}
