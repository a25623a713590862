//! `bangerd-root`: banger's privileged helper.
//!
//! Runs as root, serves the closed set of operations of
//! `banger_proto::root` on a Unix socket, and nothing else. Hardening, in
//! the order it happens:
//!
//! 1. umask 077, so nothing it creates is readable by others;
//! 2. the socket is bound, then handed to the owner uid with mode 0600 (the
//!    owner daemon must be able to connect; nobody else needs to);
//! 3. every capability except CAP_NET_ADMIN is dropped from the effective,
//!    permitted, inheritable, ambient *and bounding* sets, so neither the
//!    helper nor the `nft`/`resolvectl` it runs can regain them;
//! 4. each connection's peer is checked with SO_PEERCRED: the owner uid and
//!    root are served (root could do all of this anyway, and an admin may
//!    want to `ping` the helper); anyone else is logged and disconnected.
//!
//! Each operation is validated by `banger_net::RootService` and logged with
//! the caller's uid and pid.

use std::io::{BufRead, BufReader, ErrorKind, IsTerminal, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use banger_net::{NetPolicy, RealHostNet, RootService, policy};
use banger_proto::root::{
    DEFAULT_ROOT_SOCKET, ROOT_MAX_FRAME, ROOT_PROTOCOL_VERSION, RootError, RootErrorKind,
    RootRequest, RootResponse, decode_frame, encode_frame,
};
use caps::{CapSet, Capability, CapsHashSet};
use clap::Parser;
use tracing::{error, info, warn};

/// banger's privileged helper: bridge, taps, nftables and resolved wiring for
/// the owner daemon `bangerd`.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Unix socket to listen on.
    #[arg(long, default_value = DEFAULT_ROOT_SOCKET)]
    socket: PathBuf,
    /// The only non-root uid allowed to connect (the user `bangerd` runs as);
    /// taps are created owned by it.
    #[arg(long)]
    owner_uid: u32,
    /// The one bridge this installation uses. The network is the helper's
    /// decision: requests naming another bridge or subnet are refused.
    #[arg(long, default_value = policy::DEFAULT_BRIDGE)]
    bridge: String,
    /// The VM subnet (a private /16../29); the bridge holds its `.1`.
    #[arg(long, default_value = policy::DEFAULT_SUBNET)]
    subnet: String,
    /// Port of banger's DNS server on the gateway, the one host service
    /// guests may reach.
    #[arg(long, default_value_t = policy::DEFAULT_DNS_PORT)]
    dns_port: u16,
    /// Keep VMs from reaching each other (`[network] isolate_vms`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    isolate_vms: bool,
    /// Keep VMs from the private ranges of the host's LAN (`[network] block_lan`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    block_lan: bool,
}

/// The capability the helper keeps. CAP_NET_ADMIN covers netlink link and
/// address changes, TUNSETIFF/TUNSETOWNER/TUNSETPERSIST, nftables and the
/// per-netns `ip_forward` sysctl.
const KEPT: Capability = Capability::CAP_NET_ADMIN;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BANGER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if let Err(e) = run(Args::parse()) {
        error!("{e:#}");
        eprintln!("bangerd-root: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    // SAFETY: umask only changes this process's file-creation mask.
    unsafe { libc::umask(0o077) };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "bangerd-root must run as root (it creates bridges, taps and firewall rules); start it with sudo or as the bangerd-root systemd unit"
        );
    }
    if args.owner_uid == 0 {
        // Allowed for hosts where everything runs as root (containers, CI):
        // the split then buys nothing, so say so instead of refusing.
        tracing::warn!(
            "--owner-uid 0: the owner daemon runs as root, so the privilege split gives no protection; use a normal user's uid where you can"
        );
    }
    let policy = NetPolicy::new(
        &args.bridge,
        &args.subnet,
        args.dns_port,
        args.isolate_vms,
        args.block_lan,
    )
    .context("refusing to start with this network configuration")?;
    let listener = bind(&args.socket, args.owner_uid)?;
    drop_capabilities()?;
    let host = RealHostNet::new().context("setting up host networking")?;
    let service = Arc::new(Mutex::new(RootService::new(
        host,
        args.owner_uid,
        policy.clone(),
    )));
    info!(
        socket = %args.socket.display(),
        owner_uid = args.owner_uid,
        bridge = %policy.bridge,
        subnet = %policy.subnet,
        isolate_vms = policy.isolate_vms,
        block_lan = policy.block_lan,
        protocol = ROOT_PROTOCOL_VERSION,
        "bangerd-root ready"
    );
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let service = Arc::clone(&service);
                let owner = args.owner_uid;
                std::thread::spawn(move || serve(stream, owner, &service));
            }
            Err(e) => warn!("accept failed: {e}"),
        }
    }
    Ok(())
}

