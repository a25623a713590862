//! `banger vm …`: the dispatcher on top, one leaf module per subcommand
//! group below it.
//!
//! - `request`: the create request built and checked from flags, the `spec:` line
//! - `show`: `vm list`, `vm show`
//! - `ready`: waiting for a guest to come up, reaching its agent
//! - `run`: `vm run` (image, create, workspace upload, command or shell)
//! - `exec`: `vm exec` and the streaming exec `vm run` shares
//! - `ssh`: `vm ssh`
//! - `logs`: `vm logs`
//! - `cp`: `vm cp` (the tar rules themselves live in banger-agent's transfer module)
//!
//! The lifecycle verbs (create, start, stop, restart, delete) are one
//! request each and stay here.

mod cp;
mod exec;
mod logs;
mod ready;
pub(super) mod request;
mod run;
mod show;
mod ssh;

use std::process::ExitCode;

use banger_proto::{CreateVmResponse, VmInfo};

use crate::api_path;
use crate::cli::{VmCommand, VmCreateArgs};
use crate::client::Client;

pub async fn run(client: &Client, c: VmCommand) -> anyhow::Result<ExitCode> {
    match c {
        VmCommand::List(j) => show::list(client, j.json).await?,
        VmCommand::Show(a) => show::show(client, a).await?,
        VmCommand::Create(a) => create(client, a).await?,
        VmCommand::Start(n) => action(client, &n.name, "start").await?,
        VmCommand::Stop(n) => action(client, &n.name, "stop").await?,
        VmCommand::Restart(n) => action(client, &n.name, "restart").await?,
        VmCommand::Delete(n) => {
            let vm: VmInfo = client.delete(&api_path::vm(&n.name)?).await?;
            outln!("deleted {}", vm.name)?;
        }
        VmCommand::Logs(a) => return logs::vm_logs(client, a).await,
        VmCommand::Run(a) => return run::vm_run(client, a).await,
        VmCommand::Ssh(a) => return ssh::vm_ssh(client, a).await,
        VmCommand::Exec(a) => return exec::vm_exec(client, a).await,
        VmCommand::Cp(a) => return cp::vm_cp(client, a).await,
    }
    Ok(ExitCode::SUCCESS)
}

async fn create(client: &Client, a: VmCreateArgs) -> anyhow::Result<()> {
    let mut req = request::create_request(&a.shape, !a.no_start)?;
    let config = super::load_config()?;
    let (_, public) = super::ssh::ensure_identity(&config, &super::home()?)?;
    req.ssh_public_key = Some(public);
    let resp: CreateVmResponse = client.post("/v1/vms", &req).await?;
    if a.json.json {
        crate::output::print_json(&resp)?;
    } else {
        outln!("{}", request::spec_line(&resp.spec))?;
        outln!("created {} ({})", resp.vm.name, resp.vm.state)?;
    }
    Ok(())
}

/// `vm start|stop|restart NAME`: one POST, the new state printed.
async fn action(client: &Client, name: &str, verb: &str) -> anyhow::Result<()> {
    let vm: VmInfo = client.post(&api_path::vm_action(name, verb)?, &()).await?;
    outln!("{} {}", vm.name, vm.state)?;
    Ok(())
}

/// A guest's exit code as the process's own (clamped to 0–255).
fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1))
}
