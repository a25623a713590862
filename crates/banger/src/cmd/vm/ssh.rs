//! `vm ssh NAME [-- CMD]`: ssh into a running guest with banger's key and
//! the host key it pinned.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::bail;

use super::ready::{sshd_listening, wait_running};
use crate::cli::VmSshArgs;
use crate::client::Client;
use crate::cmd::ssh;

pub async fn vm_ssh(client: &Client, a: VmSshArgs) -> anyhow::Result<ExitCode> {
    let config = crate::cmd::load_config()?;
    let home = crate::cmd::home()?;
    let (key, _) = ssh::ensure_identity(&config, &home)?;
    let vm = wait_running(client, &a.name).await?;
    if !sshd_listening(&vm).await {
        bail!(
            "VM {} does not accept ssh (no sshd in its image?); use `banger vm exec --tty {} -- /bin/sh`",
            vm.name,
            vm.name
        );
    }
    let ssh_config = ssh::refresh_ssh_config(client, &key).await?;
    let tty = a.command.is_empty() && std::io::stdin().is_terminal();
    let args = ssh::ssh_args(&ssh_config, &vm, tty, &a.command)?;
    let code = ssh::run_ssh(&args)?;
    Ok(super::exit_code(code))
}
