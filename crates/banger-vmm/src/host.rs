//! What this host can run: KVM usability (with a tiny probe VM), the VMM binaries, the
//! host TSC rate, and the `vmm = auto|firecracker|qemu` decision with its reason.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::VmmError;
use crate::spec::{VmmChoice, VmmKind};

/// One doctor check: what was looked at, whether it is fine, what was seen, how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub check: String,
    pub ok: bool,
    pub detail: String,
    pub fix: Option<String>,
}

impl Finding {
    fn ok(check: &str, detail: impl Into<String>) -> Finding {
        Finding {
            check: check.into(),
            ok: true,
            detail: detail.into(),
            fix: None,
        }
    }
    fn bad(check: &str, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            check: check.into(),
            ok: false,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Whether /dev/kvm can run real guests, and the evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KvmReport {
    pub usable: bool,
    pub findings: Vec<Finding>,
}

/// QEMU's accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

/// Checks /dev/kvm: present, openable read-write, CPU virtualization flags, and (only when
/// those pass) a probe VM that must run a few real-mode instructions to `hlt`.
///
/// The flag check is the decisive one on nested clouds: measured on a host whose /dev/kvm
/// cannot boot a Debian kernel, the tiny probe VM still runs fine (in ~80 ms).
///
/// The flags matter because a nested paravirtual KVM (a `hypervisor` flag but no vmx/svm)
/// accepts ioctls yet dies with "emulation failure" on stock guest kernels.
pub fn probe_kvm() -> KvmReport {
    probe_kvm_at(Path::new("/dev/kvm"), Path::new("/proc/cpuinfo"))
}

fn probe_kvm_at(dev: &Path, cpuinfo: &Path) -> KvmReport {
    let mut findings = Vec::new();
    let done = |findings: Vec<Finding>| KvmReport {
        usable: findings.iter().all(|f| f.ok),
        findings,
    };
    if !dev.exists() {
        findings.push(Finding::bad(
            "/dev/kvm",
            format!("{} does not exist", dev.display()),
            "load kvm_intel/kvm_amd (modprobe), enable virtualization in firmware, or use vmm = \"qemu\" (TCG)",
        ));
        return done(findings);
    }
    let file = match std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        Ok(f) => {
            findings.push(Finding::ok("/dev/kvm", "present and openable read-write"));
            f
        }
        Err(e) => {
            findings.push(Finding::bad(
                "/dev/kvm",
                format!("cannot open {} read-write: {e}", dev.display()),
                "add the daemon's user to the kvm group (usermod -aG kvm <user>, then log in again)",
            ));
            return done(findings);
        }
    };
    let flags = std::fs::read_to_string(cpuinfo)
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("flags"))
                .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        })
        .unwrap_or_default();
    let has = |f: &str| flags.iter().any(|x| x == f);
    if has("vmx") || has("svm") {
        findings.push(Finding::ok(
            "cpu virtualization",
            format!(
                "CPU flag {} present",
                if has("vmx") { "vmx" } else { "svm" }
            ),
        ));
    } else {
        let why = if has("hypervisor") {
            "no vmx/svm CPU flag, but a `hypervisor` flag: this is a VM whose /dev/kvm is a nested \
             paravirtual KVM that cannot run stock guest kernels"
        } else {
            "no vmx/svm CPU flag"
        };
        findings.push(Finding::bad(
            "cpu virtualization",
            why,
            "enable nested virtualization for this VM (vmx/svm exposed to it), or use vmm = \"qemu\" (TCG software emulation, slower)",
        ));
        return done(findings);
    }
    match run_probe_vm(file, Duration::from_secs(2)) {
        Ok(()) => findings.push(Finding::ok("probe VM", "a tiny KVM guest ran to hlt and did port I/O correctly")),
        Err(e) => findings.push(Finding::bad(
            "probe VM",
            format!("a tiny KVM guest failed: {e}"),
            "this /dev/kvm cannot run guests; use vmm = \"qemu\" (TCG) or fix the host's virtualization",
        )),
    }
    done(findings)
}

