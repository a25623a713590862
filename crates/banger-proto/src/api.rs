//! The owner daemon's public API (CLI ↔ `bangerd`), JSON over HTTP/1.1 on a
//! Unix socket. Every route lives under `/v1`; a breaking change bumps
//! [`API_VERSION`] and the route prefix together.

use serde::{Deserialize, Serialize};

/// Version of the CLI ↔ daemon API. The CLI refuses to talk to a daemon that
/// reports another version instead of misreading its answers.
pub const API_VERSION: u32 = 1;

/// Route prefix matching [`API_VERSION`].
pub const API_PREFIX: &str = "/v1";

/// Answer of `GET /v1/version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub api_version: u32,
    pub daemon_version: String,
    pub pid: u32,
}

/// Machine-readable error kinds. The HTTP status is derived from the kind so
/// the two can never disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request body or a parameter was malformed.
    BadRequest,
    /// The named resource does not exist.
    NotFound,
    /// The resource exists or is in use, or is in the wrong state.
    Conflict,
    /// No such route.
    UnknownRoute,
    /// The capability exists in the CLI but its daemon side has not landed.
    NotImplemented,
    /// Anything else; the message says what.
    Internal,
}

impl ErrorKind {
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::NotFound | ErrorKind::UnknownRoute => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::NotImplemented => 501,
            ErrorKind::Internal => 500,
        }
    }
}

/// Body of every non-2xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// Where an effective value came from (`config show`, `doctor`, `spec:` line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provenance {
    /// Set in the config file.
    Config,
    /// Given on the command line.
    Flag,
    /// Derived from this host (CPU count, RAM).
    HostHeuristic,
    /// Raised for software emulation (QEMU/TCG): a 1-vCPU guest boots
    /// about twice as slowly, slow enough to trip boot-time timeouts.
    TcgHeuristic,
    /// banger's built-in default.
    BuiltIn,
}

impl std::fmt::Display for Provenance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Provenance::Config => "config",
            Provenance::Flag => "flag",
            Provenance::HostHeuristic => "host heuristic",
            Provenance::TcgHeuristic => {
                "host heuristic: at least 2 under QEMU/TCG, 1 vCPU boots twice as slowly"
            }
            Provenance::BuiltIn => "built-in",
        })
    }
}

/// A value together with where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sourced<T> {
    pub value: T,
    pub source: Provenance,
}

impl<T> Sourced<T> {
    pub fn new(value: T, source: Provenance) -> Self {
        Self { value, source }
    }
}

/// The size of a VM as it will be created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub vcpu: Sourced<u32>,
    pub memory_mib: Sourced<u64>,
    pub disk_bytes: Sourced<u64>,
}

/// Persisted lifecycle state of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    Creating,
    Stopped,
    Starting,
    Running,
    Stopping,
    Error,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Creating => "creating",
            VmState::Stopped => "stopped",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Stopping => "stopping",
            VmState::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "creating" => VmState::Creating,
            "stopped" => VmState::Stopped,
            "starting" => VmState::Starting,
            "running" => VmState::Running,
            "stopping" => VmState::Stopping,
            "error" => VmState::Error,
            _ => return None,
        })
    }
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A VM as the daemon reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    pub name: String,
    pub state: VmState,
    pub image: String,
    pub vcpu: u32,
    pub memory_mib: u64,
    pub disk_bytes: u64,
    pub ip: Option<String>,
    pub mac: String,
    /// Which VMM driver runs (or will run) this VM.
    pub vmm: String,
    pub pid: Option<u32>,
    /// Why the VM is in its state (e.g. the exit status of a crashed VMM).
    pub reason: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// `true` exactly when `egress` is none (kept for older clients).
    pub no_egress: bool,
    /// Where the VM's traffic may go beyond the VM subnet.
    #[serde(default)]
    pub egress: crate::EgressPolicy,
    /// Host side of the VM's vsock (Firecracker hybrid vsock protocol): the
    /// CLI talks to the guest agent through it directly.
    #[serde(default)]
    pub vsock_path: Option<String>,
    /// Whether the guest agent has announced readiness since the last start.
    #[serde(default)]
    pub agent_ready: bool,
    /// The warm snapshot this VM was restored from (its disks are overlays on it).
    #[serde(default)]
    pub restored_from: Option<String>,
    /// How that restore made the VM's disks (e.g. `root: qcow2 overlay, work: qcow2
    /// overlay`): O(1) overlays, reflinks or sparse copies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_disks: Option<String>,
    /// Memory the running VMM has written and shares with nobody (`Private_Dirty` of
    /// /proc/PID/smaps_rollup): what a VM restored from a snapshot costs beyond it.
    #[serde(default)]
    pub private_memory_bytes: Option<u64>,
}

