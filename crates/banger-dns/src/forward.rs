//! Forwarding of names outside `.vm` to the host's real resolvers.
//!
//! Why: a guest's only nameserver is banger's server on the bridge gateway,
//! because the host's own `/etc/resolv.conf` is useless to a guest on
//! systemd-resolved hosts (it names only the loopback stub `127.0.0.53`).
//! So the server answers `.vm` itself and relays every other question to the
//! upstreams the host really uses: systemd-resolved's uplink list
//! ([`RESOLVED_UPLINKS`]) where it exists, else `/etc/resolv.conf`.
//!
//! Rules:
//! * only clients in [`ForwardClients`] are forwarded (the daemon lists the
//!   VMs whose egress is allowed); everyone else keeps getting REFUSED, so
//!   this is never an open resolver and `--no-egress` VMs cannot tunnel out
//!   through DNS;
//! * an `allow:` client is relayed only the allowed names, and an answer
//!   only after its addresses were granted ([`Forwarder::relay`], see
//!   [`crate::clients`]);
//! * each query goes out on its own ephemeral socket connected to one
//!   upstream at a time (bounded wait each); an answer is relayed only if it
//!   comes from that upstream, is a response, and carries the query's id;
//! * at most [`MAX_IN_FLIGHT`] queries are forwarded at once; the rest are
//!   dropped (the stub retries), so a flood cannot exhaust the daemon;
//! * the server's own address is never an upstream (no forwarding loops).
//!
//! UDP only, like the rest of the server: a truncated upstream answer is
//! relayed with its TC bit.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::UdpSocket;
use tokio::sync::Semaphore;

use crate::answers;
use crate::clients::{EgressGrants, ForwardClients};

/// systemd-resolved's list of the real upstream servers.
pub const RESOLVED_UPLINKS: &str = "/run/systemd/resolve/resolv.conf";
/// The classic resolver configuration.
pub const ETC_RESOLV_CONF: &str = "/etc/resolv.conf";
/// Forwarded queries in flight at once.
pub const MAX_IN_FLIGHT: usize = 256;
/// How long one upstream may take to answer before the next is tried.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest answer relayed (the UDP maximum).
const MAX_ANSWER: usize = 65535;
/// How often the resolver file is looked at again (it changes with DHCP).
const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// Nameserver addresses of resolv.conf text, in order (port 53).
pub fn parse_resolv_conf(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()).flatten()
        })
        // A scoped IPv6 address (fe80::1%eth0) does not parse and is skipped.
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .collect()
}

/// Where the upstream list is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamSource {
    /// [`RESOLVED_UPLINKS`] if it exists, else [`ETC_RESOLV_CONF`].
    Host,
    /// This file only (`[dns] upstream_resolv_conf`).
    File(PathBuf),
    /// These servers, with their ports (tests on loopback).
    Addrs(Vec<SocketAddr>),
}

impl UpstreamSource {
    /// A configured file, else the host's own.
    pub fn from_file(file: Option<PathBuf>) -> Self {
        file.map_or(UpstreamSource::Host, UpstreamSource::File)
    }

    /// The file to read now.
    pub fn path(&self) -> PathBuf {
        match self {
            UpstreamSource::File(p) => p.clone(),
            UpstreamSource::Addrs(_) => PathBuf::new(),
            UpstreamSource::Host if Path::new(RESOLVED_UPLINKS).exists() => {
                PathBuf::from(RESOLVED_UPLINKS)
            }
            UpstreamSource::Host => PathBuf::from(ETC_RESOLV_CONF),
        }
    }

    /// The upstreams a forwarder at `own` would use now, and the file they
    /// came from (for `banger doctor` and the daemon's log). An unreadable
    /// file gives none.
    pub fn read(&self, own: Option<SocketAddr>) -> (PathBuf, Vec<SocketAddr>) {
        let path = self.path();
        let listed = match self {
            UpstreamSource::Addrs(a) => a.clone(),
            _ => parse_resolv_conf(&std::fs::read_to_string(&path).unwrap_or_default())
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 53))
                .collect(),
        };
        let addrs = listed
            .into_iter()
            .filter(|a| Some(*a) != own && !own.is_some_and(|o| is_wildcard_self(o, *a)))
            .collect();
        (path, addrs)
    }
}

/// The nameserver a guest is given. banger's own server when guests can
/// use it (`server` is where it listens for them, on port 53: a resolver
/// line has no port): it answers `.vm` and forwards the rest. Else the
/// first non-loopback IPv4 upstream (guests then cannot resolve `.vm`).
pub fn guest_nameserver(
    server: Option<SocketAddr>,
    upstreams: &UpstreamSource,
) -> Option<Ipv4Addr> {
    match server {
        Some(SocketAddr::V4(a)) if a.port() == 53 && !a.ip().is_unspecified() => Some(*a.ip()),
        _ => upstreams
            .read(None)
            .1
            .into_iter()
            .find_map(|u| match u.ip() {
                IpAddr::V4(ip) if !ip.is_loopback() => Some(ip),
                _ => None,
            }),
    }
}

