//! How banger lives on a host: two systemd services (the unprivileged owner
//! daemon `bangerd` and the narrow root helper `bangerd-root`), installed,
//! inspected, restarted and removed by `banger system ...`, plus the
//! foreground path (`banger system run`) for hosts without systemd.
//!
//! Every host-touching step goes through a [`Systemctl`] and a root prefix
//! ([`Layout`]), and the privilege checks read injectable [`HostFacts`], so
//! the whole flow is tested in a temp dir with the systemctl calls recorded.
//! The privilege model is written down in docs/privilege-model.md.

mod error;
mod foreground;
mod fsutil;
mod helper_net;
mod install;
mod layout;
mod metadata;
mod owned_dir;
mod sockets;
mod systemctl;
mod units;

pub use error::{Result, SystemError};
pub use foreground::{
    ChildOutcome, Foreground, RunOptions, RunOutcome, StopFlag, StopReason, run_foreground,
};
pub use helper_net::{helper_net_args, owner_config};
pub use install::{
    BINARY_MODE, DIR_MODE, InstallOptions, InstallReport, ServiceStatus, SystemStatus, UNIT_MODE,
    UninstallOptions, UninstallReport, install, restart, status, uninstall,
};
pub use layout::{
    BIN_DIR, BINARIES, CACHE_DIR, DAEMON_UNIT, ETC_DIR, HostFacts, LIB_DIR, Layout, METADATA_FILE,
    Owner, ROOT_RUNTIME_DIR, ROOT_SOCKET, ROOT_UNIT, RUNTIME_DIR, SOCKET, STATE_DIR, UNIT_DIR,
    installed_binary, kvm_group,
};
pub use metadata::{InstallMetadata, InstalledPaths, METADATA_MODE};
pub use sockets::SocketProbe;
pub use systemctl::{HostSystemctl, RecordingSystemctl, Systemctl};
pub use units::{UnitParams, render_daemon_unit, render_root_unit};
