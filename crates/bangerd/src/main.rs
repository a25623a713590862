//! `bangerd`, the owner daemon. Runs as the unprivileged owner user (under
//! systemd as `bangerd.service`, or in the foreground via `banger system run`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// banger's owner daemon: keeps state, runs VMs and serves the API socket.
#[derive(Debug, Parser)]
#[command(name = "bangerd", version)]
struct Args {
    /// API socket path (default /run/banger/bangerd.sock).
    #[arg(long, env = banger_core::paths::ENV_SOCKET)]
    socket: Option<PathBuf>,
    /// State directory: database, images, kernels, VM disks (default /var/lib/banger).
    #[arg(long, env = banger_core::paths::ENV_STATE_DIR)]
    state_dir: Option<PathBuf>,
    /// Cache directory: downloads, layer cache (default /var/cache/banger).
    #[arg(long, env = banger_core::paths::ENV_CACHE_DIR)]
    cache_dir: Option<PathBuf>,
    /// Runtime directory: sockets of running VMs (default: the socket's directory).
    #[arg(long, env = banger_core::paths::ENV_RUNTIME_DIR)]
    runtime_dir: Option<PathBuf>,
    /// The root helper's socket (default /run/banger-root/bangerd-root.sock).
    #[arg(long, env = banger_core::paths::ENV_ROOT_SOCKET)]
    root_socket: Option<PathBuf>,
    /// Config file (default $XDG_CONFIG_HOME/banger/config.toml).
    #[arg(long, env = banger_core::paths::ENV_CONFIG)]
    config: Option<PathBuf>,
    /// Start VMs without host networking (no bridge, no root helper).
    #[arg(long)]
    no_network: bool,
    /// Address:port for the .vm DNS server (default: the bridge gateway, [dns] port).
    #[arg(long, value_name = "ADDR:PORT")]
    dns_listen: Option<std::net::SocketAddr>,
}

fn main() -> ExitCode {
    // Everything the daemon and its children (VMMs) create is private to
    // the owner unless a narrower mode is chosen explicitly.
    // SAFETY: umask only changes this process's file-creation mask.
    unsafe { libc::umask(0o077) };
    // Ambient capabilities are per thread and inherited by every child a
    // thread spawns (VMMs, ssh-keygen, mkfs…). Cleared here, before any
    // thread exists, so no thread and no child has any; the permitted and
    // effective sets keep CAP_NET_BIND_SERVICE (the unit's ambient grant)
    // for binding DNS on port 53.
    // SAFETY: prctl with these arguments only changes this (still the
    // only) thread's ambient set.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
    }
    bangerd::logging::init();
    let args = Args::parse();
    let paths = banger_core::Paths::resolve(
        args.state_dir,
        args.cache_dir,
        args.runtime_dir,
        args.socket,
        args.root_socket,
    );
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bangerd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = bangerd::Options {
        no_network: args.no_network,
        dns_listen: args.dns_listen,
    };
    match rt.block_on(bangerd::run(paths, args.config, opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("bangerd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