/// A server bound to 0.0.0.0:53 would receive what it sends to any local
/// address on port 53; only a loopback upstream can be such an address here.
fn is_wildcard_self(own: SocketAddr, up: SocketAddr) -> bool {
    own.ip().is_unspecified() && own.port() == up.port() && up.ip().is_loopback()
}

struct Cached {
    path: PathBuf,
    mtime: Option<SystemTime>,
    checked: Option<Instant>,
    addrs: Vec<SocketAddr>,
}

/// Relays queries for names outside `.vm` to the host's upstreams.
pub struct Forwarder {
    source: UpstreamSource,
    clients: ForwardClients,
    own: Mutex<Option<SocketAddr>>,
    cache: Mutex<Cached>,
    in_flight: Arc<Semaphore>,
    timeout: Duration,
    grants: Option<Arc<dyn EgressGrants>>,
}

impl Forwarder {
    pub fn new(source: UpstreamSource, clients: ForwardClients) -> Self {
        Forwarder {
            source,
            clients,
            own: Mutex::new(None),
            cache: Mutex::new(Cached {
                path: PathBuf::new(),
                mtime: None,
                checked: None,
                addrs: Vec::new(),
            }),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            timeout: UPSTREAM_TIMEOUT,
            grants: None,
        }
    }

    /// Per-upstream wait (tests shorten it).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Where the addresses answered to `allow:` clients are granted.
    /// Without it no `allow:` client gets an answer (SERVFAIL): an answer
    /// whose addresses stay closed would only make the guest time out.
    pub fn with_grants(mut self, grants: Arc<dyn EgressGrants>) -> Self {
        self.grants = Some(grants);
        self
    }

    /// The server's own address, never used as an upstream.
    pub(crate) fn set_own_addr(&self, addr: SocketAddr) {
        *self.own.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
    }

    pub fn allows(&self, client: IpAddr) -> bool {
        self.clients.allows(client)
    }

    /// Whether `query` (a question outside `.vm`) may be relayed for
    /// `client`: it is a client, and its policy allows the name.
    pub fn relays(&self, client: IpAddr, query: &[u8]) -> bool {
        self.clients
            .policy(client)
            .is_some_and(|p| crate::wire::question_name(query).is_some_and(|n| p.allows_name(&n)))
    }

    /// The answer to relay to `client` for `query` (which [`Self::relays`]
    /// accepted): the upstream's, after an `allow:` client was granted the
    /// addresses it gives; `None` when no upstream answered or the grant
    /// failed (the caller answers SERVFAIL).
    pub async fn relay(&self, client: IpAddr, query: &[u8]) -> Option<Vec<u8>> {
        let policy = self.clients.policy(client)?;
        let resp = self.resolve(query).await?;
        if *policy == banger_proto::EgressPolicy::All {
            return Some(resp);
        }
        let IpAddr::V4(guest) = client else {
            return None;
        };
        // NXDOMAIN, no answer section, a truncated reply: nothing to grant,
        // relayed as it is.
        let Some(got) = answers::resolved(&resp) else {
            return Some(resp);
        };
        if Some(&got.name) != crate::wire::question_name(query).as_ref() {
            tracing::debug!(%client, name = %got.name, "upstream answered another question");
            return None;
        }
        let fresh = self.clients.not_recently_granted(guest, &got.addrs);
        if fresh.is_empty() {
            return Some(resp);
        }
        let grants = self.grants.as_ref()?;
        match grants.grant(guest, &fresh).await {
            Ok(()) => {
                self.clients.remember_granted(guest, &fresh);
                Some(resp)
            }
            Err(e) => {
                tracing::warn!(%client, name = %got.name, "egress grant failed: {e}");
                None
            }
        }
    }

    /// The upstreams now, re-reading the file when it changed.
    pub fn upstreams(&self) -> Vec<SocketAddr> {
        let own = *self.own.lock().unwrap_or_else(|e| e.into_inner());
        let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if c.checked.is_some_and(|t| t.elapsed() < RELOAD_EVERY) {
            return c.addrs.clone();
        }
        let path = self.source.path();
        let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if c.checked.is_none() || path != c.path || mtime != c.mtime {
            let (p, addrs) = self.source.read(own);
            tracing::info!(file = %p.display(), ?addrs, "DNS upstreams for guests");
            c.path = p;
            c.addrs = addrs;
            c.mtime = mtime;
        }
        c.checked = Some(Instant::now());
        c.addrs.clone()
    }

