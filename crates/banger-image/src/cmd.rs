//! Running host tools: argv only (never a shell string), stderr captured
//! for the error message.

use std::ffi::OsStr;
use std::process::{Command, Output, Stdio};

use crate::error::{Error, Result};

/// Run `program args…`, returning its output when it exits 0.
pub(crate) fn run<I, S>(program: &str, args: I) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null());
    run_cmd(program, &mut cmd)
}

pub(crate) fn run_cmd(program: &str, cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().map_err(|source| Error::Spawn {
        program: program.to_string(),
        source,
    })?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(Error::Command {
            program: program.to_string(),
            status: out.status.to_string(),
            stderr: tail(&out.stderr, &out.stdout),
        })
    }
}

/// The last part of a tool's output: enough to see why it failed without
/// flooding the error with a whole mmdebstrap log.
pub(crate) fn tail(stderr: &[u8], stdout: &[u8]) -> String {
    let text = if stderr.iter().any(|b| !b.is_ascii_whitespace()) {
        String::from_utf8_lossy(stderr)
    } else {
        String::from_utf8_lossy(stdout)
    };
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(25);
    lines[start..].join("\n")
}
