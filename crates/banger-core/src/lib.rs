//! banger's core vocabulary: configuration (with provenance for every
//! effective value), the rules for names, and where things live on disk.
//! Pure logic and small file reads only; no daemons, no privileged calls.

pub mod config;
pub mod host;
pub mod limits;
pub mod names;
pub mod paths;
pub mod size;
pub mod ssh;

pub use config::{Config, ConfigError, FileSync, VmmChoice};
pub use paths::Paths;
