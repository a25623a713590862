//! `banger doctor`: what this host can do, truthfully, and how to fix what
//! it cannot.

use std::path::Path;
use std::process::Command;

use banger_core::Config;
use banger_core::config::HostFacts;
use banger_proto::{Check, CheckStatus, VmSpec};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct DoctorReport {
    pub ok: bool,
    pub checks: Vec<Check>,
    pub vm_defaults: VmSpec,
    pub vmm: VmmPick,
}

#[derive(Debug, Serialize, Clone)]
pub struct VmmPick {
    pub configured: String,
    pub driver: Option<String>,
    pub reason: String,
}

/// First line of `<bin> <arg>`, for version reporting.
fn version_line(bin: &Path, arg: &str) -> Option<String> {
    let out = Command::new(bin).arg(arg).output().ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .map(|l| l.trim().to_string())
}

fn check(
    name: &str,
    status: CheckStatus,
    detail: impl Into<String>,
    fix: Option<&str>,
    required: bool,
) -> Check {
    Check {
        name: name.into(),
        status,
        detail: detail.into(),
        fix: if status == CheckStatus::Ok {
            None
        } else {
            fix.map(str::to_string)
        },
        required,
    }
}

/// The host's own checks: nothing here talks to the daemon, so they are
/// reported even when bangerd hangs ([`daemon_check`] comes after).
pub fn run_checks(config: &Config, home: &Path) -> DoctorReport {
    use CheckStatus::*;
    let mut checks = Vec::new();

    let arch = std::env::consts::ARCH;
    checks.push(if arch == "x86_64" {
        check("architecture", Ok, "x86_64", None, true)
    } else {
        check(
            "architecture",
            Fail,
            format!("{arch}: banger supports x86_64 (amd64) hosts only"),
            Some("run banger on an x86_64 Linux host"),
            true,
        )
    });

    // KVM usability, the VMM binaries and which driver `vmm` picks: the VMM
    // layer decides, doctor only reports.
    let vmm_config = banger_vmm::VmmConfig::from_config(config, home);
    let configured = config.vmm_choice().value.to_string();
    let mut emulated = false;
    let pick = match banger_vmm::select_vmm(&vmm_config) {
        Result::Ok(sel) => {
            emulated = sel.emulated();
            for f in sel.findings() {
                let status = if f.ok { Ok } else { Warn };
                checks.push(check(
                    &f.check,
                    status,
                    f.detail.clone(),
                    f.fix.as_deref(),
                    false,
                ));
            }
            if let Some(fc) = &sel.firecracker_bin {
                checks.push(check(
                    "firecracker version",
                    Ok,
                    version_line(fc, "--version").unwrap_or_else(|| "unknown".into()),
                    None,
                    false,
                ));
            }
            if !checks.iter().any(|c| c.name == "vmm") {
                checks.push(check(
                    "vmm",
                    Ok,
                    format!("{}: {}", sel.kind, sel.reason),
                    None,
                    true,
                ));
            }
            VmmPick {
                configured,
                driver: Some(sel.kind.to_string()),
                reason: sel.reason.clone(),
            }
        }
        Err(e) => {
            let reason = e.to_string();
            checks.push(check(
                "vmm",
                Fail,
                reason.clone(),
                Some("install qemu-system-x86 (sudo apt-get install -y qemu-system-x86), or Firecracker on a host whose KVM runs guests"),
                true,
            ));
            VmmPick {
                configured,
                driver: None,
                reason,
            }
        }
    };

    for (tool, pkg, required, why) in [
        ("mkfs.ext4", "e2fsprogs", true, "writes VM disks"),
        (
            "debugfs",
            "e2fsprogs",
            true,
            "writes files into guest disks without mounting",
        ),
        ("e2fsck", "e2fsprogs", true, "checks images"),
        ("ssh", "openssh-client", true, "interactive sessions"),
        ("ssh-keygen", "openssh-client", true, "per-VM host keys"),
        ("ip", "iproute2", true, "host networking"),
        ("nft", "nftables", true, "NAT and egress rules"),
        (
            "mmdebstrap",
            "mmdebstrap",
            false,
            "building the golden image locally",
        ),
        ("zstd", "zstd", false, "bundle tooling"),
    ] {
        checks.push(match banger_vmm::host::find_program(tool) {
            Some(p) => check(tool, Ok, format!("{} ({why})", p.display()), None, required),
            None => check(
                tool,
                if required { Fail } else { Warn },
                format!("not found ({why})"),
                Some(&format!("sudo apt-get install -y {pkg}")),
                required,
            ),
        });
    }

    let mode = banger_image::BuildMode::auto();
    let missing: Vec<String> = banger_image::build::prerequisites(mode)
        .into_iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    checks.push(if missing.is_empty() {
        check("image build", Ok, format!("mmdebstrap --mode={} can build images here", mode.as_str()), None, false)
    } else {
        check(
            "image build",
            Warn,
            format!("mmdebstrap --mode={} cannot run: {}", mode.as_str(), missing.join("; ")),
            Some("as root: sudo apt-get install -y mmdebstrap; unprivileged: sudo apt-get install -y uidmap && sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 \"$USER\"; or use `banger image pull`"),
            false,
        )
    });

    checks.push(catalog_check(config, home));

    checks.extend(crate::doctor_egress::checks(config, home));

    let spec = config.vm_defaults(HostFacts::probe().emulated(emulated));
    checks.push(check(
        "vm defaults",
        Ok,
        format!(
            "{} vCPU ({}), {} MiB RAM ({}), {} disk ({})",
            spec.vcpu.value,
            spec.vcpu.source,
            spec.memory_mib.value,
            spec.memory_mib.source,
            banger_core::size::format_size(spec.disk_bytes.value),
            spec.disk_bytes.source
        ),
        None,
        false,
    ));

    let ok = !checks.iter().any(|c| c.required && c.status == Fail);
    DoctorReport {
        ok,
        checks,
        vm_defaults: spec,
        vmm: pick,
    }
}

