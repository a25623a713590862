//! `banger doctor`: what this host can do, truthfully, and how to fix what
//! it cannot.

use std::path::{Path, PathBuf};
use std::process::Command;

use banger_core::Config;
use banger_core::config::{HostFacts, VmmChoice};
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

/// Finds `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
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

/// What /dev/kvm can do here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmFinding {
    pub usable: bool,
    pub detail: String,
}

/// Decides whether KVM can run a stock guest kernel. `/dev/kvm` existing
/// proves nothing: nested paravirtual hypervisors expose it without the
/// hardware virtualization extensions a stock kernel needs (and such a guest
/// then dies with "KVM internal error … emulation failure").
pub fn kvm_finding(dev_exists: bool, dev_openable: bool, cpuinfo: &str) -> KvmFinding {
    if !dev_exists {
        return KvmFinding {
            usable: false,
            detail: "/dev/kvm does not exist (no KVM on this host)".into(),
        };
    }
    if !dev_openable {
        return KvmFinding {
            usable: false,
            detail: "/dev/kvm exists but this user cannot open it".into(),
        };
    }
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    let hw = flags.iter().any(|f| *f == "vmx" || *f == "svm");
    if hw {
        KvmFinding {
            usable: true,
            detail: "/dev/kvm is accessible and the CPU has hardware virtualization (vmx/svm)"
                .into(),
        }
    } else if flags.contains(&"hypervisor") {
        KvmFinding {
            usable: false,
            detail: "/dev/kvm exists, but this host is itself a VM without vmx/svm: a nested paravirtual KVM that cannot run stock guest kernels".into(),
        }
    } else {
        KvmFinding {
            usable: false,
            detail: "/dev/kvm exists, but the CPU reports no hardware virtualization (vmx/svm); enable it in the firmware".into(),
        }
    }
}

pub fn probe_kvm() -> KvmFinding {
    let dev = Path::new("/dev/kvm");
    let openable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .is_ok();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    kvm_finding(dev.exists(), openable, &cpuinfo)
}

pub fn firecracker_path(config: &Config, home: &Path) -> Option<PathBuf> {
    match &config.firecracker_bin {
        Some(p) => Some(p.expand(home)).filter(|p| is_executable(p)),
        None => which("firecracker"),
    }
}

pub fn qemu_path(config: &Config, home: &Path) -> Option<PathBuf> {
    match &config.qemu_bin {
        Some(p) => Some(p.expand(home)).filter(|p| is_executable(p)),
        None => which("qemu-system-x86_64"),
    }
}

/// Which driver `vmm` picks on this host, and why.
pub fn pick_vmm(
    choice: VmmChoice,
    firecracker: Option<&Path>,
    qemu: Option<&Path>,
    kvm: &KvmFinding,
) -> VmmPick {
    let configured = choice.to_string();
    let (driver, reason) = match choice {
        VmmChoice::Firecracker => match (firecracker, kvm.usable) {
            (Some(_), true) => (
                Some("firecracker"),
                "configured: vmm = \"firecracker\"".to_string(),
            ),
            (None, _) => (
                None,
                "vmm = \"firecracker\" but no firecracker binary was found".to_string(),
            ),
            (Some(_), false) => (
                None,
                format!(
                    "vmm = \"firecracker\" but KVM cannot run guests: {}",
                    kvm.detail
                ),
            ),
        },
        VmmChoice::Qemu => match qemu {
            Some(_) if kvm.usable => (
                Some("qemu"),
                "configured: vmm = \"qemu\" (KVM acceleration)".to_string(),
            ),
            Some(_) => (
                Some("qemu"),
                "configured: vmm = \"qemu\" (software emulation, TCG: KVM cannot run guests here)"
                    .to_string(),
            ),
            None => (
                None,
                "vmm = \"qemu\" but qemu-system-x86_64 was not found".to_string(),
            ),
        },
        VmmChoice::Auto => match (firecracker, kvm.usable, qemu) {
            (Some(_), true, _) => (
                Some("firecracker"),
                "auto: firecracker is installed and KVM can run guests".to_string(),
            ),
            (_, true, Some(_)) => (
                Some("qemu"),
                "auto: KVM can run guests but firecracker is not installed, so qemu with KVM"
                    .to_string(),
            ),
            (_, false, Some(_)) => (
                Some("qemu"),
                format!(
                    "auto: KVM cannot run guests here ({}), so qemu with software emulation (TCG): slower boots, same guests",
                    kvm.detail
                ),
            ),
            (_, _, None) => (
                None,
                "auto: neither a usable firecracker+KVM nor qemu-system-x86_64 was found"
                    .to_string(),
            ),
        },
    };
    VmmPick {
        configured,
        driver: driver.map(str::to_string),
        reason,
    }
}

