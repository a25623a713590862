//! The configuration the running daemon loaded (`GET /v1/config`) and the
//! outcome of asking it to reload (`POST /v1/config/reload`, or SIGHUP).

use serde::{Deserialize, Serialize};

use crate::Provenance;

/// One effective setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigValue {
    pub key: String,
    /// `null` when unset (see `note` for what that means).
    pub value: serde_json::Value,
    pub source: Provenance,
    /// What an unset value means ("found on PATH"), for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What the daemon runs with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonConfig {
    /// The file it reads (it may not exist: then every value is built in).
    pub file: String,
    pub file_exists: bool,
    /// When the running values were loaded, seconds since the epoch.
    pub loaded_at_unix: u64,
    /// The file's content now differs from what was loaded.
    pub changed_since_load: bool,
    pub values: Vec<ConfigValue>,
    /// The last reload, if one was asked for since the daemon started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reload: Option<ConfigReload>,
}

/// The outcome of a reload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ConfigReload {
    /// The file holds what the daemon already runs with.
    Unchanged,
    /// These keys now have their new values.
    Applied { keys: Vec<String> },
    /// Nothing was applied: these keys are wired into the running host
    /// (bridge, DNS listener, VMM) and take effect only at a restart.
    NeedsRestart { keys: Vec<String> },
    /// Nothing was applied: the file does not parse or validate.
    Invalid { error: String },
}

impl std::fmt::Display for ConfigReload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigReload::Unchanged => write!(f, "unchanged: the file holds the running values"),
            ConfigReload::Applied { keys } => write!(f, "applied: {}", keys.join(", ")),
            ConfigReload::NeedsRestart { keys } => write!(
                f,
                "not applied: {} take effect only when bangerd restarts (banger system restart, or restart `banger system run`)",
                keys.join(", ")
            ),
            ConfigReload::Invalid { error } => {
                write!(f, "not applied: the file is invalid: {error}")
            }
        }
    }
}
