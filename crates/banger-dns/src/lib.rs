//! banger's authoritative DNS server for the `.vm` zone.
//!
//! * `<name>.vm` A → the VM's address; other types for a known name →
//!   NOERROR with no answers; unknown names in the zone → NXDOMAIN;
//! * anything outside `.vm` → REFUSED, unless a [`Forwarder`] is attached
//!   and the client is one it forwards for (guests with egress allowed,
//!   and for an `allow:` guest only the allowed names): then the host's
//!   real upstreams answer (see [`forward`] and [`clients`]). Never an
//!   open resolver;
//! * malformed, truncated or oversized packets are dropped (or answered
//!   FORMERR when the header is intact) without disturbing the server.
//!
//! The daemon owns a [`NameTable`] and calls [`NameTable::set`] /
//! [`NameTable::remove`] / [`NameTable::rename`] as VMs come and go; the
//! server reads it on every query, so changes are live immediately.
//! UDP only: every `.vm` answer fits in 512 bytes, so TCP fallback is never
//! needed.

pub mod answers;
pub mod clients;
pub mod forward;
pub mod wire;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};

use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

pub use clients::{EgressGrants, ForwardClients, GrantFuture};
pub use forward::{Forwarder, UpstreamSource};
pub use wire::{ANSWER_TTL, MAX_QUERY_LEN, ZONE, answer};

#[derive(Debug, Error)]
pub enum DnsError {
    #[error(
        "{name:?} is not a valid name for the .vm zone: use 1-63 characters a-z, 0-9 and '-', not starting or ending with '-'"
    )]
    InvalidName { name: String },
    #[error(
        "cannot bind the DNS server to {addr}: {source} (port 53 needs root or CAP_NET_BIND_SERVICE; use a high port in tests)"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("DNS socket: {0}")]
    Io(#[from] std::io::Error),
}

/// Normalise and check a VM name as a single DNS label.
fn label(name: &str) -> Result<String, DnsError> {
    let l = name
        .strip_suffix(".vm")
        .unwrap_or(name)
        .to_ascii_lowercase();
    // A name resolves case-insensitively; the label rule is the VM-name rule.
    let ok = banger_core::names::validate_vm_name(&l).is_ok();
    if ok {
        Ok(l)
    } else {
        Err(DnsError::InvalidName {
            name: name.to_string(),
        })
    }
}

/// The live name → address table, shared between the daemon and the server.
/// Cheap to clone (all clones see the same table).
#[derive(Debug, Clone, Default)]
pub struct NameTable {
    inner: Arc<RwLock<HashMap<String, Ipv4Addr>>>,
}