/// Body of `POST /v1/vms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CreateVmRequest {
    pub name: Option<String>,
    pub image: Option<String>,
    pub vcpu: Option<u32>,
    pub memory_mib: Option<u64>,
    pub disk_bytes: Option<u64>,
    /// Same as `egress: none` (kept for older clients).
    #[serde(default)]
    pub no_egress: bool,
    /// The VM's egress policy; unset: `[network]` in config.toml decides.
    #[serde(default)]
    pub egress: Option<crate::EgressPolicy>,
    /// Start the VM once created.
    #[serde(default)]
    pub start: bool,
    /// OpenSSH public key to authorize for root in the guest.
    #[serde(default)]
    pub ssh_public_key: Option<String>,
    /// Boot even when the shape has a warm snapshot to restore from.
    #[serde(default)]
    pub cold: bool,
}

/// Answer of `GET /v1/ssh`: what a client needs to ssh into VMs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshInfo {
    /// known_hosts with every VM's pinned host key.
    pub known_hosts: String,
}

/// Answer of `POST /v1/vms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateVmResponse {
    pub vm: VmInfo,
    pub spec: VmSpec,
}

/// Answer of `POST /v1/vms?dry_run=true`: the request checked whole (name
/// free, sizes within limits) and what it would get; nothing is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmPlan {
    pub name: Option<String>,
    pub image: String,
    /// Whether the image is in the store now (else `vm run` fetches or
    /// builds it first).
    pub image_present: bool,
    pub spec: VmSpec,
}

/// A registered guest image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub name: String,
    /// Content address (sha256 of the rootfs) of the image.
    pub digest: String,
    pub kernel: String,
    pub size_bytes: u64,
    /// Where it came from: `build`, `bundle <url>`, `register`, `oci <ref>`.
    pub origin: String,
    pub created_at: i64,
}

/// Body of `POST /v1/images/build`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildImageRequest {
    pub name: String,
    /// `full` or `minimal`.
    pub profile: String,
    pub mirror: Option<String>,
}

/// Body of `POST /v1/images/register`: an existing rootfs.ext4 on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterImageRequest {
    pub name: String,
    /// Absolute path of an ext4 root filesystem the daemon can read.
    pub rootfs: String,
    /// A registered kernel's name.
    pub kernel: String,
}

/// Body of `POST /v1/kernels/register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterKernelRequest {
    pub name: String,
    pub vmlinuz: String,
    pub initrd: Option<String>,
}

/// A registered guest kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelInfo {
    pub name: String,
    pub version: String,
    pub has_vmlinux: bool,
    pub pvh: bool,
    pub created_at: i64,
}

/// Compact names for shell completion: `GET /v1/names`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Names {
    pub vms: Vec<String>,
    pub images: Vec<String>,
    pub kernels: Vec<String>,
}

/// Outcome of one `doctor` check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Ok,
    /// Works, but not the way a user may expect (e.g. software emulation).
    Warn,
    Fail,
}

