//! `banger image warm`: the warm snapshot of an image for one VM shape, made now.

use std::process::ExitCode;

use banger_core::size::format_size;
use banger_proto::WarmSnapshotInfo;

use crate::api_path;
use crate::cli::{ImageWarmArgs, VmShape};
use crate::client::Client;
use crate::output;

pub async fn image_warm(client: &Client, a: ImageWarmArgs) -> anyhow::Result<ExitCode> {
    // The shape flags are checked by the same rules as `vm run`'s.
    let shape = VmShape {
        name: None,
        image: Some(a.name.clone()),
        sizes: a.sizes,
        no_egress: false,
        cold: false,
        egress: None,
    };
    let req = super::vm::request::create_request(&shape, false)?;
    if !a.json.json {
        eprintln!(
            "banger: making the warm snapshot of {} (boots a VM once if there is none)…",
            a.name
        );
    }
    let info: WarmSnapshotInfo = client.post(&api_path::image_warm(&a.name)?, &req).await?;
    if a.json.json {
        output::print_json(&info)?;
        return Ok(ExitCode::SUCCESS);
    }
    let what = if info.made {
        format!("made the warm snapshot of {}", info.image)
    } else {
        format!("{} already has a warm snapshot", info.image)
    };
    outln!(
        "{what}: {} vCPU, {} MiB, {} disk, {} ({})",
        info.vcpu,
        info.memory_mib,
        format_size(info.disk_bytes),
        info.vmm,
        info.dir
    )?;
    if info.made {
        outln!(
            "guest paused {} ms for its state and memory, {} ms for its disks",
            info.save_ms,
            info.disk_copy_ms
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
