//! banger's VMM layer.
//!
//! - [`Vmm`]: start/stop a VM; two drivers, [`FirecrackerDriver`] and [`QemuDriver`],
//!   dispatched through [`Driver`].
//! - [`VmmSpec`]: what a VM needs; [`VmmHandle`]: what the daemon persists to re-adopt a
//!   live VMM after its own restart ([`adopt`]); [`RunningVmm`]: a managed VMM process.
//! - [`select_vmm`]: `vmm = auto|firecracker|qemu` → driver + reason + doctor findings
//!   (KVM usability probe, host TSC rate).
//! - [`clone_disk`], [`create_work_disk`]: per-VM disks.
//! - [`Vmm::snapshot`] / [`Vmm::restore`]: a paused VM's device state, RAM and disks into a
//!   [`Snapshot`] directory, and new VMs from it (their own disks, tap, vsock, console).

pub mod console;
pub mod disk;
pub mod error;
mod fc_http;
pub mod firecracker;
pub mod firecracker_snapshot;
pub mod host;
pub mod process;
pub mod qemu;
mod qemu_snapshot;
pub mod qmp;
pub mod snapshot;
pub mod spawn_record;
pub mod spec;
mod stop;
mod util;

use std::future::Future;
use std::path::Path;
use std::time::Duration;

pub use disk::{
    CloneMethod, DiskFormat, RestoreDiskMethod, clone_disk, create_work_disk, disk_format,
};
pub use error::VmmError;
pub use firecracker::FirecrackerDriver;
pub use host::{
    Accel, Finding, KvmReport, Selection, TscRate, VmmConfig, host_tsc, probe_kvm, select_vmm,
};
pub use process::{
    Adoption, ExitInfo, HelperProcess, ProcessIdentity, RunningVmm, VmmHandle, VmmStatus, adopt,
};
pub use qemu::QemuDriver;
pub use snapshot::{AfterSnapshot, MemoryMode, RestoreReport, Snapshot, SnapshotManifest};
pub use spec::{
    AgentPortSpec, KernelFiles, MacAddr, NetSpec, VmmChoice, VmmKind, VmmSpec, VsockSpec,
};

use serde::Serialize;

/// How a stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopMethod {
    /// The VMM had already exited before we asked.
    AlreadyExited,
    /// The guest shut down after the graceful request (Ctrl-Alt-Del / ACPI powerdown).
    Graceful,
    /// QEMU honoured a QMP `quit` after the guest ignored the powerdown.
    Quit,
    /// We had to SIGKILL the VMM.
    Killed,
}

/// The result of [`Vmm::stop`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StopOutcome {
    pub method: StopMethod,
    /// How the process ended (`None` only if even SIGKILL did not end it within 5 s).
    pub exit: Option<ExitInfo>,
    pub elapsed: Duration,
}

/// A VMM driver.
pub trait Vmm: Send + Sync {
    fn kind(&self) -> VmmKind;

    /// Starts the VM described by `spec`; returns once the VMM runs the guest (the guest
    /// may still be booting). On error nothing is left running.
    fn start(&self, spec: &VmmSpec) -> impl Future<Output = Result<RunningVmm, VmmError>> + Send;

    /// Asks the guest to shut down, waits up to `grace`, then escalates (QEMU: `quit`;
    /// both: SIGKILL). Also stops helper processes and removes control sockets.
    fn stop(
        &self,
        vm: &mut RunningVmm,
        grace: Duration,
    ) -> impl Future<Output = Result<StopOutcome, VmmError>> + Send;

    /// Freezes the guest's vCPUs (the VMM keeps running).
    fn pause(&self, vm: &mut RunningVmm) -> impl Future<Output = Result<(), VmmError>> + Send;

    /// Lets a paused guest run again.
    fn resume(&self, vm: &mut RunningVmm) -> impl Future<Output = Result<(), VmmError>> + Send;

    /// Pauses `vm` (started from `source`) and writes its device state, guest memory and a
    /// copy of its disks into the new directory `dest` (atomically: a failure or crash
    /// leaves no `dest`). Then resumes it or leaves it paused, per `then`; on error it is
    /// resumed.
    fn snapshot(
        &self,
        vm: &mut RunningVmm,
        source: &VmmSpec,
        dest: &Path,
        then: AfterSnapshot,
    ) -> impl Future<Output = Result<Snapshot, VmmError>> + Send;