// KVM ioctl numbers (linux/kvm.h); _IO(0xAE, nr), _IOW/_IOR with the struct sizes.
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
const KVM_GET_VCPU_MMAP_SIZE: libc::c_ulong = 0xAE04;
const KVM_CREATE_VCPU: libc::c_ulong = 0xAE41;
const KVM_SET_USER_MEMORY_REGION: libc::c_ulong = 0x4020_AE46;
const KVM_RUN: libc::c_ulong = 0xAE80;
const KVM_SET_REGS: libc::c_ulong = 0x4090_AE82;
const KVM_GET_SREGS: libc::c_ulong = 0x8138_AE83;
const KVM_SET_SREGS: libc::c_ulong = 0x4138_AE84;
const KVM_EXIT_IO: u32 = 2;
const KVM_EXIT_HLT: u32 = 5;

#[repr(C)]
struct KvmUserspaceMemoryRegion {
    slot: u32,
    flags: u32,
    guest_phys_addr: u64,
    memory_size: u64,
    userspace_addr: u64,
}

#[repr(C)]
#[derive(Default)]
struct KvmRegs {
    gpr: [u64; 16],
    rip: u64,
    rflags: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct KvmSegment {
    base: u64,
    limit: u32,
    selector: u16,
    type_: u8,
    present: u8,
    dpl: u8,
    db: u8,
    s: u8,
    l: u8,
    g: u8,
    avl: u8,
    unusable: u8,
    padding: u8,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct KvmDtable {
    base: u64,
    limit: u16,
    padding: [u16; 3],
}

#[repr(C)]
struct KvmSregs {
    segs: [KvmSegment; 8], // cs ds es fs gs ss tr ldt
    gdt: KvmDtable,
    idt: KvmDtable,
    cr: [u64; 5], // cr0 cr2 cr3 cr4 cr8
    efer: u64,
    apic_base: u64,
    interrupt_bitmap: [u64; 4],
}

const _: () = assert!(std::mem::size_of::<KvmSregs>() == 312);
const _: () = assert!(std::mem::size_of::<KvmRegs>() == 144);

fn ioctl_fd(
    fd: &OwnedFd,
    req: libc::c_ulong,
    arg: libc::c_ulong,
    what: &str,
) -> Result<i32, String> {
    // SAFETY: `req` takes an integer argument (no pointer) for every call site of this helper.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) };
    if r < 0 {
        Err(format!("{what}: {}", std::io::Error::last_os_error()))
    } else {
        Ok(r)
    }
}

/// Runs `mov dx,0x3f8; mov al,0x20; add al,0x0a; out dx,al; hlt` in real mode.
fn run_probe_vm(kvm: std::fs::File, timeout: Duration) -> Result<(), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    // KVM_RUN can hang on a broken nested hypervisor; a thread lets us time out (the
    // thread is then leaked, blocked in the kernel, which beats hanging the caller).
    std::thread::Builder::new()
        .name("kvm-probe".into())
        .spawn(move || {
            let _ = tx.send(probe_vm_inner(kvm));
        })
        .map_err(|e| format!("spawn probe thread: {e}"))?;
    match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(_) => Err(format!(
            "the probe guest made no progress within {timeout:?}"
        )),
    }
}