impl NameTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add or update `name` (with or without the `.vm` suffix, any case).
    pub fn set(&self, name: &str, addr: Ipv4Addr) -> Result<(), DnsError> {
        let l = label(name)?;
        self.write().insert(l, addr);
        Ok(())
    }

    /// Remove `name`; returns its address if it was present.
    pub fn remove(&self, name: &str) -> Option<Ipv4Addr> {
        let l = label(name).ok()?;
        self.write().remove(&l)
    }

    /// Move `old`'s address to `new` in one step, so no query sees neither.
    pub fn rename(&self, old: &str, new: &str) -> Result<Option<Ipv4Addr>, DnsError> {
        let (o, n) = (label(old)?, label(new)?);
        let mut t = self.write();
        let addr = t.remove(&o);
        if let Some(a) = addr {
            t.insert(n, a);
        }
        Ok(addr)
    }

    /// Replace the whole table (e.g. from the store at daemon start).
    pub fn replace_all(
        &self,
        entries: impl IntoIterator<Item = (String, Ipv4Addr)>,
    ) -> Result<(), DnsError> {
        let mut fresh = HashMap::new();
        for (name, addr) in entries {
            fresh.insert(label(&name)?, addr);
        }
        *self.write() = fresh;
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<Ipv4Addr> {
        let l = label(name).ok()?;
        self.read().get(&l).copied()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // A poisoned lock only means a writer panicked mid-insert on a HashMap,
    // which leaves it consistent; keep serving rather than fail every query.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Ipv4Addr>> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Ipv4Addr>> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl wire::Lookup for NameTable {
    fn lookup(&self, label: &str) -> Option<Ipv4Addr> {
        self.read().get(label).copied()
    }
}

/// A bound `.vm` server, not yet serving.
pub struct DnsServer {
    socket: Arc<UdpSocket>,
    table: NameTable,
    forwarder: Option<Arc<Forwarder>>,
}

/// A running server; dropping it does not stop it, [`DnsHandle::shutdown`] does.
pub struct DnsHandle {
    local_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl DnsHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn shutdown(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

impl DnsServer {
    /// Bind a UDP socket on `addr` (the bridge gateway `:53` in production,
    /// `127.0.0.1:0` in tests).
    pub async fn bind(addr: SocketAddr, table: NameTable) -> Result<Self, DnsError> {
        let socket = UdpSocket::bind(addr)
            .await
            .map_err(|source| DnsError::Bind { addr, source })?;
        Ok(DnsServer {
            socket: Arc::new(socket),
            table,
            forwarder: None,
        })
    }

    /// Relay names outside `.vm` for the forwarder's clients.
    pub fn with_forwarder(mut self, forwarder: Forwarder) -> Self {
        if let Ok(a) = self.socket.local_addr() {
            forwarder.set_own_addr(a);
        }
        self.forwarder = Some(Arc::new(forwarder));
        self
    }

    /// Serve on a socket bound elsewhere (e.g. handed over by a process that
    /// may bind port 53). Must be called inside a tokio runtime.
    pub fn from_std(socket: std::net::UdpSocket, table: NameTable) -> Result<Self, DnsError> {
        socket.set_nonblocking(true)?;
        Ok(DnsServer {
            socket: Arc::new(UdpSocket::from_std(socket)?),
            table,
            forwarder: None,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, DnsError> {
        Ok(self.socket.local_addr()?)
    }

    /// Start serving on `workers` tasks (1 or 2 is plenty) and return.
    pub fn spawn(self, workers: usize) -> Result<DnsHandle, DnsError> {
        let local_addr = self.local_addr()?;
        let tasks = (0..workers.max(1))
            .map(|_| {
                let socket = Arc::clone(&self.socket);
                let table = self.table.clone();
                let fwd = self.forwarder.clone();
                tokio::spawn(async move { serve(&socket, &table, fwd.as_ref()).await })
            })
            .collect();
        Ok(DnsHandle { local_addr, tasks })
    }

    /// Serve forever on the current task.
    pub async fn run(self) {
        serve(&self.socket, &self.table, self.forwarder.as_ref()).await
    }
}

/// Relays one query to the upstreams on its own task and sends the answer
/// (or SERVFAIL) back to `peer`.
fn forward(socket: &Arc<UdpSocket>, fwd: &Arc<Forwarder>, query: &[u8], peer: SocketAddr) {
    let Some(permit) = fwd.permit() else {
        tracing::debug!(%peer, "too many DNS queries in flight; dropped one");
        return;
    };
    let (socket, fwd, query) = (Arc::clone(socket), Arc::clone(fwd), query.to_vec());
    tokio::spawn(async move {
        let _permit = permit;
        let resp = match fwd.relay(peer.ip(), &query).await {
            Some(r) => Some(r),
            None => {
                tracing::debug!(%peer, "no DNS upstream answered, or its answer was not granted");
                wire::servfail(&query)
            }
        };
        if let Some(r) = resp
            && let Err(e) = socket.send_to(&r, peer).await
        {
            tracing::debug!(%peer, "dns send: {e}");
        }
    });
}

async fn serve(socket: &Arc<UdpSocket>, table: &NameTable, fwd: Option<&Arc<Forwarder>>) {
    // One byte more than the largest accepted query, so an oversized
    // datagram is recognised (recv truncates silently) and dropped.
    let mut buf = vec![0u8; MAX_QUERY_LEN + 1];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // E.g. ECONNREFUSED from an ICMP error for an earlier reply:
                // about one client, never a reason to stop serving the rest.
                tracing::debug!("dns recv: {e}");
                continue;
            }
        };
        let query = buf.get(..n).unwrap_or_default();
        if let Some(f) = fwd
            && wire::outside_zone(query)
            && f.relays(peer.ip(), query)
        {
            forward(socket, f, query, peer);
            continue;
        }
        let Some(resp) = answer(query, table) else {
            tracing::debug!(%peer, len = n, "dropped malformed DNS packet");
            continue;
        };
        if let Err(e) = socket.send_to(&resp, peer).await {
            tracing::debug!(%peer, "dns send: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_normalises_and_validates() {
        let t = NameTable::new();
        t.set("SandBox.vm", Ipv4Addr::new(172, 16, 0, 2))
            .expect("valid");
        assert_eq!(t.get("sandbox"), Some(Ipv4Addr::new(172, 16, 0, 2)));
        for bad in ["", "-x", "x-", "a.b", "a_b", &"x".repeat(64), "ü"] {
            assert!(t.set(bad, Ipv4Addr::LOCALHOST).is_err(), "{bad:?}");
        }
        assert_eq!(
            t.rename("sandbox", "box2").expect("valid"),
            Some(Ipv4Addr::new(172, 16, 0, 2))
        );
        assert_eq!(t.get("sandbox"), None);
        assert_eq!(t.remove("box2"), Some(Ipv4Addr::new(172, 16, 0, 2)));
        assert!(t.is_empty());
    }

    #[tokio::test]
    async fn serves_on_a_socket_bound_elsewhere() {
        let std_sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let table = NameTable::new();
        table
            .set("handed", Ipv4Addr::new(172, 16, 0, 9))
            .expect("valid");
        let h = DnsServer::from_std(std_sock, table)
            .expect("adopt")
            .spawn(1)
            .expect("spawn");
        let c = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("client");
        let mut q = vec![0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 6];
        q.extend_from_slice(b"handed");
        q.extend_from_slice(&[2, b'v', b'm', 0, 0, 1, 0, 1]);
        c.send_to(&q, h.local_addr()).await.expect("send");
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), c.recv(&mut buf))
            .await
            .expect("answer in time")
            .expect("recv");
        assert_eq!(&buf[n - 4..n], &[172, 16, 0, 9]);
        h.shutdown();
    }
}
