//! The `.vm` DNS zone: the server on the bridge gateway (or where
//! `--dns-listen` says), its names seeded from running VMs, and the
//! systemd-resolved routing that makes the host resolve `.vm` through it.

use std::sync::Arc;

use crate::{Daemon, Options};

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
            if !daemon.network.attaches() {
                return None;
            }
            let subnet = daemon.config().vm_subnet().value;
            // The gateway address exists only once the bridge does. Under
            // systemd the helper may still be starting: retry briefly.
            let (bridge, cidr) = (daemon.config().bridge_name().value, subnet.to_string());
            let mut tries = 0;
            loop {
                match daemon.network.ensure_bridge(&bridge, &cidr).await {
                    Ok(()) => break,
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
            daemon.config().dns_socket_addr()
        }
    };
    // Names outside .vm go to the host's real upstreams, for guests with
    // egress allowed (banger_dns::forward); an `allow:` guest's answers
    // are granted through the root helper first.
    let home = banger_core::host::home_dir().unwrap_or_default();
    let forwarder = banger_dns::Forwarder::new(
        banger_dns::UpstreamSource::from_file(daemon.config().dns_upstream_file(&home)),
        daemon.dns_clients.clone(),
    )
    .with_grants(Arc::new(crate::host_net::NetGrants(Arc::clone(
        &daemon.network,
    ))));
    let server = match banger_dns::DnsServer::bind(addr, daemon.dns_names.clone()).await {
        Ok(s) => s.with_forwarder(forwarder),
        Err(e) => {
            tracing::warn!("no .vm DNS: cannot listen on {addr}: {e}");
            return None;
        }
    };
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
    if daemon.config().dns_auto_resolved == Some(false) {
        tracing::info!("[dns] auto_resolved = false: not wiring systemd-resolved");
        return;
    }
    if !std::path::Path::new("/run/systemd/resolve").is_dir() {
        tracing::info!(
            "systemd-resolved is not running: .vm names resolve only through {addr} (see docs/dns-routing.md)"
        );
        return;
    }
    if !daemon.network.attaches() {
        return;
    }
    let dns_addr = if addr.port() == 53 {
        addr.ip().to_string()
    } else {
        addr.to_string()
    };
    let bridge = daemon.config().bridge_name().value;
    match daemon.network.wire_resolved(&bridge, &dns_addr).await {
        Ok(()) => tracing::info!("systemd-resolved routes .vm to {addr}"),
        Err(e) => tracing::warn!("cannot wire systemd-resolved for .vm: {e}"),
    }
}