fn bind(path: &Path, owner_uid: u32) -> Result<UnixListener> {
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating socket directory {}", dir.display()))?;
        // Root-owned and search-only for others: the owner can reach the
        // socket inside but cannot swap it for another file.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
            .with_context(|| format!("setting permissions of {}", dir.display()))?;
    }
    // The socket is chowned and chmodded by path below: in a directory the
    // owner could write, they could swap it for a link to any file.
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dm = std::fs::metadata(dir).with_context(|| format!("inspecting {}", dir.display()))?;
    let other_writable = dm.mode() & 0o002 != 0 && dm.mode() & 0o1000 == 0;
    if (owner_uid != 0 && dm.uid() == owner_uid && dm.mode() & 0o200 != 0) || other_writable {
        bail!(
            "the socket directory {} can be written by uid {owner_uid} or by anyone; the root \
             helper's socket must live in a directory only root can change (the default {} is)",
            dir.display(),
            DEFAULT_ROOT_SOCKET
        );
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                bail!(
                    "another bangerd-root is already serving {}; stop it first",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale socket {}", path.display()))?;
        }
        Ok(_) => bail!(
            "{} exists and is not a socket; refusing to replace it (choose another --socket)",
            path.display()
        ),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", path.display())),
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::os::unix::fs::lchown(path, Some(owner_uid), None)
        .with_context(|| format!("handing {} to uid {owner_uid}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting mode 0600 on {}", path.display()))?;
    Ok(listener)
}

fn drop_capabilities() -> Result<()> {
    let keep: CapsHashSet = [KEPT].into_iter().collect();
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes
    // away with the permitted set below.
    for cap in caps::all() {
        if cap != KEPT {
            caps::drop(None, CapSet::Bounding, cap)
                .with_context(|| format!("dropping {cap} from the bounding set"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).context("clearing ambient capabilities")?;
    caps::clear(None, CapSet::Inheritable).context("clearing inheritable capabilities")?;
    caps::set(None, CapSet::Effective, &keep).context("setting effective capabilities")?;
    caps::set(None, CapSet::Permitted, &keep).context("setting permitted capabilities")?;
    let eff = caps::read(None, CapSet::Effective).context("reading back capabilities")?;
    if eff != keep {
        bail!("capabilities after dropping are {eff:?}, expected only {KEPT}");
    }
    Ok(())
}

/// `(uid, pid)` of the connected peer, from the kernel (SO_PEERCRED).
fn peer_cred(stream: &UnixStream) -> std::io::Result<(u32, i32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid for writes and len holds cred's size.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((cred.uid, cred.pid))
}

fn serve(stream: UnixStream, owner_uid: u32, service: &Mutex<RootService<RealHostNet>>) {
    let (uid, pid) = match peer_cred(&stream) {
        Ok(c) => c,
        Err(e) => {
            warn!("cannot read peer credentials, dropping connection: {e}");
            return;
        }
    };
    if uid != owner_uid && uid != 0 {
        warn!(
            peer_uid = uid,
            peer_pid = pid,
            owner_uid,
            "refused connection from a uid that is neither the owner nor root"
        );
        return;
    }
    // An idle or stuck client must not hold a thread forever.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => {
            warn!(peer_uid = uid, "cannot clone connection: {e}");
            return;
        }
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = Vec::new();
        let n = match (&mut reader)
            .take(ROOT_MAX_FRAME as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(n) => n,
            Err(e) => {
                warn!(peer_uid = uid, peer_pid = pid, "read failed: {e}");
                return;
            }
        };
        if n == 0 {
            return;
        }
        let (resp, fatal) = answer(&line, uid, pid, service);
        let frame = match encode_frame(&resp) {
            Ok(f) => f,
            Err(e) => {
                error!("cannot encode a response: {e}");
                return;
            }
        };
        if writer.write_all(&frame).is_err() || fatal {
            return;
        }
    }
}

/// The response to one frame, and whether the connection must close after
/// it (a framing error leaves the stream in an unknown state).
fn answer(
    line: &[u8],
    uid: u32,
    pid: i32,
    service: &Mutex<RootService<RealHostNet>>,
) -> (RootResponse, bool) {
    if line.len() > ROOT_MAX_FRAME || !line.ends_with(b"\n") {
        warn!(
            peer_uid = uid,
            peer_pid = pid,
            "oversized or unterminated frame"
        );
        return (
            Err(RootError::new(
                RootErrorKind::BadRequest,
                format!("frame exceeds {ROOT_MAX_FRAME} bytes or lacks its newline"),
            ))
            .into(),
            true,
        );
    }
    let req: RootRequest = match decode_frame(line) {
        Ok(r) => r,
        Err(e) => {
            warn!(peer_uid = uid, peer_pid = pid, "malformed request: {e}");
            return (
                Err(RootError::new(RootErrorKind::BadRequest, e.to_string())).into(),
                true,
            );
        }
    };
    if req.version != ROOT_PROTOCOL_VERSION {
        warn!(
            peer_uid = uid,
            version = req.version,
            "protocol version mismatch"
        );
        return (
            Err(RootError::new(
                RootErrorKind::VersionMismatch,
                format!(
                    "this bangerd-root speaks protocol {ROOT_PROTOCOL_VERSION}, the request is version {}; install matching bangerd and bangerd-root",
                    req.version
                ),
            ))
            .into(),
            true,
        );
    }
    let result = match service.lock() {
        Ok(mut s) => s.handle(&req.op),
        Err(_) => Err(RootError::new(
            RootErrorKind::Failed,
            "an earlier operation panicked; restart bangerd-root",
        )),
    };
    match &result {
        Ok(reply) => {
            info!(peer_uid = uid, peer_pid = pid, op = req.op.name(), args = ?req.op, ?reply, "done")
        }
        Err(e) => {
            warn!(peer_uid = uid, peer_pid = pid, op = req.op.name(), args = ?req.op, kind = ?e.kind, "refused: {e}")
        }
    }
    (result.into(), false)
}