/// The `bangerd` line: running (and what it said), or why not. Not
/// required: the host checks stand on their own.
pub fn daemon_check(daemon: Result<String, String>) -> Check {
    match daemon {
        Result::Ok(v) => check("bangerd", CheckStatus::Ok, v, None, false),
        Err(e) => check(
            "bangerd",
            CheckStatus::Warn,
            e,
            Some(
                "sudo banger system install --owner \"$USER\" (systemd hosts) or sudo banger system run (foreground)",
            ),
            false,
        ),
    }
}

/// Which configuration the running daemon uses, and whether the file
/// changed since it loaded it.
pub fn daemon_config_check(d: &banger_proto::DaemonConfig) -> Check {
    let last = d
        .last_reload
        .as_ref()
        .map(|r| format!("; last reload {r}"))
        .unwrap_or_default();
    if d.changed_since_load {
        check(
            "config",
            CheckStatus::Warn,
            format!("{} changed since bangerd loaded it{last}", d.file),
            Some("banger config reload (applies what it can, names what needs a restart)"),
            false,
        )
    } else {
        check(
            "config",
            CheckStatus::Ok,
            format!("bangerd runs with {} as it is now{last}", d.file),
            None,
            false,
        )
    }
}

/// What `image pull NAME` can fetch here, and what `vm run` does when the
/// default image is missing: an empty catalog is said, not discovered.
fn catalog_check(config: &Config, home: &Path) -> Check {
    let file = config.catalog_file.as_ref().map(|p| p.expand(home));
    let source = match &file {
        Some(f) => format!("catalog_file {}", f.display()),
        None => "the embedded catalog".to_string(),
    };
    let image = config.image_name().value;
    let fix = "publish signed bundles and set catalog_file in config (docs/image-catalog.md)";
    match banger_image::catalog::Catalog::resolve(file.as_deref()) {
        Result::Ok(c) if c.entries.is_empty() => check(
            "image catalog",
            CheckStatus::Warn,
            format!(
                "{source} has no entries: `banger image pull` fetches OCI images only, and `banger vm run` \
                 builds {image} locally with mmdebstrap the first time (a few minutes; about 3 on a 2-core host)"
            ),
            Some(fix),
            false,
        ),
        Result::Ok(c) => {
            let names: Vec<&str> = c.entries.iter().map(|e| e.name.as_str()).collect();
            let has_default = names.contains(&image.as_str());
            check(
                "image catalog",
                if has_default {
                    CheckStatus::Ok
                } else {
                    CheckStatus::Warn
                },
                format!(
                    "{source}: {}{}",
                    names.join(", "),
                    if has_default {
                        String::new()
                    } else {
                        format!(" (not {image}: `vm run` builds it locally the first time)")
                    }
                ),
                Some(fix),
                false,
            )
        }
        Err(e) => check(
            "image catalog",
            CheckStatus::Warn,
            format!("{source} cannot be read: {e}"),
            Some("fix or remove catalog_file in config (docs/image-catalog.md)"),
            false,
        ),
    }
}
