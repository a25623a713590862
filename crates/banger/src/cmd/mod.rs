//! One module per command group.

mod config;
mod image;
mod oci;
mod ssh;
mod ssh_config;
mod system;
mod vm;
mod warm;

use std::process::ExitCode;

use anyhow::Context;

use crate::cli::{Cli, Command};
use crate::client::Client;
use crate::output;

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let client = Client::new(banger_core::paths::client_socket(cli.socket.clone()));
    match cli.command {
        Command::Completion(a) => {
            let mut out = std::io::stdout().lock();
            crate::completion::write_script(a.shell, &mut out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(c) => config::run(&client, c),
        Command::Doctor(j) => doctor(&client, j.json),
        Command::SshConfig(a) => ssh_config::run(&client, a),
        Command::Vm(c) => block_on(vm::run(&client, c)),
        Command::Image(c) => block_on(image::run_image(&client, c)),
        Command::Kernel(c) => block_on(image::run_kernel(&client, c)),
        Command::System(c) => system::run(c),
    }
}

pub fn block_on<T, F: std::future::Future<Output = anyhow::Result<T>>>(f: F) -> anyhow::Result<T> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = rt.block_on(f);
    // Forwarding stdin leaves a blocking read that nothing can cancel; a
    // plain drop of the runtime would wait for it (for the user's next key
    // or the pipe's end) after the command already finished.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    result
}

/// Loads the user's config, or fails with the file, line and key named.
pub fn load_config() -> anyhow::Result<banger_core::Config> {
    Ok(banger_core::Config::load_default()?)
}

pub fn home() -> anyhow::Result<std::path::PathBuf> {
    banger_core::host::home_dir().context("cannot find your home directory: set $HOME")
}

/// How long `doctor` waits for the daemon's version answer.
const DOCTOR_DAEMON_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn print_check(c: &banger_proto::Check) -> std::io::Result<()> {
    let mark = match c.status {
        banger_proto::CheckStatus::Ok => output::green("ok  "),
        banger_proto::CheckStatus::Warn => output::yellow("warn"),
        banger_proto::CheckStatus::Fail => output::red("FAIL"),
    };
    outln!("{mark}  {:<18} {}", c.name, c.detail)?;
    if let Some(fix) = &c.fix {
        outln!("      {:<18} fix: {fix}", "")?;
    }
    Ok(())
}

/// `banger doctor`: the host's own checks first (printed at once), then a
/// bounded question to the daemon, so a hung bangerd cannot hide them.
fn doctor(client: &Client, json: bool) -> anyhow::Result<ExitCode> {
    let config = load_config()?;
    let home = home()?;
    let mut report = crate::doctor::run_checks(&config, &home);
    if !json {
        for c in &report.checks {
            print_check(c)?;
        }
    }
    let (daemon, loaded) = block_on(async {
        Ok(match client.version_within(DOCTOR_DAEMON_WAIT).await {
            Ok(v) => (
                Ok(format!(
                    "running (pid {}, version {}) at {}",
                    v.pid,
                    v.daemon_version,
                    client.socket().display()
                )),
                client
                    .get_with_timeout::<banger_proto::DaemonConfig>(
                        "/v1/config",
                        DOCTOR_DAEMON_WAIT,
                    )
                    .await,
            ),
            Err(e) => (
                Err(e.to_string().lines().next().unwrap_or_default().to_string()),
                None,
            ),
        })
    })?;
    report.checks.push(crate::doctor::daemon_check(daemon));
    let daemon_checks = 1 + usize::from(loaded.is_some());
    if let Some(d) = &loaded {
        report.checks.push(crate::doctor::daemon_config_check(d));
    }
    if json {
        output::print_json(&report)?;
    } else {
        for c in &report.checks[report.checks.len() - daemon_checks..] {
            print_check(c)?;
        }
        outln!()?;
        match &report.vmm.driver {
            Some(d) => outln!("VMM: {d} — {}", report.vmm.reason)?,
            None => outln!("VMM: none usable — {}", report.vmm.reason)?,
        }
        if !report.ok {
            outln!(
                "{}",
                output::red("Some required checks failed; see the fixes above.")
            )?;
        }
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
