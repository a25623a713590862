//! The owner daemon as a library, so tests can run it in-process or as a
//! real child process on a temp socket.

pub mod api;
pub mod logging;
pub mod socket;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use banger_core::{Config, Paths};
use banger_store::Store;

/// Everything a request handler may need.
pub struct Daemon {
    pub paths: Paths,
    pub config: Config,
    pub store: Store,
}

/// Creates `dir` (and parents) and narrows it to 0700: the daemon's state is
/// the owner's alone.
pub fn ensure_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot set permissions on {}", dir.display()))?;
    Ok(())
}

impl Daemon {
    /// Opens state, repairs what an interrupted previous run left behind.
    pub fn open(paths: Paths, config: Config) -> anyhow::Result<Daemon> {
        for d in [&paths.state_dir, &paths.cache_dir, &paths.runtime_dir] {
            ensure_private_dir(d)?;
        }
        for d in [
            paths.vms_dir(),
            paths.images_dir(),
            paths.kernels_dir(),
            paths.tmp_dir(),
        ] {
            ensure_private_dir(&d)?;
        }
        let store = Store::open(&paths.db())?;
        let daemon = Daemon {
            paths,
            config,
            store,
        };
        daemon.recover()?;
        Ok(daemon)
    }

    /// Work that a kill -9 interrupted: a VM still `creating` never finished
    /// and is removed with its files; scratch space is emptied.
    fn recover(&self) -> anyhow::Result<()> {
        for vm in self.store.list_vms()? {
            if vm.state == banger_proto::VmState::Creating {
                tracing::warn!(vm = %vm.name, "removing VM whose creation was interrupted");
                let dir = self.paths.vm_dir(&vm.name);
                if dir.exists() {
                    std::fs::remove_dir_all(&dir)
                        .with_context(|| format!("cannot remove {}", dir.display()))?;
                }
                self.store.delete_vm(&vm.name)?;
            }
        }
        let tmp = self.paths.tmp_dir();
        for entry in std::fs::read_dir(&tmp)? {
            let p = entry?.path();
            tracing::info!(path = %p.display(), "removing leftover temporary file");
            let r = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            r.with_context(|| format!("cannot remove {}", p.display()))?;
        }
        Ok(())
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(paths: Paths, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = match &config_path {
        Some(p) => Config::load(p)?,
        None => Config::load_default()?,
    };
    let socket_path = paths.socket.clone();
    let daemon = Arc::new(Daemon::open(paths, config)?);
    let listener = socket::bind(&socket_path)?;
    tracing::info!(socket = %socket_path.display(), version = env!("CARGO_PKG_VERSION"), "bangerd listening");
    // Not under systemd this is a no-op; under Type=notify it tells systemd
    // the socket is ready for clients.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let app = api::router(daemon);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("API server failed")?;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    let _ = std::fs::remove_file(&socket_path);
    tracing::info!("bangerd stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the daemon still serves; it just cannot
        // shut down gracefully.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}
