//! `banger vm …`.

use std::process::ExitCode;

use anyhow::Context;
use banger_core::size::{format_size, parse_size};
use banger_proto::{CreateVmRequest, CreateVmResponse, VmInfo, VmSpec};

use crate::api_path;
use crate::cli::{VmCommand, VmShape};
use crate::client::Client;
use crate::output;

/// `--memory`: a bare number is MiB (as in config's memory_mib), else a size.
pub fn parse_memory_mib(s: &str) -> anyhow::Result<u64> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    let bytes = parse_size(s).with_context(|| format!("invalid --memory {s:?}"))?;
    Ok(bytes >> 20)
}

/// The create request for these flags, every flag checked with the rules
/// the daemon applies (names, banger-core's limits) before anything is sent.
pub fn create_request(shape: &VmShape, start: bool) -> anyhow::Result<CreateVmRequest> {
    use banger_core::limits;
    if let Some(n) = &shape.name {
        banger_core::names::validate_vm_name(n)?;
    }
    if let Some(i) = &shape.image
        && !banger_core::names::is_oci_reference(i)
    {
        banger_core::names::validate_image_name(i).context("invalid --image")?;
    }
    let vcpu = shape
        .vcpu
        .map(|v| limits::check_vcpu(v).context("invalid --vcpu"))
        .transpose()?;
    let memory_mib = shape
        .memory
        .as_deref()
        .map(|m| {
            let mib = parse_memory_mib(m)?;
            limits::check_memory_mib(mib).with_context(|| format!("invalid --memory {m:?}"))
        })
        .transpose()?;
    let disk_bytes = shape
        .disk
        .as_deref()
        .map(|d| {
            let bytes = parse_size(d).with_context(|| format!("invalid --disk {d:?}"))?;
            limits::check_disk_bytes(bytes).with_context(|| format!("invalid --disk {d:?}"))
        })
        .transpose()?;
    Ok(CreateVmRequest {
        name: shape.name.clone(),
        image: shape.image.clone(),
        vcpu,
        memory_mib,
        disk_bytes,
        no_egress: shape.no_egress,
        egress: shape.egress.clone(),
        start,
        ssh_public_key: None,
        cold: shape.cold,
    })
}

/// The `spec:` line printed before a VM is created.
pub fn spec_line(spec: &VmSpec) -> String {
    format!(
        "spec: {} vCPU ({}), {} MiB RAM ({}), {} disk ({})",
        spec.vcpu.value,
        spec.vcpu.source,
        spec.memory_mib.value,
        spec.memory_mib.source,
        format_size(spec.disk_bytes.value),
        spec.disk_bytes.source
    )
}

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

pub async fn run(client: &Client, c: VmCommand) -> anyhow::Result<ExitCode> {
    match c {
        VmCommand::List(j) => {
            let vms: Vec<VmInfo> = client.get("/v1/vms").await?;
            if j.json {
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
        }
        VmCommand::Show(a) => {
            let vm: VmInfo = client.get(&api_path::vm(&a.name)?).await?;
            if a.json.json {
                output::print_json(&vm)?;
            } else {
                print_vm(&vm)?;
            }
        }
        VmCommand::Create(a) => {
            let mut req = create_request(&a.shape, !a.no_start)?;
            let config = super::load_config()?;
            let (_, public) = super::ssh::ensure_identity(&config, &super::home()?)?;
            req.ssh_public_key = Some(public);
            let resp: CreateVmResponse = client.post("/v1/vms", &req).await?;
            if a.json.json {
                output::print_json(&resp)?;
            } else {
                outln!("{}", spec_line(&resp.spec))?;
                outln!("created {} ({})", resp.vm.name, resp.vm.state)?;
            }
        }
        VmCommand::Start(n) => {
            let vm: VmInfo = client
                .post(&api_path::vm_action(&n.name, "start")?, &())
                .await?;
            outln!("{} {}", vm.name, vm.state)?;
        }
        VmCommand::Stop(n) => {
            let vm: VmInfo = client
                .post(&api_path::vm_action(&n.name, "stop")?, &())
                .await?;
            outln!("{} {}", vm.name, vm.state)?;
        }
        VmCommand::Restart(n) => {
            let vm: VmInfo = client
                .post(&api_path::vm_action(&n.name, "restart")?, &())
                .await?;
            outln!("{} {}", vm.name, vm.state)?;
        }
        VmCommand::Delete(n) => {
            let vm: VmInfo = client.delete(&api_path::vm(&n.name)?).await?;
            outln!("deleted {}", vm.name)?;
        }
        VmCommand::Logs(a) => return super::run::vm_logs(client, a).await,
        VmCommand::Run(a) => return super::run::vm_run(client, a).await,
        VmCommand::Ssh(a) => return super::run::vm_ssh(client, a).await,
        VmCommand::Exec(a) => return super::run::vm_exec(client, a).await,
        VmCommand::Cp(a) => return super::cp::vm_cp(client, a).await,
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_flag_accepts_mib_or_sizes() {
        assert_eq!(parse_memory_mib("2048").expect("mib"), 2048);
        assert_eq!(parse_memory_mib("2G").expect("size"), 2048);
        assert!(parse_memory_mib("lots").is_err());
    }

    #[test]
    fn create_request_validates_before_sending() {
        let bad = VmShape {
            name: Some("Bad_Name".into()),
            ..Default::default()
        };
        assert!(create_request(&bad, true).is_err());
        let shape = VmShape {
            name: Some("ok".into()),
            disk: Some("16G".into()),
            memory: Some("512".into()),
            ..Default::default()
        };
        let r = create_request(&shape, true).expect("valid");
        assert_eq!(r.disk_bytes, Some(16 << 30));
        assert_eq!(r.memory_mib, Some(512));
        let zero = VmShape {
            vcpu: Some(0),
            ..Default::default()
        };
        assert!(create_request(&zero, true).is_err());
    }
}
