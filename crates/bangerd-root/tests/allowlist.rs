//! Egress allowlists end to end, with real parts: banger's DNS server (the
//! daemon's `banger_dns` forwarder) listens on the bridge gateway in the
//! test's host namespace, relays to dnsmasq in the outside namespace, and
//! grants through the real helper (`allow_egress` over its socket) into
//! the kernel's `egress_allowed` set. The guest is the test, writing DNS
//! queries and datagrams into its tap. Only the test's namespaces and
//! 198.18.0.0/15 are involved.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use banger_dns::{DnsServer, EgressGrants, ForwardClients, Forwarder, GrantFuture, NameTable};
use banger_net::RootClient;
use common::world::*;
use common::{can_run, frames};
use serde_json::{Value, json};

/// Where the allowed name and another name point, both in the outside.
const ALLOWED: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 4);
const OTHER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 5);
/// The guest's DNS source port.
const SPORT: u16 = 5353;

/// The daemon's grant path, minus the daemon: `RootClient::allow_egress`.
struct HelperGrants(RootClient);

impl EgressGrants for HelperGrants {
    fn grant<'a>(&'a self, guest: Ipv4Addr, addrs: &'a [(Ipv4Addr, u32)]) -> GrantFuture<'a> {
        Box::pin(async move {
            self.0
                .allow_egress(guest, addrs)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// A process started by the test, killed by its pid on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// banger's DNS server on a thread inside namespace `ns`; stops on drop.
struct Server {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(ns: &str, listen: SocketAddr, fwd: Forwarder) -> Server {
        let path = format!("/run/netns/{ns}");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, is_ready) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let nsf = std::fs::File::open(&path).expect("open netns");
            // SAFETY: setns on an open netns fd only moves this thread, on
            // which the runtime below creates every socket.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&nsf), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let h = DnsServer::bind(listen, NameTable::new())
                    .await
                    .expect("bind the gateway")
                    .with_forwarder(fwd)
                    .spawn(1)
                    .expect("spawn");
                let _ = ready.send(());
                let _ = stopped.await;
                h.shutdown();
            });
        });
        is_ready
            .recv_timeout(Duration::from_secs(10))
            .expect("DNS server up");
        Server {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn dnsmasq(o: &common::Netns) -> Proc {
    let child = Command::new("ip")
        .args(["netns", "exec", &o.0, "dnsmasq"])
        .args(["--keep-in-foreground", "--no-resolv", "--no-hosts"])
        .args([
            "--listen-address=198.18.0.2",
            "--bind-interfaces",
            "--port=53",
        ])
        .arg(format!("--address=/allowed.test/{ALLOWED}"))
        .arg(format!("--address=/other.test/{OTHER}"))
        .args(["--user=root", "--pid-file="])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dnsmasq");
    Proc(child)
}

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in name.split('.') {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Ask the gateway for `name` as the guest; the answer's DNS message.
fn resolve(w: &World, g: &mut Guest, id: u16, name: &str) -> Option<Vec<u8>> {
    let pkt = frames::ipv4_udp(g.ip, GW, SPORT, 53, &query(id, name));
    let _ = g.tap.received(Duration::ZERO);
    g.tap
        .send(&frames::eth(w.bridge_mac, g.mac, &[], frames::ETH_IP, &pkt));
    let deadline = Instant::now() + ARRIVES;
    while Instant::now() < deadline {
        for f in g.tap.received(Duration::from_millis(100)) {
            if frames::is_udp_with(&f, SPORT, &id.to_be_bytes()) {
                return Some(f[42..].to_vec());
            }
        }
    }
    None
}

fn rcode(msg: &[u8]) -> u8 {
    msg[3] & 0x0f
}

fn holds(msg: &[u8], a: Ipv4Addr) -> bool {
    msg.windows(4).any(|w| w == a.octets())
}

/// `(guest, destination, timeout)` in the kernel's `egress_allowed` set.
fn granted(w: &World) -> Vec<(String, String, u64)> {
    let text =
        w.r.exec_ok(&["nft", "-j", "list", "set", "ip", "banger", "egress_allowed"]);
    let v: Value = serde_json::from_str(&text).expect("json");
    v["nftables"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|e| e.get("set"))
        .flat_map(|s| s["elem"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| {
            let parts = e["elem"]["val"]["concat"].as_array()?.clone();
            Some((
                parts.first()?.as_str()?.to_string(),
                parts.get(1)?.as_str()?.to_string(),
                e["elem"]["timeout"].as_u64()?,
            ))
        })
        .collect()
}

#[test]
fn an_allowlisted_guest_reaches_exactly_what_its_names_resolved_to() {
    if !can_run() {
        return;
    }
    if Command::new("dnsmasq").arg("--version").output().is_err() {
        eprintln!("SKIP: needs dnsmasq (Debian package dnsmasq-base)");
        return;
    }
    let mut w = World::new("al", &[]);
    for a in [ALLOWED, OTHER] {
        w.o.ip(&["addr", "add", &format!("{a}/32"), "dev", "lo"]);
    }
    let _dnsmasq = dnsmasq(&w.o);
    let mut c = w.guest("bangertap00000c", 4, "allowlist");
    assert_eq!(
        w.r.mac_of("banger0"),
        w.bridge_mac,
        "a tap joining leaves the gateway's MAC alone"
    );
    let clients = ForwardClients::new();
    clients.set(c.ip.into(), "allow:allowed.test".parse().expect("policy"));
    let helper = RootClient::new(&w.helper().sock).with_timeout(Duration::from_secs(20));
    let fwd = Forwarder::new(
        banger_dns::UpstreamSource::Addrs(vec![(OUT, 53).into()]),
        clients,
    )
    .with_timeout(Duration::from_secs(2))
    .with_grants(Arc::new(HelperGrants(helper)));
    let _dns = Server::start(&w.r.0, (GW, 53).into(), fwd);
    let gw = w.bridge_mac;

    // Before any answer, nothing outside is reachable, the resolver the
    // host uses included.
    for (dst, tag) in [(ALLOWED, &b"c-early"[..]), (OUT, b"c-resolver")] {
        send_from(&mut c, gw, dst, 9999, tag);
        assert!(!w.outside.saw(tag, WAIT), "{dst} before any grant");
    }

    // dnsmasq may take a moment to listen: the first answers may fail.
    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        match resolve(&w, &mut c, 0x0a01, "allowed.test") {
            Some(a) if rcode(&a) == 0 => break a,
            other => assert!(
                Instant::now() < deadline,
                "no answer for allowed.test: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(holds(&answer, ALLOWED), "{answer:?}");
    let g = granted(&w);
    assert_eq!(
        g.iter()
            .map(|(a, b, _)| (a.as_str(), b.as_str()))
            .collect::<Vec<_>>(),
        [("172.16.0.4", "198.18.0.4")],
        "{g:?}"
    );
    // dnsmasq answers with TTL 0; the helper grants at least its floor.
    assert!(g[0].2 >= 60, "{g:?}");
    send_from(&mut c, gw, ALLOWED, 9999, b"c-allowed");
    assert!(
        w.outside.saw(b"c-allowed", ARRIVES),
        "the allowed name's address is reachable"
    );

    // Another name is refused and its address stays closed.
    let refused = resolve(&w, &mut c, 0x0a02, "other.test").expect("an answer");
    assert_eq!(rcode(&refused), 5, "REFUSED");
    assert!(!holds(&refused, OTHER));
    for (dst, tag) in [(OTHER, &b"c-other"[..]), (OUT, b"c-resolver-2")] {
        send_from(&mut c, gw, dst, 9999, tag);
        assert!(!w.outside.saw(tag, WAIT), "{dst} was not granted");
    }
    // A grant is the guest's own: a no-egress sibling gains nothing.
    send_as_self(&mut w, 'b', ALLOWED, 9999, b"b-allowed");
    assert!(!w.outside.saw(b"b-allowed", WAIT), "B used C's grant");

    // The helper decides, whatever the daemon asks: no metadata, no LAN,
    // no grants for a guest whose policy is not the allowlist.
    for (ip, addr) in [
        ("172.16.0.4", "169.254.169.254"),
        ("172.16.0.4", "10.1.2.3"),
        ("172.16.0.2", "198.18.0.5"),
        ("172.16.0.9", "198.18.0.5"),
    ] {
        let r = w.helper().op(json!({"op": "allow_egress", "ip": ip,
            "grants": [{"addr": addr, "ttl_secs": 60}]}));
        assert_eq!(r["status"], "err", "{ip} -> {addr}: {r}");
    }
    send_from(&mut c, gw, Ipv4Addr::new(169, 254, 169, 254), 9999, b"c-md");
    assert!(!w.outside.saw(b"c-md", WAIT), "metadata");
    assert_eq!(granted(&w).len(), 1, "{:?}", granted(&w));

    // The tap's deletion takes its grants with it.
    w.helper()
        .ok(json!({"op": "delete_tap", "tap": "bangertap00000c"}));
    assert!(granted(&w).is_empty(), "{:?}", granted(&w));
}