pub fn run_checks(
    config: &Config,
    home: &Path,
    daemon: Option<Result<String, String>>,
) -> DoctorReport {
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

    let kvm = probe_kvm();
    checks.push(check(
        "kvm",
        if kvm.usable { Ok } else { Warn },
        kvm.detail.clone(),
        Some(if Path::new("/dev/kvm").exists() {
            "guests will run under qemu with software emulation (TCG); for Firecracker use a host with hardware virtualization and add the owner to the kvm group"
        } else {
            "load the kvm module (modprobe kvm_intel or kvm_amd) on a host with hardware virtualization; until then qemu with software emulation is used"
        }),
        false,
    ));

    let fc = firecracker_path(config, home);
    checks.push(match &fc {
        Some(p) => check(
            "firecracker",
            Ok,
            format!("{} ({})", p.display(), version_line(p, "--version").unwrap_or_else(|| "version unknown".into())),
            None,
            false,
        ),
        None => check(
            "firecracker",
            Warn,
            match &config.firecracker_bin {
                Some(p) => format!("firecracker_bin = {:?} is not an executable file", p.0),
                None => "not found on PATH".into(),
            },
            Some("install Firecracker v1.16+ on PATH or set firecracker_bin in config; not needed where qemu is used"),
            false,
        ),
    });

    let qemu = qemu_path(config, home);
    checks.push(match &qemu {
        Some(p) => check(
            "qemu",
            Ok,
            format!(
                "{} ({})",
                p.display(),
                version_line(p, "--version").unwrap_or_default()
            ),
            None,
            false,
        ),
        None => check(
            "qemu",
            Warn,
            "qemu-system-x86_64 not found",
            Some("sudo apt-get install -y qemu-system-x86"),
            false,
        ),
    });

    let choice = config.vmm_choice().value;
    let pick = pick_vmm(choice, fc.as_deref(), qemu.as_deref(), &kvm);
    checks.push(match &pick.driver {
        Some(d) => check("vmm", Ok, format!("{d}: {}", pick.reason), None, true),
        None => check("vmm", Fail, pick.reason.clone(), Some("install qemu-system-x86 (sudo apt-get install -y qemu-system-x86), or Firecracker on a host with hardware virtualization"), true),
    });

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
        checks.push(match which(tool) {
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

    if which("mmdebstrap").is_some() {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let user = std::env::var("USER").unwrap_or_default();
        let subuid = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
        let has_range = subuid
            .lines()
            .any(|l| l.split(':').next() == Some(user.as_str()));
        checks.push(if root {
            check("image build mode", Ok, "root: mmdebstrap --mode=root", None, false)
        } else if has_range && which("newuidmap").is_some() {
            check("image build mode", Ok, format!("unprivileged: mmdebstrap --mode=unshare ({user} has a /etc/subuid range)"), None, false)
        } else {
            check(
                "image build mode",
                Warn,
                format!("{user} has no /etc/subuid range or newuidmap is missing, so mmdebstrap --mode=unshare cannot run"),
                Some("sudo apt-get install -y uidmap && sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 \"$USER\", or use `banger image pull`"),
                false,
            )
        });
    }

    let spec = config.vm_defaults(HostFacts::probe());
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

    if let Some(d) = daemon {
        checks.push(match d {
            Result::Ok(v) => check("bangerd", Ok, v, None, false),
            Err(e) => check(
                "bangerd",
                Warn,
                e,
                Some("sudo banger system install --owner \"$USER\" (systemd hosts) or sudo banger system run (foreground)"),
                false,
            ),
        });
    }

    let ok = !checks.iter().any(|c| c.required && c.status == Fail);
    DoctorReport {
        ok,
        checks,
        vm_defaults: spec,
        vmm: pick,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NESTED: &str = "processor\t: 0\nflags\t\t: fpu vme sse2 hypervisor avx\n";
    const BARE: &str = "flags\t\t: fpu vme vmx sse2\n";

    #[test]
    fn nested_paravirtual_kvm_is_not_usable() {
        let f = kvm_finding(true, true, NESTED);
        assert!(!f.usable);
        assert!(f.detail.contains("nested paravirtual KVM"), "{}", f.detail);
        assert!(kvm_finding(true, true, BARE).usable);
        assert!(!kvm_finding(false, false, BARE).usable);
        assert!(!kvm_finding(true, false, BARE).usable);
    }

    #[test]
    fn auto_picks_qemu_tcg_when_kvm_cannot_run_guests() {
        let kvm = kvm_finding(true, true, NESTED);
        let fc = Path::new("/usr/bin/firecracker");
        let q = Path::new("/usr/bin/qemu-system-x86_64");
        let p = pick_vmm(VmmChoice::Auto, Some(fc), Some(q), &kvm);
        assert_eq!(p.driver.as_deref(), Some("qemu"));
        assert!(p.reason.contains("software emulation"), "{}", p.reason);
        let good = kvm_finding(true, true, BARE);
        assert_eq!(
            pick_vmm(VmmChoice::Auto, Some(fc), Some(q), &good)
                .driver
                .as_deref(),
            Some("firecracker")
        );
        assert_eq!(
            pick_vmm(VmmChoice::Auto, None, Some(q), &good)
                .driver
                .as_deref(),
            Some("qemu")
        );
        assert_eq!(
            pick_vmm(VmmChoice::Firecracker, Some(fc), Some(q), &kvm).driver,
            None
        );
        assert_eq!(pick_vmm(VmmChoice::Auto, None, None, &kvm).driver, None);
    }
}
