//! `vm logs NAME [--follow]`: the guest's console log, from the daemon.

use std::process::ExitCode;

use crate::api_path;
use crate::cli::VmLogsArgs;
use crate::client::Client;

pub async fn vm_logs(client: &Client, a: VmLogsArgs) -> anyhow::Result<ExitCode> {
    use tokio::io::AsyncWriteExt;
    let mut out = tokio::io::stdout();
    if !a.follow {
        let bytes = client
            .get_raw(&api_path::vm_action(&a.name, "logs")?)
            .await?;
        out.write_all(&bytes).await?;
        out.flush().await?;
        return Ok(ExitCode::SUCCESS);
    }
    client
        .stream(
            &format!("{}?follow=true", api_path::vm_action(&a.name, "logs")?),
            &mut out,
        )
        .await?;
    Ok(ExitCode::SUCCESS)
}
