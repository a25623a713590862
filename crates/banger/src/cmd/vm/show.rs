//! `vm list` and `vm show`: how VMs are printed (a table, or one VM's
//! fields), JSON left to `output`.

use banger_core::size::format_size;
use banger_proto::VmInfo;

use crate::api_path;
use crate::cli::VmShowArgs;
use crate::client::Client;
use crate::output;

fn vm_rows(vms: &[VmInfo]) -> Vec<Vec<String>> {
    vms.iter()
        .map(|v| {
            vec![
                v.name.clone(),
                v.state.to_string(),
                v.image.clone(),
                v.ip.clone().unwrap_or_else(|| "-".into()),
                v.vcpu.to_string(),
                format!("{}M", v.memory_mib),
                format_size(v.disk_bytes),
                v.vmm.clone(),
                output::age(v.created_at),
            ]
        })
        .collect()
}

fn print_vm(v: &VmInfo) -> std::io::Result<()> {
    let rows = [
        ("name", v.name.clone()),
        ("state", v.state.to_string()),
        ("reason", v.reason.clone().unwrap_or_else(|| "-".into())),
        ("image", v.image.clone()),
        ("address", v.ip.clone().unwrap_or_else(|| "-".into())),
        ("hostname", format!("{}.vm", v.name)),
        ("mac", v.mac.clone()),
        ("vcpu", v.vcpu.to_string()),
        ("memory", format!("{} MiB", v.memory_mib)),
        ("disk", format_size(v.disk_bytes)),
        ("vmm", v.vmm.clone()),
        (
            "pid",
            v.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
        ),
        (
            "egress",
            match &v.egress {
                banger_proto::EgressPolicy::All if v.no_egress => "none".into(),
                banger_proto::EgressPolicy::Allow { names } => {
                    format!("only {}", names.join(", "))
                }
                e => e.to_string(),
            },
        ),
        ("created", output::age(v.created_at)),
        (
            "private",
            v.private_memory_bytes
                .map(|b| {
                    format!(
                        "{} (memory not shared with a snapshot or other VMs)",
                        format_size(b)
                    )
                })
                .unwrap_or_else(|| "-".into()),
        ),
        (
            "restored",
            v.restored_from
                .clone()
                .unwrap_or_else(|| "no (booted)".into()),
        ),
    ];
    for (k, val) in rows {
        outln!("{k:<9} {val}")?;
    }
    Ok(())
}

pub async fn list(client: &Client, json: bool) -> anyhow::Result<()> {
    let vms: Vec<VmInfo> = client.get("/v1/vms").await?;
    if json {
        output::print_json(&vms)?;
    } else if vms.is_empty() {
        outln!("No VMs. Create one with `banger vm run`.")?;
    } else {
        output::print_table(
            &[
                "NAME", "STATE", "IMAGE", "IP", "VCPU", "MEMORY", "DISK", "VMM", "CREATED",
            ],
            &vm_rows(&vms),
        )?;
    }
    Ok(())
}

pub async fn show(client: &Client, a: VmShowArgs) -> anyhow::Result<()> {
    let vm: VmInfo = client.get(&api_path::vm(&a.name)?).await?;
    if a.json.json {
        output::print_json(&vm)?;
    } else {
        print_vm(&vm)?;
    }
    Ok(())
}
