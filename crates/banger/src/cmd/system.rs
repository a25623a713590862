//! `banger system …`: the systemd services, or the foreground path on hosts
//! without systemd. The work is in banger-system; this maps flags to it.

use std::process::ExitCode;

use anyhow::Context;
use banger_system::{
    HostFacts, HostSystemctl, InstallOptions, Layout, RunOptions, UninstallOptions,
};

use crate::cli::{SystemCommand, SystemRunArgs};
use crate::output;

pub fn run(c: SystemCommand) -> anyhow::Result<ExitCode> {
    let facts = HostFacts::detect();
    let systemctl = HostSystemctl::default();
    match c {
        SystemCommand::Install(a) => {
            let opts = InstallOptions::new(a.owner);
            let report = banger_system::install(&opts, &systemctl, &facts)?;
            if report.upgraded {
                outln!(
                    "upgraded banger {} → {} for owner {}",
                    report.previous_version.as_deref().unwrap_or("?"),
                    report.metadata.version,
                    report.metadata.owner
                )?;
            } else {
                outln!(
                    "installed banger {} for owner {}",
                    report.metadata.version,
                    report.metadata.owner
                )?;
            }
            outln!("both services are running; try `banger doctor`, then `banger vm run`")?;
        }
        SystemCommand::Status(j) => {
            let st = banger_system::status(&Layout::host(), &systemctl, &facts);
            if j.json {
                output::print_json(&st)?;
            } else {
                print!("{}", st.to_text());
            }
            return Ok(if st.healthy() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        SystemCommand::Restart => {
            banger_system::restart(
                &Layout::host(),
                &systemctl,
                &facts,
                std::time::Duration::from_secs(30),
            )?;
            outln!("restarted bangerd-root and bangerd; running VMs were kept")?;
        }
        SystemCommand::Uninstall(a) => {
            let report = banger_system::uninstall(
                &UninstallOptions {
                    layout: Layout::host(),
                    purge: a.purge,
                },
                &systemctl,
                &facts,
            )?;
            for w in &report.warnings {
                eprintln!("warning: {w}");
            }
            for r in &report.removed {
                outln!("removed {}", r.display())?;
            }
            for k in &report.kept {
                outln!("kept {}", k.display())?;
            }
        }
        SystemCommand::Run(a) => return run_foreground(a, &facts),
    }
    Ok(ExitCode::SUCCESS)
}

fn run_foreground(a: SystemRunArgs, facts: &HostFacts) -> anyhow::Result<ExitCode> {
    let paths = match &a.prefix {
        Some(dir) => banger_core::Paths::under(dir),
        None => banger_core::Paths::resolve(None, None, None, None, None),
    };
    let mut opts = RunOptions::new(paths.clone());
    opts.owner = a.owner.or_else(|| std::env::var("SUDO_USER").ok());
    let stop = banger_system::StopFlag::new();
    stop.register_signals()
        .context("cannot install signal handlers")?;
    let fg = banger_system::Foreground::start(&opts, facts, stop)?;
    for n in fg.notes() {
        eprintln!("note: {n}");
    }
    eprintln!(
        "bangerd is serving {} (pid {}); press Ctrl-C to stop.",
        paths.socket.display(),
        fg.daemon_pid()
    );
    if a.prefix.is_some() {
        eprintln!(
            "in another terminal: export BANGER_SOCKET={}",
            paths.socket.display()
        );
    }
    let outcome = fg.wait();
    Ok(if outcome.clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