    /// A slot for one forwarded query, or `None` when [`MAX_IN_FLIGHT`] are
    /// already out.
    pub(crate) fn permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.in_flight).try_acquire_owned().ok()
    }

    /// The first valid answer from the upstreams, tried in order; `None`
    /// when none answered.
    pub async fn resolve(&self, query: &[u8]) -> Option<Vec<u8>> {
        let id = query.get(..2)?;
        for up in self.upstreams() {
            match self.ask(up, query, id).await {
                Ok(a) => return Some(a),
                Err(e) => tracing::debug!(upstream = %up, "DNS upstream failed: {e}"),
            }
        }
        None
    }

    async fn ask(&self, up: SocketAddr, query: &[u8], id: &[u8]) -> std::io::Result<Vec<u8>> {
        let bind: SocketAddr = if up.is_ipv4() {
            "0.0.0.0:0".parse().map_err(std::io::Error::other)?
        } else {
            "[::]:0".parse().map_err(std::io::Error::other)?
        };
        let sock = UdpSocket::bind(bind).await?;
        // Connected: the kernel drops datagrams from anyone but `up`.
        sock.connect(up).await?;
        sock.send(query).await?;
        let mut buf = vec![0u8; MAX_ANSWER];
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            let a = &buf[..n];
            // A response (QR) to this query (id); anything else is ignored.
            if n >= 12 && &a[..2] == id && a[2] & 0x80 != 0 {
                return Ok(a.to_vec());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers_in_order() {
        let text = "# generated\nsearch lan\nnameserver 127.0.0.53\nnameserver   198.18.0.2 \nnameserver 2001:db8::1\nnameserver fe80::1%eth0\noptions edns0\nnameserverx 1.2.3.4\n";
        assert_eq!(
            parse_resolv_conf(text),
            [
                "127.0.0.53".parse::<IpAddr>().expect("ip"),
                "198.18.0.2".parse().expect("ip"),
                "2001:db8::1".parse().expect("ip"),
            ]
        );
        assert!(parse_resolv_conf("").is_empty());
    }

    #[test]
    fn own_address_is_never_an_upstream() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("resolv.conf");
        std::fs::write(
            &f,
            "nameserver 172.16.0.1\nnameserver 127.0.0.1\nnameserver 198.18.0.2\n",
        )
        .expect("write");
        let src = UpstreamSource::File(f.clone());
        let (path, ups) = src.read(Some("172.16.0.1:53".parse().expect("addr")));
        assert_eq!(path, f);
        assert_eq!(
            ups,
            [
                "127.0.0.1:53".parse::<SocketAddr>().expect("a"),
                "198.18.0.2:53".parse().expect("a")
            ]
        );
        let (_, ups) = src.read(Some("0.0.0.0:53".parse().expect("addr")));
        assert_eq!(
            ups,
            [
                "172.16.0.1:53".parse::<SocketAddr>().expect("a"),
                "198.18.0.2:53".parse().expect("a")
            ],
            "a wildcard server on :53 would receive its own loopback queries"
        );
        let (_, none) = UpstreamSource::File(dir.path().join("missing")).read(None);
        assert!(none.is_empty());
    }

    #[test]
    fn guests_use_banger_when_it_serves_port_53() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("resolv.conf");
        std::fs::write(
            &f,
            "nameserver 127.0.0.53\nnameserver ::1\nnameserver 198.18.0.2\n",
        )
        .expect("write");
        let src = UpstreamSource::File(f);
        let gw = Ipv4Addr::new(172, 16, 0, 1);
        assert_eq!(guest_nameserver(Some((gw, 53).into()), &src), Some(gw));
        // elsewhere guests cannot use it: the first upstream they can reach
        let fallback = Some(Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(guest_nameserver(Some((gw, 5353).into()), &src), fallback);
        assert_eq!(guest_nameserver(None, &src), fallback);
        let only_stub = dir.path().join("stub.conf");
        std::fs::write(&only_stub, "nameserver 127.0.0.53\n").expect("write");
        assert_eq!(
            guest_nameserver(None, &UpstreamSource::File(only_stub)),
            None
        );
    }

    #[test]
    fn host_source_prefers_resolved_uplinks() {
        let p = UpstreamSource::Host.path();
        if Path::new(RESOLVED_UPLINKS).exists() {
            assert_eq!(p, PathBuf::from(RESOLVED_UPLINKS));
        } else {
            assert_eq!(p, PathBuf::from(ETC_RESOLV_CONF));
        }
    }
}
