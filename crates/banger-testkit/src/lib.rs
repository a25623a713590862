//! Shared test harness for banger's crates.
//!
//! - [`test_guest`]: a cached minimal Debian bookworm guest (kernel + initrd + ext4 rootfs)
//!   for real boots through the QEMU driver, built with `mmdebstrap` (needs root).
//! - [`fake`]: types and helpers for the `fake-firecracker` binary (a named fake of
//!   Firecracker's API used to test process handling without KVM).
//! - [`tiny::register_tiny_image`]: a tiny registered image for daemon tests that never boot.
//! - [`netns::TestNetns`]: a throwaway network namespace (removed on drop).
//! - Small helpers: [`is_root`], [`which`], [`tail_file`], [`test_cache_dir`].

pub mod fake;
pub mod guest;
pub mod netns;
pub mod openapi;
pub mod tiny;

pub use guest::{GuestError, TestGuest, extract_vmlinux, test_guest};

use std::path::{Path, PathBuf};

/// The workspace root (two levels above this crate's manifest).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// Where tests cache expensive artefacts (built images, kernels):
/// `$BANGER_TEST_CACHE`, else `<cargo target dir>/banger-test-cache`
/// (`$CARGO_TARGET_DIR`, or found from the running test binary), else
/// `<tmp>/banger-test-cache`. The one home of this rule; production code
/// never uses it.
pub fn test_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BANGER_TEST_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(d).join("banger-test-cache");
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(target) = exe
            .ancestors()
            .find(|a| a.file_name().is_some_and(|n| n == "target"))
    {
        return target.join("banger-test-cache");
    }
    std::env::temp_dir().join("banger-test-cache")
}

/// True when the test process runs as root (euid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Finds `program` the way banger itself does (banger-core's one PATH lookup).
pub use banger_core::host::find_program as which;

/// The last `lines` lines of a (console) log, lossily decoded; a note if it is unreadable.
pub fn tail_file(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}
