//! Shell completion through clap's dynamic engine: the shell calls banger
//! back on each TAB (`COMPLETE=<shell> banger -- <words>`), so live names
//! come from the daemon that is running now.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, anyhow};
use banger_proto::Names;
use clap::CommandFactory;
use clap_complete::engine::CompletionCandidate;

use crate::cli::{Cli, Shell};
use crate::client::Client;

pub const COMPLETE_VAR: &str = "COMPLETE";

/// How long a TAB may wait for the daemon before completing to nothing.
const NAMES_TIMEOUT: Duration = Duration::from_millis(400);

/// Answers a completion request if the shell made one; returns otherwise.
pub fn handle_env() {
    clap_complete::CompleteEnv::with_factory(Cli::command)
        .var(COMPLETE_VAR)
        .complete();
}

/// Writes the registration script for `shell`.
pub fn write_script(shell: Shell, out: &mut dyn Write) -> anyhow::Result<()> {
    let name = match shell {
        Shell::Bash => "bash",
        Shell::Zsh => "zsh",
        Shell::Fish => "fish",
        Shell::Powershell => "powershell",
    };
    let shells = clap_complete::env::Shells::builtins();
    let completer = shells
        .completer(name)
        .ok_or_else(|| anyhow!("no completion support for {name}"))?;
    // Point at the running binary so completion works whether or not banger
    // is on PATH, and follows upgrades of the installed copy.
    let bin = std::env::current_exe()
        .ok()
        .and_then(|p| p.to_str().map(str::to_owned))
        .unwrap_or_else(|| "banger".to_owned());
    completer
        .write_registration(COMPLETE_VAR, "banger", "banger", &bin, out)
        .with_context(|| format!("cannot write the {name} completion script"))?;
    Ok(())
}

fn live_names() -> Names {
    let socket = banger_core::paths::client_socket(None);
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return Names::default();
    };
    rt.block_on(Client::new(socket).get_with_timeout::<Names>("/v1/names", NAMES_TIMEOUT))
        .unwrap_or_default()
}

fn candidates(names: Vec<String>) -> Vec<CompletionCandidate> {
    names.into_iter().map(CompletionCandidate::new).collect()
}

pub fn vm_names() -> Vec<CompletionCandidate> {
    candidates(live_names().vms)
}

pub fn image_names() -> Vec<CompletionCandidate> {
    candidates(live_names().images)
}

pub fn kernel_names() -> Vec<CompletionCandidate> {
    candidates(live_names().kernels)
}
