//! The owner daemon's process: the API socket, logging and the HTTP routes
//! in front of the core (`banger-daemon`). Handlers parse, call one core
//! method and map its result; the domain logic lives in the core.

pub mod api;
pub mod logging;
pub mod socket;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use banger_core::{Config, Paths};
pub use banger_daemon::{Daemon, DaemonError, Options};

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(paths: Paths, config_path: Option<PathBuf>, opts: Options) -> anyhow::Result<()> {
    let file = config_path.or_else(banger_core::paths::config_file);
    let mut config = match &file {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    // The file the daemon reads, present or not: a reload looks there.
    config.source = file;
    let socket_path = paths.socket.clone();
    let daemon = Arc::new(Daemon::open(paths, config, &opts)?);
    let listener = socket::bind(&socket_path)?;
    // Re-adoption runs beside the server: each VM's lifecycle lock is taken
    // before READY (so a request for it waits), the bounded waits for its
    // guest happen after, all VMs at once; 50 wedged guests cannot hold the
    // start past systemd's timeout.
    let readoption = {
        let mut tasks = daemon.begin_readopt().await?;
        tokio::spawn(async move {
            while let Some(done) = tasks.join_next().await {
                match done {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!("{e:#}"),
                    Err(e) => tracing::error!("re-adoption task failed: {e}"),
                }
            }
            tracing::info!("re-adoption finished");
        })
    };
    // DNS may wait for the root helper (it creates the bridge the server
    // listens on); clients must not wait for that.
    let dns = {
        let daemon = Arc::clone(&daemon);
        let opts = opts.clone();
        tokio::spawn(async move {
            let _handle = banger_daemon::start_dns(&daemon, &opts).await;
            std::future::pending::<()>().await;
        })
    };
    tracing::info!(socket = %socket_path.display(), version = env!("CARGO_PKG_VERSION"), "bangerd listening");
    // Not under systemd this is a no-op; under Type=notify it tells systemd
    // the socket is ready for clients.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let reload = tokio::spawn(reload_on_sighup(Arc::clone(&daemon)));
    let app = api::router(daemon);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("API server failed")?;
    dns.abort();
    reload.abort();
    readoption.abort();
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    let _ = std::fs::remove_file(&socket_path);
    tracing::info!("bangerd stopped");
    Ok(())
}

/// SIGHUP re-reads the config file (see `banger_daemon::settings`).
async fn reload_on_sighup(daemon: Arc<Daemon>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("no SIGHUP handler: reload the config with `banger config reload`");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the config file");
        let d = Arc::clone(&daemon);
        let _ = tokio::task::spawn_blocking(move || d.reload_config()).await;
    }
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