/// One line of `banger doctor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub status: CheckStatus,
    pub detail: String,
    /// How to fix it; present when status is not ok.
    pub fix: Option<String>,
    /// A failing required check makes `doctor` exit non-zero.
    pub required: bool,
}

/// Body of `POST /v1/images/pull`: a catalog bundle by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullImageRequest {
    /// The catalog entry's name (e.g. debian-bookworm).
    pub name: String,
    /// Absolute path of a catalog file to use instead of the configured or
    /// embedded one.
    #[serde(default)]
    pub catalog: Option<String>,
    /// Local image name; default: `name`.
    #[serde(default)]
    pub local_name: Option<String>,
}

/// Progress of a pull: one line of the `POST /v1/images/pull` stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullProgress {
    /// `download`, `decompress` or `install`.
    pub phase: String,
    /// The bundle file being worked on.
    pub file: String,
    /// Bytes done and total over the whole bundle (compressed).
    pub done: u64,
    pub total: u64,
}

/// One newline-delimited JSON line of the `POST /v1/images/pull` answer:
/// progress lines, then exactly one `image` or `error` line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PullEvent {
    Progress(PullProgress),
    Done {
        image: ImageInfo,
    },
    Failed {
        error: ApiError,
        /// The bundle could not be had (no catalog entry, unpinned entry,
        /// server unreachable) as opposed to refused (tampered, corrupt):
        /// building the image locally instead is the sensible next step.
        #[serde(default)]
        unavailable: bool,
    },
}

/// Body of `POST /v1/images/bundle`: paths are the daemon's, absolute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleImageRequest {
    pub name: String,
    /// ed25519 signing key file (from `banger image keygen`).
    pub key: String,
    /// Directory to create; must not exist yet.
    pub out: String,
}

/// Answer of `POST /v1/images/bundle`: what a catalog entry needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleInfo {
    pub dir: String,
    pub manifest_sha256: String,
    pub public_key: String,
    pub size_bytes: u64,
}

/// Body of `POST /v1/images/ensure`: make image `name` present, the way
/// `vm run` needs it (the catalog's signed bundle first; for the default
/// image, a local build when the catalog cannot supply it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnsureImageRequest {
    pub name: String,
}

/// What the daemon is doing to make an image present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnsureStep {
    /// Pulling the catalog's signed bundle.
    Catalog,
    /// Building the image locally (mmdebstrap; minutes).
    Build,
}

/// How the image came to be present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnsureSource {
    /// It was already here.
    Present,
    /// Pulled from the catalog now.
    Pulled,
    /// Built locally now.
    Built,
}

/// One line of the `POST /v1/images/ensure` answer: steps and pull
/// progress, then exactly one `done` or `failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EnsureEvent {
    /// A step begins; `message` says why, for people.
    Step {
        step: EnsureStep,
        message: String,
    },
    /// Progress of the catalog pull.
    Progress {
        progress: PullProgress,
    },
    Done {
        image: ImageInfo,
        source: EnsureSource,
    },
    Failed {
        error: ApiError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_its_string_form() {
        for s in [
            VmState::Creating,
            VmState::Stopped,
            VmState::Starting,
            VmState::Running,
            VmState::Stopping,
            VmState::Error,
        ] {
            assert_eq!(VmState::parse(s.as_str()), Some(s));
            let json = serde_json::to_string(&s).expect("serialize");
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
        assert_eq!(VmState::parse("bogus"), None);
    }

    #[test]
    fn error_kinds_map_to_client_or_server_statuses() {
        assert_eq!(ErrorKind::BadRequest.http_status(), 400);
        assert_eq!(ErrorKind::UnknownRoute.http_status(), 404);
        assert_eq!(ErrorKind::Conflict.http_status(), 409);
        assert_eq!(ErrorKind::Internal.http_status(), 500);
        let e: ApiError = serde_json::from_str(r#"{"kind":"not_found","message":"no VM named x"}"#)
            .expect("parse");
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert_eq!(e.to_string(), "no VM named x");
    }
}
