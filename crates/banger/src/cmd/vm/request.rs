//! The create request built from `vm create` / `vm run` flags, checked with
//! the daemon's own rules (names, banger-core's limits) before anything is
//! sent, and the `spec:` line printed for what the daemon resolved.

use anyhow::Context;
use banger_core::size::{format_size, parse_size};
use banger_proto::{CreateVmRequest, VmSpec};

use crate::cli::VmShape;

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
        .sizes
        .vcpu
        .map(|v| limits::check_vcpu(v).context("invalid --vcpu"))
        .transpose()?;
    let memory_mib = shape
        .sizes
        .memory
        .as_deref()
        .map(|m| {
            let mib = parse_memory_mib(m)?;
            limits::check_memory_mib(mib).with_context(|| format!("invalid --memory {m:?}"))
        })
        .transpose()?;
    let disk_bytes = shape
        .sizes
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Sizes;

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
            sizes: Sizes {
                disk: Some("16G".into()),
                memory: Some("512".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let r = create_request(&shape, true).expect("valid");
        assert_eq!(r.disk_bytes, Some(16 << 30));
        assert_eq!(r.memory_mib, Some(512));
        let zero = VmShape {
            sizes: Sizes {
                vcpu: Some(0),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(create_request(&zero, true).is_err());
    }
}
