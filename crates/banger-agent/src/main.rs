//! `banger-vsock-agent`: runs as root inside every banger guest.
//!
//! Listens on vsock port `AGENT_PORT` (or a Unix socket for tests) and, at
//! start, announces readiness to the host (CID 2, `READY_PORT`). In a guest
//! it also serves the virtio-serial port `AGENT_SERIAL_PORT` when the VM has
//! one (QEMU VMs: see `banger_agent::guest_serial`).
//!
//! As PID 1 (or with `--init`) it is `banger-init` instead: see
//! [`banger_agent::init`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use banger_agent::server::{AgentConfig, guest_hello, serve_connection};
use banger_proto::agent::{AGENT_PORT, AGENT_SERIAL_PORT, GuestMsg, HOST_CID, READY_PORT};
use clap::Parser;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    Vsock { cid: u32, port: u32 },
    Unix(PathBuf),
    None,
}

fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    if s == "none" {
        return Ok(Endpoint::None);
    }
    if let Some(p) = s.strip_prefix("unix:") {
        return Ok(Endpoint::Unix(PathBuf::from(p)));
    }
    if let Some(rest) = s.strip_prefix("vsock:") {
        let parts: Vec<&str> = rest.split(':').collect();
        let num = |x: &str| {
            x.parse::<u32>()
                .map_err(|_| format!("{x:?} in {s:?} is not a number"))
        };
        return match parts.as_slice() {
            [port] => Ok(Endpoint::Vsock {
                cid: u32::MAX, // VMADDR_CID_ANY
                port: num(port)?,
            }),
            [cid, port] => Ok(Endpoint::Vsock {
                cid: num(cid)?,
                port: num(port)?,
            }),
            _ => Err(format!("{s:?}: expected vsock:PORT or vsock:CID:PORT")),
        };
    }
    Err(format!(
        "{s:?}: expected vsock:[CID:]PORT, unix:PATH or none"
    ))
}

/// banger guest agent: readiness, exec, file transfer and clean shutdown over vsock.
#[derive(Debug, Parser)]
#[command(name = "banger-vsock-agent", version)]
struct Args {
    /// Where to serve: vsock:PORT or unix:PATH.
    #[arg(long, default_value_t = format!("vsock:{AGENT_PORT}"), value_parser = parse_endpoint_str)]
    listen: String,
    /// Where to announce readiness: vsock:CID:PORT, unix:PATH or none.
    #[arg(long, default_value_t = format!("vsock:{HOST_CID}:{READY_PORT}"), value_parser = parse_endpoint_str)]
    announce: String,
    /// The virtio-serial port to serve as well: a port name, `none`, or
    /// `auto` (the banger port when listening on vsock, i.e. in a guest).
    #[arg(long, default_value = "auto")]
    serial: String,
    /// Acknowledge shutdown and sync-time without changing the machine
    /// (for tests, or running outside a guest).
    #[arg(long)]
    dry_run: bool,
}

fn parse_endpoint_str(s: &str) -> Result<String, String> {
    parse_endpoint(s).map(|_| s.to_string())
}

/// How long the agent keeps trying to reach the host's readiness socket.
const ANNOUNCE_FOR: Duration = Duration::from_secs(600);

async fn announce_once<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> Result<(), String> {
    let f = banger_proto::agent::Frame::control(&GuestMsg::Hello(guest_hello()))
        .map_err(|e| e.to_string())?;
    s.write_all(&f.encode()).await.map_err(|e| e.to_string())?;
    s.shutdown().await.map_err(|e| e.to_string())
}