fn probe_vm_inner(kvm: std::fs::File) -> Result<(), String> {
    let kvm = OwnedFd::from(kvm);
    let version = ioctl_fd(&kvm, KVM_GET_API_VERSION, 0, "KVM_GET_API_VERSION")?;
    if version != 12 {
        return Err(format!("unexpected KVM API version {version}"));
    }
    let vm_fd = ioctl_fd(&kvm, KVM_CREATE_VM, 0, "KVM_CREATE_VM")?;
    // SAFETY: KVM_CREATE_VM returned a fresh fd that nothing else owns.
    let vm = unsafe { OwnedFd::from_raw_fd(vm_fd) };
    const MEM: usize = 0x1000;
    // SAFETY: anonymous private mapping; checked for MAP_FAILED; unmapped by `Mapping`.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MEM,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if mem == libc::MAP_FAILED {
        return Err(format!(
            "mmap guest memory: {}",
            std::io::Error::last_os_error()
        ));
    }
    let _mem_guard = Mapping(mem, MEM);
    let code: [u8; 10] = [0xba, 0xf8, 0x03, 0xb0, 0x20, 0x04, 0x0a, 0xee, 0xf4, 0xf4];
    // SAFETY: `mem` is a writable mapping of MEM >= code.len() bytes.
    unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), mem.cast::<u8>(), code.len()) };
    let region = KvmUserspaceMemoryRegion {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0x1000,
        memory_size: MEM as u64,
        userspace_addr: mem as u64,
    };
    // SAFETY: pointer to a properly laid out kvm_userspace_memory_region that outlives the call.
    if unsafe { libc::ioctl(vm.as_raw_fd(), KVM_SET_USER_MEMORY_REGION, &region) } < 0 {
        return Err(format!(
            "KVM_SET_USER_MEMORY_REGION: {}",
            std::io::Error::last_os_error()
        ));
    }
    let vcpu_fd = ioctl_fd(&vm, KVM_CREATE_VCPU, 0, "KVM_CREATE_VCPU")?;
    // SAFETY: fresh fd from KVM_CREATE_VCPU.
    let vcpu = unsafe { OwnedFd::from_raw_fd(vcpu_fd) };
    let run_size = usize::try_from(ioctl_fd(
        &kvm,
        KVM_GET_VCPU_MMAP_SIZE,
        0,
        "KVM_GET_VCPU_MMAP_SIZE",
    )?)
    .map_err(|e| format!("mmap size: {e}"))?;
    // SAFETY: shared mapping of the vcpu's kvm_run area, size from KVM; checked below.
    let run = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            run_size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            vcpu.as_raw_fd(),
            0,
        )
    };
    if run == libc::MAP_FAILED {
        return Err(format!("mmap kvm_run: {}", std::io::Error::last_os_error()));
    }
    let _run_guard = Mapping(run, run_size);
    // SAFETY: KvmSregs is plain data; zeroed is a valid bit pattern and KVM overwrites it.
    let mut sregs: KvmSregs = unsafe { std::mem::zeroed() };
    // SAFETY: pointer to a 312-byte kvm_sregs, as KVM_GET_SREGS expects.
    if unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_GET_SREGS, &mut sregs) } < 0 {
        return Err(format!(
            "KVM_GET_SREGS: {}",
            std::io::Error::last_os_error()
        ));
    }
    sregs.segs[0].base = 0;
    sregs.segs[0].selector = 0;
    // SAFETY: pointer to a valid kvm_sregs.
    if unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_SET_SREGS, &sregs) } < 0 {
        return Err(format!(
            "KVM_SET_SREGS: {}",
            std::io::Error::last_os_error()
        ));
    }
    let regs = KvmRegs {
        rip: 0x1000,
        rflags: 0x2,
        ..Default::default()
    };
    // SAFETY: pointer to a valid kvm_regs.
    if unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_SET_REGS, &regs) } < 0 {
        return Err(format!("KVM_SET_REGS: {}", std::io::Error::last_os_error()));
    }
    let run_bytes = run.cast::<u8>();
    let mut saw_out = false;
    for _ in 0..16 {
        ioctl_fd(&vcpu, KVM_RUN, 0, "KVM_RUN")?;
        // SAFETY: kvm_run layout: exit_reason u32 at offset 8; the io union at offset 32.
        let reason = unsafe { std::ptr::read_volatile(run_bytes.add(8).cast::<u32>()) };
        match reason {
            KVM_EXIT_IO => {
                // SAFETY: within the kvm_run mapping (io struct, then data at data_offset).
                let (dir, size, port, data) = unsafe {
                    let io = run_bytes.add(32);
                    let data_offset = std::ptr::read_unaligned(io.add(8).cast::<u64>());
                    (
                        *io,
                        *io.add(1),
                        std::ptr::read_unaligned(io.add(2).cast::<u16>()),
                        *run_bytes.add(usize::try_from(data_offset).unwrap_or(0)),
                    )
                };
                if dir != 1 || size != 1 || port != 0x3f8 || data != 0x2a {
                    return Err(format!(
                        "guest did port I/O wrong (dir {dir}, size {size}, port {port:#x}, value {data:#x}); expected out 0x2a to 0x3f8"
                    ));
                }
                saw_out = true;
            }
            KVM_EXIT_HLT if saw_out => return Ok(()),
            KVM_EXIT_HLT => return Err("guest halted before doing its port I/O".into()),
            other => {
                return Err(format!(
                    "unexpected KVM exit reason {other} (17 = internal error / emulation failure)"
                ));
            }
        }
    }
    Err("guest did not halt".into())
}

