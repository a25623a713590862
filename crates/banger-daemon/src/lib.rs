//! banger's daemon core: the VM lifecycle, the image store, OCI pulls and
//! the guest disks, as a library with no HTTP in it. `bangerd` serves it
//! over the API socket (its handlers parse, call one method here and map
//! the [`DaemonError`]); tests drive it in-process.

pub mod dns;
pub mod error;
pub mod file_sync;
pub mod guest;
pub mod host_net;
pub mod identity;
pub mod images;
pub mod oci;
pub mod readiness;
pub mod settings;
pub mod state_lock;
pub mod vm_dir;
pub mod vms;
pub mod warm;
pub mod warm_image;

pub use dns::start_dns;
pub use error::{DaemonError, DaemonResult};
pub use host_net::{HostNetwork, NoNetwork, RootNetwork};
pub use vm_dir::VmDir;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use banger_core::{Config, Paths};
use banger_store::Store;

/// Everything a request handler may need.
pub struct Daemon {
    pub paths: Paths,
    /// The configuration in force (reloadable; see [`settings`]).
    pub settings: settings::Settings,
    pub store: Store,
    /// Which VMM drives guests on this host (or why none can).
    pub selection: Result<banger_vmm::Selection, String>,
    /// Host networking: the root helper, none, or a test's fake.
    pub network: Arc<dyn HostNetwork>,
    /// How long a graceful stop may take before the VMM is forced.
    pub stop_grace: std::time::Duration,
    /// Names served by the `.vm` DNS zone.
    pub dns_names: banger_dns::NameTable,
    /// Guests whose DNS questions outside `.vm` are forwarded upstream
    /// (those with egress allowed).
    pub dns_clients: banger_dns::ForwardClients,
    /// The nameserver guests are given (see `banger_dns::forward`).
    pub guest_dns: Option<std::net::Ipv4Addr>,
    pub slots: vms::Slots,
    /// Warm snapshots being made.
    pub warm: warm::WarmState,
    /// This daemon's hold on its state directory.
    pub state_lock: state_lock::StateLock,
}

/// What the daemon is wired to on this host: the seams tests replace.
pub struct Wiring {
    /// Which VMM drives guests (or why none can).
    pub selection: Result<banger_vmm::Selection, String>,
    pub network: Arc<dyn HostNetwork>,
    pub stop_grace: std::time::Duration,
    /// The nameserver guests are given: banger's own server where guests
    /// can reach it, else the host's first upstream they can.
    pub guest_dns: Option<std::net::Ipv4Addr>,
}

impl Wiring {
    /// The real host: the VMM `config` asks for (probed), and the root
    /// helper unless `opts.no_network`.
    pub fn probe(paths: &Paths, config: &Config, opts: &Options) -> Wiring {
        let home = banger_core::host::home_dir().unwrap_or_default();
        let vmm_config = banger_vmm::VmmConfig::from_config(config, &home);
        let selection = banger_vmm::select_vmm(&vmm_config).map_err(|e| e.to_string());
        match &selection {
            Ok(s) => tracing::info!(vmm = %s.kind, "{}", s.reason),
            Err(e) => tracing::warn!("no usable VMM: {e}"),
        }
        let network: Arc<dyn HostNetwork> = if opts.no_network {
            Arc::new(NoNetwork)
        } else {
            Arc::new(RootNetwork(banger_net::RootClient::new(
                paths.root_socket.clone(),
            )))
        };
        let guest_dns = banger_dns::forward::guest_nameserver(
            // A test's own DNS address (opts.dns_listen) is not for guests.
            opts.dns_listen.is_none().then(|| config.dns_socket_addr()),
            &banger_dns::UpstreamSource::from_file(config.dns_upstream_file(&home)),
        );
        Wiring {
            selection,
            network,
            stop_grace: vms::STOP_GRACE,
            guest_dns,
        }
    }
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
    /// The configuration in force now (a reload may replace it).
    pub fn config(&self) -> Arc<Config> {
        self.settings.get()
    }

    /// Reads the config file again (SIGHUP, `banger config reload`).
    pub fn reload_config(&self) -> banger_proto::ConfigReload {
        self.settings.reload(self.host_facts(), &self.home())
    }

    /// The configuration in force, as `config show` prints it.
    pub fn config_report(&self) -> banger_proto::DaemonConfig {
        self.settings.report(self.host_facts(), &self.home())
    }

    /// The facts VM sizes are derived from on this host and VMM.
    pub(crate) fn host_facts(&self) -> banger_core::config::HostFacts {
        let emulated = self.selection.as_ref().is_ok_and(|s| s.emulated());
        banger_core::config::HostFacts::probe().emulated(emulated)
    }

    fn home(&self) -> std::path::PathBuf {
        banger_core::host::home_dir().unwrap_or_default()
    }

    /// Opens state on the real host (see [`Wiring::probe`]).
    pub fn open(paths: Paths, config: Config, opts: &Options) -> anyhow::Result<Daemon> {
        let wiring = Wiring::probe(&paths, &config, opts);
        Daemon::open_with(paths, config, wiring)
    }

    /// Opens state with the given VMM selection and host network, repairs
    /// what an interrupted previous run left behind.
    pub fn open_with(paths: Paths, config: Config, wiring: Wiring) -> anyhow::Result<Daemon> {
        for d in [&paths.state_dir, &paths.cache_dir, &paths.runtime_dir] {
            ensure_private_dir(d)?;
        }
        let state_lock = state_lock::StateLock::acquire(&paths.state_dir)?;
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
        let file = config.source.clone();
        let daemon = Daemon {
            paths,
            settings: settings::Settings::new(config, file),
            store,
            selection: wiring.selection,
            network: wiring.network,
            stop_grace: wiring.stop_grace,
            dns_names: banger_dns::NameTable::new(),
            dns_clients: banger_dns::ForwardClients::new(),
            guest_dns: wiring.guest_dns,
            slots: vms::Slots::default(),
            warm: warm::WarmState::default(),
            state_lock,
        };
        daemon.recover()?;
        Ok(daemon)
    }

    /// Work that a kill -9 interrupted: a VM still `creating` never finished
    /// and is removed with its files; scratch space is emptied.
    fn recover(&self) -> anyhow::Result<()> {
        // Interrupted or stale warm snapshots (image, kernel or VMM changed or gone).
        self.warm_gc();
        // An install renamed into place whose registration was interrupted.
        self.remove_orphan_store_dirs()?;
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