async fn announce(to: Endpoint) {
    let start = std::time::Instant::now();
    let mut delay = Duration::from_millis(50);
    loop {
        let res = match &to {
            Endpoint::None => return,
            Endpoint::Unix(p) => match tokio::net::UnixStream::connect(p).await {
                Ok(s) => announce_once(s).await,
                Err(e) => Err(e.to_string()),
            },
            Endpoint::Vsock { cid, port } => {
                match tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(*cid, *port))
                    .await
                {
                    Ok(s) => announce_once(s).await,
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        match res {
            Ok(()) => {
                tracing::info!("announced readiness to {to:?}");
                return;
            }
            Err(e) if start.elapsed() > ANNOUNCE_FOR => {
                tracing::error!("giving up announcing readiness to {to:?}: {e}");
                return;
            }
            Err(e) => {
                tracing::debug!("announcing readiness to {to:?} failed ({e}); retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Whether a vsock peer may use the agent: only the host (CID 2).
fn peer_allowed(cid: u32) -> bool {
    cid == HOST_CID
}

fn bind_vsock(cid: u32, port: u32) -> std::io::Result<tokio_vsock::VsockListener> {
    let addr = tokio_vsock::VsockAddr::new(cid, port);
    match tokio_vsock::VsockListener::bind(addr) {
        Ok(l) => Ok(l),
        Err(e) => {
            // The virtio vsock transport may be a module udev has not
            // loaded yet this early in boot.
            tracing::warn!("binding vsock port {port} failed ({e}); loading the vsock transport");
            let _ = std::process::Command::new("modprobe")
                .arg("vmw_vsock_virtio_transport")
                .status();
            tokio_vsock::VsockListener::bind(addr)
        }
    }
}

/// How long the agent looks for its serial port before deciding the VM has
/// none (Firecracker VMs: vsock only).
const SERIAL_PORT_WAIT: Duration = Duration::from_secs(60);

/// The serial port to serve, from `--serial` and the listen endpoint.
fn serial_port_name(arg: &str, listen: &Endpoint) -> Option<String> {
    match arg {
        "none" => None,
        "auto" => matches!(listen, Endpoint::Vsock { .. }).then(|| AGENT_SERIAL_PORT.to_string()),
        name => Some(name.to_string()),
    }
}

/// Serves the serial port `name` once it shows up; gives up (logged) if the
/// VM has none.
async fn serve_serial(name: String, cfg: Arc<AgentConfig>) {
    let Some(path) = banger_agent::guest_serial::wait_for_port(&name, SERIAL_PORT_WAIT).await
    else {
        tracing::info!("no virtio-serial port {name:?}: serving vsock only");
        return;
    };
    if let Err(e) = banger_agent::guest_serial::serve_port(&path, cfg).await {
        tracing::error!("serial agent channel: {e}");
    }
}

async fn run(args: Args) -> Result<(), String> {
    let cfg = Arc::new(if args.dry_run {
        AgentConfig::harmless()
    } else {
        AgentConfig::guest()
    });
    let listen = parse_endpoint(&args.listen)?;
    let announce_to = parse_endpoint(&args.announce)?;
    let serial = serial_port_name(&args.serial, &listen)
        .map(|name| tokio::spawn(serve_serial(name, cfg.clone())));
    match listen {
        Endpoint::Unix(p) => {
            let _ = std::fs::remove_file(&p);
            let l = tokio::net::UnixListener::bind(&p)
                .map_err(|e| format!("cannot listen on {}: {e}", p.display()))?;
            tracing::info!("listening on unix:{}", p.display());
            tokio::spawn(announce(announce_to));
            loop {
                match l.accept().await {
                    Ok((s, _)) => {
                        tokio::spawn(serve_connection(s, cfg.clone()));
                    }
                    Err(e) => tracing::warn!("accept: {e}"),
                }
            }
        }
        Endpoint::Vsock { cid, port } => {
            let mut attempt = 0;
            let l = loop {
                match bind_vsock(cid, port) {
                    Ok(l) => break l,
                    Err(e) if attempt < 30 => {
                        attempt += 1;
                        tracing::warn!("cannot listen on vsock port {port} yet: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => match serial {
                        // A QEMU VM has no vsock: its channel is the serial port.
                        Some(serial) => {
                            tracing::info!("no vsock ({e}); serving the serial port only");
                            let _ = serial.await;
                            return Err("the serial agent channel stopped".into());
                        }
                        None => return Err(format!("cannot listen on vsock port {port}: {e}")),
                    },
                }
            };
            tracing::info!("listening on vsock port {port}");
            tokio::spawn(announce(announce_to));
            loop {
                match l.accept().await {
                    // Only the host may drive the agent: a guest process
                    // reaching it over vsock loopback (CID 1) would get root.
                    Ok((_, peer)) if !peer_allowed(peer.cid()) => {
                        tracing::warn!("refusing a vsock connection from CID {}", peer.cid());
                    }
                    Ok((s, _)) => {
                        tokio::spawn(serve_connection(s, cfg.clone()));
                    }
                    Err(e) => tracing::warn!("accept: {e}"),
                }
            }
        }
        Endpoint::None => Err("--listen none makes no sense: give vsock:PORT or unix:PATH".into()),
    }
}

fn main() -> std::process::ExitCode {
    // Injected as /sbin/banger-init into images without an init of their own.
    let argv: Vec<String> = std::env::args().collect();
    if banger_agent::init::wanted(&argv) {
        banger_agent::init::run();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BANGER_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("banger-vsock-agent: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("banger-vsock-agent: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            parse_endpoint("vsock:2:10790"),
            Ok(Endpoint::Vsock {
                cid: 2,
                port: 10790
            })
        );
        assert_eq!(
            parse_endpoint("unix:/tmp/a"),
            Ok(Endpoint::Unix("/tmp/a".into()))
        );
        assert!(parse_endpoint("tcp:1").is_err());
        assert!(peer_allowed(2));
        assert!(!peer_allowed(1), "vsock loopback from inside the guest");
        assert!(!peer_allowed(3), "another guest");
        assert!(parse_endpoint("vsock:x").is_err());
    }

    #[test]
    fn serial_port_defaults_to_the_banger_port_only_in_a_guest() {
        let vsock = Endpoint::Vsock { cid: 1, port: 2 };
        let unix = Endpoint::Unix("/tmp/a".into());
        assert_eq!(
            serial_port_name("auto", &vsock).as_deref(),
            Some(AGENT_SERIAL_PORT)
        );
        assert_eq!(serial_port_name("auto", &unix), None);
        assert_eq!(serial_port_name("none", &vsock), None);
        assert_eq!(serial_port_name("p0", &unix).as_deref(), Some("p0"));
    }
}