struct Mapping(*mut libc::c_void, usize);
impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping a mapping this guard exclusively owns.
        unsafe { libc::munmap(self.0, self.1) };
    }
}

/// The host TSC rate, and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TscRate {
    pub khz: u64,
    pub source: TscSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TscSource {
    Sysfs,
    KernelLog,
    Measured,
}

impl std::fmt::Display for TscSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TscSource::Sysfs => "sysfs tsc_freq_khz",
            TscSource::KernelLog => "the kernel log",
            TscSource::Measured => "a measurement against the monotonic clock",
        })
    }
}

/// The host TSC frequency in kHz (cached for the process). Under TCG the guest needs it
/// as `tsc_early_khz=` or ~40% of boots hang calibrating a TSC microvm cannot time.
pub fn host_tsc() -> TscRate {
    static CACHE: OnceLock<TscRate> = OnceLock::new();
    *CACHE.get_or_init(|| {
        if let Some(khz) = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/tsc_freq_khz")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|k| *k > 0)
        {
            return TscRate {
                khz,
                source: TscSource::Sysfs,
            };
        }
        if let Some(khz) = tsc_from_kmsg() {
            return TscRate {
                khz,
                source: TscSource::KernelLog,
            };
        }
        TscRate {
            khz: measure_tsc_khz(),
            source: TscSource::Measured,
        }
    })
}

/// Parses `tsc: Refined TSC clocksource calibration: X MHz` (preferred) or
/// `tsc: Detected X MHz processor` from the kernel log, when /dev/kmsg is readable.
fn tsc_from_kmsg() -> Option<u64> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
        .ok()?;
    let (mut detected, mut refined) = (None, None);
    let mut buf = vec![0u8; 8192];
    // Each read returns one record; EAGAIN at the end. Bounded in case of a log flood.
    for _ in 0..100_000 {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(_) => break,
        };
        let rec = String::from_utf8_lossy(&buf[..n]);
        let msg = rec.split_once(';').map(|(_, m)| m).unwrap_or(&rec);
        if let Some(rest) = msg.strip_prefix("tsc: Refined TSC clocksource calibration: ") {
            refined = parse_mhz(rest);
        } else if let Some(rest) = msg.strip_prefix("tsc: Detected ") {
            detected = parse_mhz(rest);
        }
    }
    refined.or(detected)
}

fn parse_mhz(s: &str) -> Option<u64> {
    let num = s.split_whitespace().next()?;
    let (whole, frac) = num.split_once('.').unwrap_or((num, "0"));
    let whole: u64 = whole.parse().ok()?;
    let frac3: String = frac.chars().chain("000".chars()).take(3).collect();
    let frac: u64 = frac3.parse().ok()?;
    Some(whole * 1000 + frac)
}

/// rdtsc across measured sleeps; the median of five 20 ms windows.
fn measure_tsc_khz() -> u64 {
    let mut samples: Vec<u64> = (0..5)
        .map(|_| {
            let t0 = Instant::now();
            let c0 = rdtsc();
            std::thread::sleep(Duration::from_millis(20));
            let c1 = rdtsc();
            let ns = t0.elapsed().as_nanos().max(1);
            u64::try_from(u128::from(c1.wrapping_sub(c0)) * 1_000_000 / ns).unwrap_or(0)
        })
        .collect();
    samples.sort_unstable();
    samples[samples.len() / 2]
}

