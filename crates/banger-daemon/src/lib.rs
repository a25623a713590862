//! banger's daemon core: the VM lifecycle, the image store, OCI pulls and
//! the guest disks, as a library with no HTTP in it. `bangerd` serves it
//! over the API socket (its handlers parse, call one method here and map
//! the [`DaemonError`]); tests drive it in-process.

pub mod error;
pub mod file_sync;
pub mod guest;
pub mod images;
pub mod oci;
pub mod vm_dir;
pub mod vms;

pub use error::{DaemonError, DaemonResult};
pub use vm_dir::VmDir;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use banger_core::{Config, Paths};
use banger_store::Store;

/// Everything a request handler may need.
pub struct Daemon {
    pub paths: Paths,
    pub config: Config,
    pub store: Store,
    /// Which VMM drives guests on this host (or why none can).
    pub selection: Result<banger_vmm::Selection, String>,
    /// The root helper, when VMs get host networking.
    pub network: Option<banger_net::RootClient>,
    /// Names served by the `.vm` DNS zone.
    pub dns_names: banger_dns::NameTable,
    pub slots: vms::Slots,
}

/// How the daemon runs, beyond its paths and config.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Start VMs without a NIC (no bridge, no root helper): for hosts where
    /// the helper cannot run. The guest agent still works over vsock.
    pub no_network: bool,
    /// Where the `.vm` DNS server listens; default: the bridge gateway on
    /// `[dns] port`.
    pub dns_listen: Option<std::net::SocketAddr>,
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
    pub fn open(paths: Paths, config: Config, opts: &Options) -> anyhow::Result<Daemon> {
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
        // A pull or build killed mid-way leaves `.tmp-banger-*` dirs, never
        // a half image: remove them (resumable `.part` downloads stay).
        for d in [
            paths.images_dir(),
            paths.kernels_dir(),
            paths.downloads_dir(),
        ] {
            for p in banger_image::store::cleanup_partial(&d)? {
                tracing::info!(path = %p.display(), "removed an interrupted pull or build");
            }
        }
        // Half-downloaded OCI blobs are temp files, never trusted as blobs.
        let layers = banger_oci::LayerCache::new(paths.cache_dir.join(oci::LAYER_CACHE_SUBDIR));
        for p in layers.cleanup_partial().unwrap_or_default() {
            tracing::info!(path = %p.display(), "removed an interrupted layer download");
        }
        let store = Store::open(&paths.db())?;
        let home = banger_core::host::home_dir().unwrap_or_default();
        let vmm_config = banger_vmm::VmmConfig {
            preference: match config.vmm_choice().value {
                banger_core::VmmChoice::Auto => banger_vmm::VmmPreference::Auto,
                banger_core::VmmChoice::Firecracker => banger_vmm::VmmPreference::Firecracker,
                banger_core::VmmChoice::Qemu => banger_vmm::VmmPreference::Qemu,
            },
            firecracker_bin: config.firecracker_bin.as_ref().map(|p| p.expand(&home)),
            qemu_bin: config.qemu_bin.as_ref().map(|p| p.expand(&home)),
            vhost_vsock_bin: None,
        };
        let selection = banger_vmm::select_vmm(&vmm_config).map_err(|e| e.to_string());
        match &selection {
            Ok(s) => tracing::info!(vmm = %s.kind, "{}", s.reason),
            Err(e) => tracing::warn!("no usable VMM: {e}"),
        }
        let network =
            (!opts.no_network).then(|| banger_net::RootClient::new(paths.root_socket.clone()));
        let daemon = Daemon {
            paths,
            config,
            store,
            selection,
            network,
            dns_names: banger_dns::NameTable::new(),
            slots: vms::Slots::default(),
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
                self.abandon(&vm);
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

/// Starts the `.vm` DNS server. A failure is logged, not fatal: VMs still
/// work by address and `banger vm ssh`; `doctor` reports DNS separately.
pub async fn start_dns(daemon: &Arc<Daemon>, opts: &Options) -> Option<banger_dns::DnsHandle> {
    for vm in daemon.store.list_vms().ok()? {
        if vm.state == banger_proto::VmState::Running
            && let Some(ip) = vm.ip.as_deref().and_then(|s| s.parse().ok())
        {
            let _ = daemon.dns_names.set(&vm.name, ip);
        }
    }
    let addr = match opts.dns_listen {
        Some(a) => a,
        None => {
            let root = daemon.network.as_ref()?;
            let subnet = daemon.config.vm_subnet().value;
            // The gateway address exists only once the bridge does. Under
            // systemd the helper may still be starting: retry briefly.
            let op = banger_proto::root::RootOp::EnsureBridge {
                bridge: daemon.config.bridge_name().value,
                subnet: subnet.to_string(),
            };
            let mut tries = 0;
            loop {
                match root.call(op.clone()).await {
                    Ok(_) => break,
                    Err(e) if tries >= 20 => {
                        tracing::warn!("no .vm DNS: cannot prepare the bridge: {e}");
                        return None;
                    }
                    Err(_) => {
                        tries += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                    }
                }
            }
            let ip = daemon.config.dns_listen.unwrap_or_else(|| subnet.gateway());
            std::net::SocketAddr::from((ip, daemon.config.dns_port().value))
        }
    };
    let server = match banger_dns::DnsServer::bind(addr, daemon.dns_names.clone()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("no .vm DNS: cannot listen on {addr}: {e}");
            return None;
        }
    };
    // Port 53 needed CAP_NET_BIND_SERVICE (ambient, from the unit); the
    // socket is bound now, so VMMs and tools we spawn must not inherit it.
    // SAFETY: prctl with these arguments only changes this process's
    // ambient capability set.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
    }
    match server.spawn(2) {
        Ok(h) => {
            tracing::info!(%addr, "serving the .vm zone");
            if opts.dns_listen.is_none() {
                wire_resolved(daemon, addr).await;
            }
            Some(h)
        }
        Err(e) => {
            tracing::warn!("no .vm DNS: {e}");
            None
        }
    }
}

/// On systemd-resolved hosts, route `.vm` queries to our server through the
/// bridge link (the root helper runs resolvectl). Elsewhere docs/dns-routing.md
/// has manual recipes.
async fn wire_resolved(daemon: &Arc<Daemon>, addr: std::net::SocketAddr) {
    if daemon.config.dns_auto_resolved == Some(false) {
        tracing::info!("[dns] auto_resolved = false: not wiring systemd-resolved");
        return;
    }
    if !std::path::Path::new("/run/systemd/resolve").is_dir() {
        tracing::info!(
            "systemd-resolved is not running: .vm names resolve only through {addr} (see docs/dns-routing.md)"
        );
        return;
    }
    let Some(root) = daemon.network.as_ref() else {
        return;
    };
    let dns_addr = if addr.port() == 53 {
        addr.ip().to_string()
    } else {
        addr.to_string()
    };
    match root
        .call(banger_proto::root::RootOp::WireResolved {
            bridge: daemon.config.bridge_name().value,
            dns_addr,
        })
        .await
    {
        Ok(_) => tracing::info!("systemd-resolved routes .vm to {addr}"),
        Err(e) => tracing::warn!("cannot wire systemd-resolved for .vm: {e}"),
    }
}