    /// Starts a new VM from `snapshot`: `spec` names its directory, disks (created here
    /// from the snapshot's; they must not exist), tap, vsock socket and console log, and
    /// must have the snapshot's shape. On error nothing is left running or created.
    fn restore(
        &self,
        snapshot: &Snapshot,
        spec: &VmmSpec,
    ) -> impl Future<Output = Result<Restored, VmmError>> + Send;
}

/// A VM restored from a snapshot, with how long each part took.
#[derive(Debug)]
pub struct Restored {
    pub vm: RunningVmm,
    pub report: RestoreReport,
}

/// Either driver, chosen at runtime (e.g. from a [`Selection`] or a persisted [`VmmKind`]).
#[derive(Debug, Clone)]
pub enum Driver {
    Firecracker(FirecrackerDriver),
    Qemu(QemuDriver),
}

impl Driver {
    /// The driver a [`Selection`] chose, with its binaries, accelerator and TSC rate.
    pub fn from_selection(sel: &Selection) -> Result<Driver, VmmError> {
        Driver::for_kind(sel.kind, sel)
    }

    /// A driver of `kind` (e.g. the kind persisted in a [`VmmHandle`], to stop a VM that
    /// was started before the configured `vmm` changed).
    pub fn for_kind(kind: VmmKind, sel: &Selection) -> Result<Driver, VmmError> {
        match kind {
            VmmKind::Firecracker => {
                let bin = sel.firecracker_bin.clone().ok_or_else(|| {
                    VmmError::Unavailable(
                        "firecracker is not installed; install it or set vmm = \"qemu\"".into(),
                    )
                })?;
                Ok(Driver::Firecracker(FirecrackerDriver::new(bin)))
            }
            VmmKind::Qemu => {
                let bin = sel.qemu_bin.clone().ok_or_else(|| {
                    VmmError::Unavailable(
                        "qemu-system-x86_64 is not installed; apt-get install qemu-system-x86"
                            .into(),
                    )
                })?;
                Ok(Driver::Qemu(QemuDriver::new(bin, sel.accel, sel.tsc.khz)))
            }
        }
    }
}

impl Vmm for Driver {
    fn kind(&self) -> VmmKind {
        match self {
            Driver::Firecracker(d) => d.kind(),
            Driver::Qemu(d) => d.kind(),
        }
    }

    async fn start(&self, spec: &VmmSpec) -> Result<RunningVmm, VmmError> {
        match self {
            Driver::Firecracker(d) => d.start(spec).await,
            Driver::Qemu(d) => d.start(spec).await,
        }
    }

    async fn stop(&self, vm: &mut RunningVmm, grace: Duration) -> Result<StopOutcome, VmmError> {
        match self {
            Driver::Firecracker(d) => d.stop(vm, grace).await,
            Driver::Qemu(d) => d.stop(vm, grace).await,
        }
    }

    async fn pause(&self, vm: &mut RunningVmm) -> Result<(), VmmError> {
        match self {
            Driver::Firecracker(d) => d.pause(vm).await,
            Driver::Qemu(d) => d.pause(vm).await,
        }
    }

    async fn resume(&self, vm: &mut RunningVmm) -> Result<(), VmmError> {
        match self {
            Driver::Firecracker(d) => d.resume(vm).await,
            Driver::Qemu(d) => d.resume(vm).await,
        }
    }

    async fn snapshot(
        &self,
        vm: &mut RunningVmm,
        source: &VmmSpec,
        dest: &Path,
        then: AfterSnapshot,
    ) -> Result<Snapshot, VmmError> {
        match self {
            Driver::Firecracker(d) => d.snapshot(vm, source, dest, then).await,
            Driver::Qemu(d) => d.snapshot(vm, source, dest, then).await,
        }
    }

    async fn restore(&self, snapshot: &Snapshot, spec: &VmmSpec) -> Result<Restored, VmmError> {
        match self {
            Driver::Firecracker(d) => d.restore(snapshot, spec).await,
            Driver::Qemu(d) => d.restore(snapshot, spec).await,
        }
    }
}
