//! Shared types for the **fake** firecracker (`fake-firecracker` binary).
//!
//! The fake is not Firecracker: it speaks enough of Firecracker's REST API over the
//! `--api-sock` Unix socket for the VMM driver's process handling to be tested without
//! KVM. Its behaviour is steered by a JSON file that the test writes next to the API
//! socket (`fake-firecracker.json`), because the driver spawns it with a fixed argv and
//! environment variables would race between tests running in parallel threads.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name (in the API socket's directory) the fake reads its behaviour from.
pub const FAKE_CONFIG_FILE: &str = "fake-firecracker.json";
/// File name (in the API socket's directory) where the fake records every request.
pub const FAKE_CALLS_FILE: &str = "fake-firecracker-calls.json";

/// How the fake firecracker should misbehave. The default is a well-behaved instance.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct FakeFirecrackerConfig {
    /// Never create the API socket (to test the driver's bounded socket wait).
    pub never_create_socket: bool,
    /// Delay before creating the socket.
    pub socket_delay_ms: u64,
    /// Requests to reject, keyed by `"<METHOD> <path>"`, value = the `fault_message`.
    pub reject: std::collections::BTreeMap<String, String>,
    /// Ignore `SendCtrlAltDel` (the guest "hangs" on shutdown) and SIGTERM.
    pub ignore_ctrl_alt_del: bool,
    /// After `InstanceStart`, exit with this status (a "crash") after `exit_delay_ms`.
    pub exit_after_start: Option<i32>,
    pub exit_delay_ms: u64,
    /// After `InstanceStart`, write this many bytes to the serial console
    /// (stdout) as fast as possible, then `fake-firecracker: flood done`.
    pub flood_console_bytes: u64,
}

/// One request the fake received.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecordedCall {
    pub method: String,
    pub path: String,
    /// The JSON body (`null` when there was none or it was not JSON).
    pub body: serde_json::Value,
    /// HTTP status the fake answered with.
    pub status: u16,
}

/// Writes the fake's behaviour file into `dir` (the VM dir, where the API socket lives).
pub fn write_fake_config(dir: &Path, config: &FakeFirecrackerConfig) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(config).map_err(std::io::Error::other)?;
    std::fs::write(dir.join(FAKE_CONFIG_FILE), text)
}

/// Reads the calls the fake recorded in `dir` (empty when it recorded none).
pub fn read_fake_calls(dir: &Path) -> std::io::Result<Vec<RecordedCall>> {
    match std::fs::read(dir.join(FAKE_CALLS_FILE)) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(std::io::Error::other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Path of the `fake-firecracker` binary.
///
/// Inside this crate's own integration tests cargo provides it; other crates' tests find
/// it beside their test executable's `target/<profile>/` dir, so run
/// `cargo build -p banger-testkit --bin fake-firecracker` before them (the README's test
/// command does).
pub fn fake_firecracker_bin() -> Result<PathBuf, String> {
    if let Some(p) = option_env!("CARGO_BIN_EXE_fake-firecracker") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    // target/<profile>/deps/<test-binary> -> target/<profile>/fake-firecracker
    let mut candidates = Vec::new();
    if let Some(deps) = exe.parent() {
        candidates.push(deps.join("fake-firecracker"));
        if let Some(profile) = deps.parent() {
            candidates.push(profile.join("fake-firecracker"));
        }
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            format!(
                "fake-firecracker binary not found (looked at {candidates:?}); \
                 run `cargo build -p banger-testkit --bin fake-firecracker` first"
            )
        })
}
