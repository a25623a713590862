//! A minimal QMP client: one connection, the capabilities handshake, then commands (with
//! arguments) in order. Used by the QEMU driver for start/stop and for snapshots
//! (`migrate-set-capabilities`, `stop`, `migrate`, `migrate-incoming`, `cont`).

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::error::VmmError;

type Lines = tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>;

/// Reads until a reply (skipping the greeting and asynchronous events). `Ok(None)` when
/// QEMU closed the connection.
async fn reply(lines: &mut Lines) -> Result<Option<Value>, String> {
    while let Some(line) = lines.next_line().await.map_err(|e| e.to_string())? {
        let v: Value =
            serde_json::from_str(&line).map_err(|e| format!("bad QMP line {line:?}: {e}"))?;
        if let Some(ret) = v.get("return") {
            return Ok(Some(ret.clone()));
        }
        if let Some(e) = v.get("error") {
            return Err(e
                .get("desc")
                .and_then(Value::as_str)
                .unwrap_or("unknown error")
                .to_string());
        }
    }
    Ok(None)
}

/// Runs one QMP command without arguments and returns its `return` value.
pub async fn qmp_command(
    socket: &Path,
    command: &str,
    timeout: Duration,
) -> Result<Value, VmmError> {
    let mut out = qmp_commands(socket, &[(command, Value::Null)], timeout).await?;
    Ok(out.pop().unwrap_or(Value::Null))
}

/// Runs `commands` (name, arguments; `Value::Null` for none) in order over one connection
/// and returns their `return` values. The first error stops the sequence and names the
/// command that failed. The whole exchange is bounded by `timeout`.
pub async fn qmp_commands(
    socket: &Path,
    commands: &[(&str, Value)],
    timeout: Duration,
) -> Result<Vec<Value>, VmmError> {
    let first = commands.first().map(|c| c.0).unwrap_or("qmp_capabilities");
    let err = |command: &str, detail: String| VmmError::Qmp {
        command: command.to_string(),
        socket: socket.to_path_buf(),
        detail,
    };
    let fut = async {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| err(first, format!("connect: {e}")))?;
        let (r, mut w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        let greeting = lines
            .next_line()
            .await
            .map_err(|e| err(first, format!("read greeting: {e}")))?;
        if !greeting.as_deref().is_some_and(|g| g.contains("QMP")) {
            return Err(err(first, format!("unexpected greeting {greeting:?}")));
        }
        let mut out = Vec::with_capacity(commands.len());
        let all = std::iter::once(("qmp_capabilities", &Value::Null))
            .chain(commands.iter().map(|(c, a)| (*c, a)));
        for (i, (cmd, args)) in all.enumerate() {
            let msg = if args.is_null() {
                json!({ "execute": cmd })
            } else {
                json!({ "execute": cmd, "arguments": args })
            };
            let line = format!("{msg}\n");
            w.write_all(line.as_bytes())
                .await
                .map_err(|e| err(cmd, format!("write: {e}")))?;
            match reply(&mut lines).await.map_err(|e| err(cmd, e))? {
                Some(v) if i > 0 => out.push(v),
                Some(_) => {}
                // `quit` may close the socket before replying.
                None if cmd == "quit" => out.push(Value::Null),
                None => return Err(err(cmd, "QEMU closed the QMP connection".into())),
            }
        }
        Ok(out)
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| err(first, format!("no reply within {timeout:?}")))?
}