#[cfg(target_arch = "x86_64")]
fn rdtsc() -> u64 {
    // SAFETY: rdtsc is available on every x86_64 CPU and has no memory effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
fn rdtsc() -> u64 {
    0
}

/// The `vmm`-related configuration the selection needs.
#[derive(Debug, Clone, Default)]
pub struct VmmConfig {
    pub preference: VmmChoice,
    /// Configured firecracker path; otherwise looked up on PATH.
    pub firecracker_bin: Option<PathBuf>,
    /// Configured qemu-system-x86_64 path; otherwise looked up on PATH.
    pub qemu_bin: Option<PathBuf>,
}

impl VmmConfig {
    /// The selection inputs a user's config asks for (`~/` paths expanded
    /// against `home`): the one mapping from config to VMM selection, used
    /// by the daemon and by `doctor`.
    pub fn from_config(config: &banger_core::Config, home: &Path) -> VmmConfig {
        VmmConfig {
            preference: config.vmm_choice().value,
            firecracker_bin: config.firecracker_bin.as_ref().map(|p| p.expand(home)),
            qemu_bin: config.qemu_bin.as_ref().map(|p| p.expand(home)),
        }
    }
}

/// Which VMM to use, why, and everything `doctor` wants to print.
#[derive(Debug, Clone, Serialize)]
pub struct Selection {
    pub kind: VmmKind,
    /// One human sentence: why this VMM.
    pub reason: String,
    pub firecracker_bin: Option<PathBuf>,
    pub qemu_bin: Option<PathBuf>,
    /// QEMU's accelerator (KVM only where KVM runs guests).
    pub accel: Accel,
    pub kvm: KvmReport,
    pub tsc: TscRate,
}

impl Selection {
    /// Guests run in software (QEMU without KVM): boots are CPU-bound.
    pub fn emulated(&self) -> bool {
        self.kind == VmmKind::Qemu && self.accel == Accel::Tcg
    }
}

pub use banger_core::host::{find_program, is_executable};

fn configured_or_found(configured: &Option<PathBuf>, program: &str) -> Option<PathBuf> {
    match configured {
        Some(p) => is_executable(p).then(|| p.clone()),
        None => find_program(program),
    }
}

/// Decides the VMM. `auto` picks firecracker only when its binary is found AND KVM runs
/// real guests; otherwise qemu. An explicit choice whose binary is missing is an error, as
/// is explicit firecracker on a host whose KVM cannot run guests.
pub fn select_vmm(config: &VmmConfig) -> Result<Selection, VmmError> {
    select_with(config, probe_kvm())
}

fn select_with(config: &VmmConfig, kvm: KvmReport) -> Result<Selection, VmmError> {
    let fc = configured_or_found(&config.firecracker_bin, "firecracker");
    let qemu = configured_or_found(&config.qemu_bin, "qemu-system-x86_64");
    let kvm_problem = kvm
        .findings
        .iter()
        .find(|f| !f.ok)
        .map(|f| format!("{}: {}", f.check, f.detail));
    let accel = if kvm.usable { Accel::Kvm } else { Accel::Tcg };
    let (kind, reason) = match config.preference {
        VmmChoice::Firecracker => {
            if fc.is_none() {
                return Err(VmmError::Unavailable(missing_binary(
                    "firecracker",
                    &config.firecracker_bin,
                )));
            }
            if let Some(p) = &kvm_problem {
                return Err(VmmError::Unavailable(format!(
                    "vmm = \"firecracker\" is configured but /dev/kvm cannot run guests here ({p}); set vmm = \"qemu\" or \"auto\""
                )));
            }
            (
                VmmKind::Firecracker,
                "vmm = \"firecracker\" is configured".to_string(),
            )
        }
        VmmChoice::Qemu => {
            if qemu.is_none() {
                return Err(VmmError::Unavailable(missing_binary(
                    "qemu-system-x86_64",
                    &config.qemu_bin,
                )));
            }
            (
                VmmKind::Qemu,
                format!("vmm = \"qemu\" is configured ({})", accel_words(accel)),
            )
        }
        VmmChoice::Auto => match (&fc, &kvm_problem) {
            (Some(_), None) => (
                VmmKind::Firecracker,
                "auto: firecracker is installed and /dev/kvm runs guests".to_string(),
            ),
            _ if qemu.is_none() => {
                return Err(VmmError::Unavailable(format!(
                    "no usable VMM: {}; and qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)",
                    match (&fc, &kvm_problem) {
                        (None, _) => "firecracker is not installed".to_string(),
                        (_, Some(p)) => format!("KVM cannot run guests ({p})"),
                        _ => "firecracker unusable".to_string(),
                    }
                )));
            }
            (None, _) => (
                VmmKind::Qemu,
                format!(
                    "auto: firecracker is not installed, so qemu ({})",
                    accel_words(accel)
                ),
            ),
            (Some(_), Some(p)) => (
                VmmKind::Qemu,
                format!(
                    "auto: firecracker is installed but /dev/kvm cannot run guests ({p}), so qemu ({})",
                    accel_words(accel)
                ),
            ),
        },
    };
    Ok(Selection {
        kind,
        reason,
        firecracker_bin: fc,
        qemu_bin: qemu,
        accel,
        kvm,
        tsc: host_tsc(),
    })
}

impl Selection {
    /// Everything `banger doctor` should print about the VMM layer: the KVM checks, the
    /// binaries, the TSC rate, and the decision.
    pub fn findings(&self) -> Vec<Finding> {
        let mut out = self.kvm.findings.clone();
        let bin = |check: &str, path: &Option<PathBuf>, needed: bool, fix: &str| match path {
            Some(p) => Finding::ok(check, format!("found at {}", p.display())),
            None if needed => Finding::bad(check, "not found", fix),
            None => Finding {
                check: check.into(),
                ok: true,
                detail: "not found (optional)".into(),
                fix: Some(fix.into()),
            },
        };
        out.push(bin(
            "firecracker",
            &self.firecracker_bin,
            self.kind == VmmKind::Firecracker,
            "install a firecracker release binary on PATH or set its path in the config",
        ));
        out.push(bin(
            "qemu-system-x86_64",
            &self.qemu_bin,
            self.kind == VmmKind::Qemu,
            "apt-get install qemu-system-x86",
        ));
        out.push(Finding::ok(
            "host TSC",
            format!(
                "{} kHz (from {}); passed to TCG guests as tsc_early_khz",
                self.tsc.khz, self.tsc.source
            ),
        ));
        out.push(Finding::ok(
            "vmm",
            format!("{}: {}", self.kind, self.reason),
        ));
        out
    }
}

fn accel_words(a: Accel) -> &'static str {
    match a {
        Accel::Kvm => "KVM acceleration",
        Accel::Tcg => "TCG software emulation",
    }
}

