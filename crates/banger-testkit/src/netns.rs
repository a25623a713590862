//! A throwaway network namespace for tests that create taps, bridges or guests with NICs,
//! so nothing touches the host's own network. Removed on drop, also when a test panics.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// A network namespace `banger-t-<pid>-<n>` created with `ip netns add`.
#[derive(Debug)]
pub struct TestNetns {
    name: String,
}

impl TestNetns {
    /// Creates the namespace (needs root and iproute2) and brings its loopback up.
    pub fn create() -> Result<TestNetns, String> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "banger-t-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let ip = crate::which("ip").ok_or("`ip` not found; apt-get install iproute2")?;
        let out = Command::new(ip)
            .args(["netns", "add", &name])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run ip netns add: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let ns = TestNetns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `argv` inside the namespace (`ip netns exec`), returning its output.
    pub fn exec(&self, argv: &[&str]) -> Result<Output, String> {
        let ip = crate::which("ip").ok_or("`ip` not found")?;
        Command::new(ip)
            .args(["netns", "exec", &self.name])
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run {argv:?} in {}: {e}", self.name))
    }

    /// `ip <args>` inside the namespace; an error carries ip's stderr.
    pub fn ip(&self, args: &[&str]) -> Result<(), String> {
        let mut argv = vec!["ip"];
        argv.extend_from_slice(args);
        let out = self.exec(&argv)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Moves the **calling thread** into the namespace until the guard drops; processes it
    /// spawns meanwhile (a VMM) live there. Use with a current-thread runtime.
    pub fn enter(&self) -> Result<EnteredNetns, String> {
        let original =
            File::open("/proc/thread-self/ns/net").map_err(|e| format!("open own netns: {e}"))?;
        let target = File::open(format!("/run/netns/{}", self.name))
            .map_err(|e| format!("open netns {}: {e}", self.name))?;
        setns(&target)?;
        Ok(EnteredNetns { original })
    }
}

fn setns(f: &File) -> Result<(), String> {
    // SAFETY: setns on a valid namespace fd; affects only the calling thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!("setns: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Returns the thread to its original namespace on drop.
#[derive(Debug)]
pub struct EnteredNetns {
    original: File,
}

impl Drop for EnteredNetns {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.original) {
            eprintln!("testkit: could not return to the original netns: {e}");
        }
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        if let Some(ip) = crate::which("ip") {
            let _ = Command::new(ip)
                .args(["netns", "del", &self.name])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
