//! `banger config show` and `banger config reload`.
//!
//! `show` reports what the running daemon uses (its own answer, with when
//! it loaded the file and whether the file changed since), and falls back
//! to reading the file when no daemon answers or with `--file`.

use std::process::ExitCode;
use std::time::Duration;

use banger_core::config::HostFacts;
use banger_proto::{ConfigReload, ConfigValue, DaemonConfig};

use crate::cli::ConfigCommand;
use crate::client::Client;
use crate::output;

/// How long `config show` waits for the daemon before reading the file.
const DAEMON_WAIT: Duration = Duration::from_secs(3);

pub fn run(client: &Client, c: ConfigCommand) -> anyhow::Result<ExitCode> {
    match c {
        ConfigCommand::Show(a) => {
            let running = if a.file {
                None
            } else {
                super::block_on(async {
                    Ok(client
                        .get_with_timeout::<DaemonConfig>("/v1/config", DAEMON_WAIT)
                        .await)
                })?
            };
            match running {
                Some(d) => show_running(&d, a.json.json),
                None => show_file(a.json.json, !a.file),
            }
        }
        ConfigCommand::Reload => {
            let r: ConfigReload =
                super::block_on(async { Ok(client.post("/v1/config/reload", &()).await?) })?;
            outln!("{r}")?;
            Ok(match r {
                ConfigReload::Unchanged | ConfigReload::Applied { .. } => ExitCode::SUCCESS,
                _ => ExitCode::FAILURE,
            })
        }
    }
}

fn table(rows: &[ConfigValue]) -> std::io::Result<()> {
    output::print_table(
        &["KEY", "VALUE", "SOURCE"],
        &rows
            .iter()
            .map(|r| {
                let v = match (&r.value, &r.note) {
                    (serde_json::Value::Null, Some(note)) => format!("({note})"),
                    (serde_json::Value::String(s), _) => s.clone(),
                    (other, _) => other.to_string(),
                };
                vec![r.key.clone(), v, r.source.to_string()]
            })
            .collect::<Vec<_>>(),
    )
}

fn show_running(d: &DaemonConfig, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        let mut v = serde_json::to_value(d)?;
        v["from"] = "daemon".into();
        output::print_json(&v)?;
        return Ok(ExitCode::SUCCESS);
    }
    let present = if d.file_exists { "" } else { " (not present)" };
    outln!(
        "# bangerd's running config, loaded from {}{present} {}",
        d.file,
        ago(d.loaded_at_unix)
    )?;
    if d.changed_since_load {
        outln!(
            "# {}",
            output::yellow(
                "the file changed since: `banger config reload` applies it (or says what needs a restart)"
            )
        )?;
    }
    if let Some(r) = &d.last_reload {
        outln!("# last reload: {r}")?;
    }
    table(&d.values)?;
    Ok(ExitCode::SUCCESS)
}

/// "3 min ago" style, from a unix time.
fn ago(unix: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let s = now.saturating_sub(unix);
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86399 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86400),
    }
}

fn show_file(json: bool, daemon_asked: bool) -> anyhow::Result<ExitCode> {
    let config = super::load_config()?;
    let rows: Vec<ConfigValue> = config
        .show(HostFacts::probe(), &super::home()?)
        .into_iter()
        .map(Into::into)
        .collect();
    let file = config
        .source
        .as_ref()
        .map(|p| p.display().to_string())
        .or_else(|| {
            banger_core::paths::config_file().map(|p| format!("{} (not present)", p.display()))
        })
        .unwrap_or_else(|| "(none)".into());
    if json {
        output::print_json(&serde_json::json!({ "from": "file", "file": file, "values": rows }))?;
    } else {
        outln!("# config file: {file}")?;
        if daemon_asked {
            outln!(
                "# bangerd did not answer: these are the file's values, not a running daemon's"
            )?;
        }
        table(&rows)?;
    }
    Ok(ExitCode::SUCCESS)
}
