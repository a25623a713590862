//! Every call into the host's service manager goes through [`Systemctl`], so
//! install/uninstall logic is tested against a recording fake.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use crate::error::{Result, SystemError};

/// Runs `systemctl <args>` and returns its stdout.
pub trait Systemctl {
    fn run(&self, args: &[&str]) -> Result<String>;
}

/// The real thing: executes `systemctl` with an argv (no shell).
#[derive(Debug, Clone)]
pub struct HostSystemctl {
    pub program: PathBuf,
}

impl Default for HostSystemctl {
    fn default() -> Self {
        HostSystemctl {
            program: PathBuf::from("systemctl"),
        }
    }
}

impl Systemctl for HostSystemctl {
    fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.program)
            .args(args)
            .output()
            .map_err(|e| SystemError::Systemctl {
                args: args.join(" "),
                detail: format!("cannot run {}: {e}", self.program.display()),
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(SystemError::Systemctl {
                args: args.join(" "),
                detail: format!("{} ({})", stderr.trim(), out.status),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A fake that records every call. `show` calls answer from canned output
/// per unit; any call can be made to fail by its first argument.
#[derive(Debug, Default)]
pub struct RecordingSystemctl {
    calls: Mutex<Vec<Vec<String>>>,
    show: Mutex<HashMap<String, String>>,
    failing: Mutex<Vec<String>>,
}

impl RecordingSystemctl {
    pub fn new() -> Self {
        Self::default()
    }

    /// What `systemctl show ... <unit>` answers for `unit`.
    pub fn set_show(&self, unit: &str, output: &str) {
        if let Ok(mut m) = self.show.lock() {
            m.insert(unit.to_owned(), output.to_owned());
        }
    }

    /// Make every call whose verb (first argument) is `verb` fail.
    pub fn fail(&self, verb: &str) {
        if let Ok(mut f) = self.failing.lock() {
            f.push(verb.to_owned());
        }
    }

    pub fn calls(&self) -> Vec<Vec<String>> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// The calls joined with spaces, for compact assertions.
    pub fn call_lines(&self) -> Vec<String> {
        self.calls().iter().map(|c| c.join(" ")).collect()
    }
}

impl Systemctl for RecordingSystemctl {
    fn run(&self, args: &[&str]) -> Result<String> {
        if let Ok(mut c) = self.calls.lock() {
            c.push(args.iter().map(|a| (*a).to_owned()).collect());
        }
        let verb = args.first().copied().unwrap_or_default();
        let fails = self
            .failing
            .lock()
            .map(|f| f.iter().any(|v| v == verb))
            .unwrap_or(false);
        if fails {
            return Err(SystemError::Systemctl {
                args: args.join(" "),
                detail: "recorded failure".into(),
            });
        }
        if verb == "show" {
            let unit = args.last().copied().unwrap_or_default();
            let show = self.show.lock().ok().and_then(|m| m.get(unit).cloned());
            return Ok(show.unwrap_or_default());
        }
        Ok(String::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_systemctl_reports_a_missing_program() {
        let s = HostSystemctl {
            program: "/nonexistent/systemctl".into(),
        };
        let err = s.run(&["daemon-reload"]).expect_err("must fail");
        assert!(err.to_string().contains("systemctl daemon-reload"), "{err}");
    }

    #[test]
    fn host_systemctl_reports_exit_status_and_stderr() {
        // `false` stands in for a systemctl that fails.
        let s = HostSystemctl {
            program: "false".into(),
        };
        let err = s.run(&["restart", "x.service"]).expect_err("must fail");
        assert!(err.to_string().contains("exit status: 1"), "{err}");
    }

    #[test]
    fn recording_fake_records_and_answers() {
        let f = RecordingSystemctl::new();
        f.set_show("a.service", "ActiveState=active\n");
        assert_eq!(
            f.run(&["show", "-p", "ActiveState", "a.service"])
                .expect("show"),
            "ActiveState=active\n"
        );
        f.fail("restart");
        assert!(f.run(&["restart", "a.service"]).is_err());
        assert_eq!(
            f.call_lines(),
            ["show -p ActiveState a.service", "restart a.service"]
        );
    }
}