fn missing_binary(program: &str, configured: &Option<PathBuf>) -> String {
    match configured {
        Some(p) => format!(
            "the configured {program} path {} is not an executable file",
            p.display()
        ),
        None => format!("{program} is not on PATH; install it or configure its path"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_mhz_handles_fractions() {
        assert_eq!(parse_mhz("2000.000 MHz processor"), Some(2_000_000));
        assert_eq!(parse_mhz("2494.14 MHz"), Some(2_494_140));
        assert_eq!(parse_mhz("x MHz"), None);
    }

    #[test]
    fn tsc_rate_is_plausible_and_measurement_agrees() {
        let tsc = host_tsc();
        assert!(
            (100_000..10_000_000).contains(&tsc.khz),
            "implausible TSC {tsc:?}"
        );
        let measured = measure_tsc_khz();
        let diff = measured.abs_diff(tsc.khz);
        assert!(
            diff * 50 < tsc.khz,
            "measured {measured} kHz vs {tsc:?} differ by >2%"
        );
    }

    #[test]
    fn cpu_without_vmx_but_with_hypervisor_flag_is_unusable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cpuinfo = dir.path().join("cpuinfo");
        std::fs::write(
            &cpuinfo,
            "processor\t: 0\nflags\t\t: fpu sse2 hypervisor lm\n",
        )
        .expect("write");
        // Any read-write openable file stands in for /dev/kvm for the flag check.
        let dev = dir.path().join("kvm");
        std::fs::write(&dev, "").expect("write");
        let r = probe_kvm_at(&dev, &cpuinfo);
        assert!(!r.usable);
        let f = r
            .findings
            .iter()
            .find(|f| !f.ok)
            .expect("a failing finding");
        assert!(f.detail.contains("nested paravirtual"), "{f:?}");
        assert!(f.fix.as_deref().is_some_and(|x| x.contains("qemu")));
    }

    #[test]
    fn missing_dev_kvm_is_reported_with_a_fix() {
        let r = probe_kvm_at(Path::new("/nonexistent/kvm"), Path::new("/proc/cpuinfo"));
        assert!(!r.usable);
        assert!(r.findings[0].fix.is_some());
    }

    #[test]
    fn auto_prefers_qemu_when_kvm_is_unusable_and_explicit_firecracker_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = dir.path().join("firecracker");
        std::fs::write(&fake, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let qemu = dir.path().join("qemu");
        std::fs::copy(&fake, &qemu).expect("copy");
        let bad_kvm = KvmReport {
            usable: false,
            findings: vec![Finding::bad("cpu virtualization", "no vmx/svm", "use qemu")],
        };
        let good_kvm = KvmReport {
            usable: true,
            findings: vec![Finding::ok("/dev/kvm", "ok")],
        };
        let mut cfg = VmmConfig {
            preference: VmmChoice::Auto,
            firecracker_bin: Some(fake.clone()),
            qemu_bin: Some(qemu.clone()),
        };
        let s = select_with(&cfg, bad_kvm.clone()).expect("select");
        assert_eq!(s.kind, VmmKind::Qemu);
        assert_eq!(s.accel, Accel::Tcg);
        assert!(s.reason.contains("cannot run guests"), "{}", s.reason);
        let s = select_with(&cfg, good_kvm.clone()).expect("select");
        assert_eq!(s.kind, VmmKind::Firecracker);
        cfg.preference = VmmChoice::Firecracker;
        assert!(select_with(&cfg, bad_kvm.clone()).is_err());
        cfg.firecracker_bin = Some(dir.path().join("missing"));
        cfg.preference = VmmChoice::Auto;
        let s = select_with(&cfg, good_kvm).expect("select");
        assert_eq!(s.kind, VmmKind::Qemu);
        assert!(s.reason.contains("not installed"), "{}", s.reason);
        cfg.preference = VmmChoice::Qemu;
        cfg.qemu_bin = Some(dir.path().join("missing"));
        assert!(select_with(&cfg, bad_kvm).is_err());
    }

    #[test]
    fn raw_probe_vm_finishes_within_its_timeout() {
        let Ok(kvm) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
        else {
            eprintln!("SKIP: /dev/kvm cannot be opened");
            return;
        };
        let t0 = Instant::now();
        let r = run_probe_vm(kvm, Duration::from_secs(2));
        eprintln!("raw KVM probe on this host: {r:?} in {:?}", t0.elapsed());
        assert!(t0.elapsed() < Duration::from_secs(4));
    }

    #[test]
    fn this_host_reports_something_consistent() {
        let r = probe_kvm();
        assert_eq!(r.usable, r.findings.iter().all(|f| f.ok));
        eprintln!("{r:#?}");
        if let Ok(sel) = select_vmm(&VmmConfig::default()) {
            let f = sel.findings();
            assert!(
                f.iter()
                    .any(|x| x.check == "vmm" && x.detail.contains(&sel.reason))
            );
            for x in &f {
                eprintln!(
                    "{} {}: {}",
                    if x.ok { "ok  " } else { "FAIL" },
                    x.check,
                    x.detail
                );
            }
        }
    }
}
