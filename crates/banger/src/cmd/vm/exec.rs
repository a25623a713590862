//! `vm exec`, and the streaming exec through the guest agent that `vm run`
//! uses too: stdio forwarded, Ctrl-C and window size passed to the guest.

use std::io::IsTerminal;
use std::process::ExitCode;

use banger_agent::client::{AgentClient, ExecControl};
use banger_proto::agent::ExecRequest;

use super::ready::{agent_for, wait_running};
use crate::cli::VmExecArgs;
use crate::client::Client;
use crate::terminal::{RawTerminal, forward_window_size, terminal_size};

pub async fn vm_exec(client: &Client, a: VmExecArgs) -> anyhow::Result<ExitCode> {
    let vm = wait_running(client, &a.name).await?;
    let agent = agent_for(&vm)?;
    let code = exec_streaming(&agent, ExecRequest::new(a.command), a.tty).await?;
    Ok(super::exit_code(code))
}

/// Runs a command through the agent, streaming stdio; returns the shell-style
/// exit code. Ctrl-C is forwarded to the guest process.
pub(super) async fn exec_streaming(
    agent: &AgentClient,
    mut req: ExecRequest,
    tty: bool,
) -> anyhow::Result<i32> {
    if tty {
        req.tty = Some(terminal_size());
        req.env.push((
            "TERM".into(),
            std::env::var("TERM").unwrap_or_else(|_| "xterm".into()),
        ));
    }
    let (ctl_tx, ctl_rx) = tokio::sync::mpsc::channel(4);
    let raw = (tty && std::io::stdin().is_terminal())
        .then(RawTerminal::enter)
        .flatten();
    let resize = forward_window_size(ctl_tx.clone());
    let forward = tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            if ctl_tx
                .send(ExecControl::Signal(libc::SIGINT))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    // A terminal on stdin is not forwarded to a non-tty command (it would
    // wait for input that never ends); pipes and files are.
    let stdin = (!std::io::stdin().is_terminal() || tty).then(tokio::io::stdin);
    let status = agent
        .exec(&req, stdin, &mut stdout, &mut stderr, Some(ctl_rx))
        .await;
    forward.abort();
    resize.abort();
    drop(raw);
    use tokio::io::AsyncWriteExt;
    let _ = stdout.flush().await;
    let _ = stderr.flush().await;
    Ok(status?.shell_code())
}
