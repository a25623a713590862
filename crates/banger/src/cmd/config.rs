//! `banger config show`.

use std::process::ExitCode;

use banger_core::config::HostFacts;

use crate::cli::ConfigCommand;
use crate::output;

pub fn run(c: ConfigCommand) -> anyhow::Result<ExitCode> {
    let ConfigCommand::Show(j) = c;
    let config = super::load_config()?;
    let rows = config.show(HostFacts::probe(), &super::home()?);
    let file = config
        .source
        .as_ref()
        .map(|p| p.display().to_string())
        .or_else(|| {
            banger_core::paths::config_file().map(|p| format!("{} (not present)", p.display()))
        })
        .unwrap_or_else(|| "(none)".into());
    if j.json {
        output::print_json(&serde_json::json!({ "file": file, "values": rows }))?;
    } else {
        outln!("# config file: {file}")?;
        output::print_table(
            &["KEY", "VALUE", "SOURCE"],
            &rows
                .iter()
                .map(|r| {
                    let v = match (&r.value, r.note) {
                        (serde_json::Value::Null, Some(note)) => format!("({note})"),
                        (serde_json::Value::String(s), _) => s.clone(),
                        (other, _) => other.to_string(),
                    };
                    vec![r.key.clone(), v, r.source.to_string()]
                })
                .collect::<Vec<_>>(),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
