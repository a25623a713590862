//! Forwarding through the real server to a real upstream (dnsmasq on
//! loopback), answered for allowed clients only, SERVFAIL when no upstream
//! answers, the next upstream tried when one is dead; for an `allow:`
//! client only the allowed names, each answer's addresses granted first.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use banger_dns::{
    DnsServer, EgressGrants, ForwardClients, Forwarder, GrantFuture, NameTable, UpstreamSource,
};

fn which(name: &str) -> bool {
    banger_core::host::find_program(name).is_some()
}

fn dig(server: SocketAddr, name: &str) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), name, "A"])
        .args(["+time=3", "+tries=1"])
        .output()
        .expect("run dig");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A free UDP port on 127.0.0.1 (bound and released).
fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("port")
        .port()
}

struct Dnsmasq(Child);

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// dnsmasq on 127.0.0.1:`port` answering `name` with 198.18.0.7 and
/// `extra` `(name, address)` pairs, nothing else.
fn dnsmasq(port: u16, name: &str, extra: &[(&str, &str)]) -> Dnsmasq {
    let child = Command::new("dnsmasq")
        .args(["--keep-in-foreground", "--no-resolv", "--no-hosts"])
        .args(["--listen-address=127.0.0.1", "--bind-interfaces"])
        .arg(format!("--port={port}"))
        .arg(format!("--address=/{name}/198.18.0.7"))
        .args(extra.iter().map(|(n, a)| format!("--address=/{n}/{a}")))
        .arg("--user=root")
        .arg("--pid-file=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dnsmasq");
    let d = Dnsmasq(child);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dig(addr, name).contains("198.18.0.7") {
        assert!(Instant::now() < deadline, "dnsmasq did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    d
}

/// banger's server on 127.0.0.1 with `fwd` attached.
async fn serve(table: NameTable, fwd: Forwarder, workers: usize) -> banger_dns::DnsHandle {
    DnsServer::bind("127.0.0.1:0".parse().expect("addr"), table)
        .await
        .expect("bind")
        .with_forwarder(fwd)
        .spawn(workers)
        .expect("spawn")
}

/// `name` asked at `handle`'s server gets SERVFAIL; then the server stops.
async fn servfails(handle: banger_dns::DnsHandle, name: &'static str) {
    let addr = handle.local_addr();
    tokio::task::spawn_blocking(move || {
        let out = dig(addr, name);
        assert!(out.contains("status: SERVFAIL"), "{out}");
    })
    .await
    .expect("checks");
    handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_outside_names_for_allowed_clients_only() {
    if !which("dig") || !which("dnsmasq") {
        eprintln!("SKIP: needs dig (dnsutils) and dnsmasq (dnsmasq-base)");
        return;
    }
    let up_port = free_port();
    let _upstream = dnsmasq(up_port, "outside.test", &[]);
    let dead: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let live: SocketAddr = ([127, 0, 0, 1], up_port).into();

    let table = NameTable::new();
    table
        .set("box", Ipv4Addr::new(172, 16, 0, 2))
        .expect("valid");
    let clients = ForwardClients::new();
    let fwd = Forwarder::new(UpstreamSource::Addrs(vec![dead, live]), clients.clone())
        .with_timeout(Duration::from_millis(500));
    let handle = serve(table, fwd, 2).await;
    let addr = handle.local_addr();

    let c = clients.clone();
    tokio::task::spawn_blocking(move || {
        // not yet an allowed client: refused, as without a forwarder
        let out = dig(addr, "outside.test");
        assert!(out.contains("status: REFUSED"), "{out}");
        c.allow("127.0.0.1".parse().expect("ip"));
        // the dead first upstream is skipped, the live one answers
        let out = dig(addr, "outside.test");
        assert!(
            out.contains("status: NOERROR") && out.contains("198.18.0.7"),
            "{out}"
        );
        // an upstream's NXDOMAIN is relayed as it is
        let out = dig(addr, "absent.test");
        assert!(
            out.contains("status: REFUSED") || out.contains("status: NXDOMAIN"),
            "{out}"
        );
        // .vm is still answered here, never forwarded
        let out = dig(addr, "box.vm");
        assert!(out.contains("172.16.0.2") && out.contains(" aa"), "{out}");
        let out = dig(addr, "nope.vm");
        assert!(out.contains("status: NXDOMAIN"), "{out}");
        c.revoke("127.0.0.1".parse().expect("ip"));
        let out = dig(addr, "outside.test");
        assert!(out.contains("status: REFUSED"), "revoked: {out}");
    })
    .await
    .expect("checks");
    handle.shutdown();

    // no upstream answers: SERVFAIL, quickly
    let clients = ForwardClients::new();
    clients.allow("127.0.0.1".parse().expect("ip"));
    let fwd = Forwarder::new(UpstreamSource::Addrs(vec![dead]), clients)
        .with_timeout(Duration::from_millis(500));
    servfails(serve(NameTable::new(), fwd, 1).await, "outside.test").await;
}

/// A FAKE grant sink (the daemon's real one calls the root helper, tested
/// in bangerd-root's netns tests): records each call, fails when told to.
/// One grant call: the guest and its `(address, ttl)` pairs.
type GrantCall = (Ipv4Addr, Vec<(Ipv4Addr, u32)>);

#[derive(Default)]
struct Recorded {
    calls: Mutex<Vec<GrantCall>>,
    fail: Mutex<bool>,
}

impl EgressGrants for Recorded {
    fn grant<'a>(&'a self, guest: Ipv4Addr, addrs: &'a [(Ipv4Addr, u32)]) -> GrantFuture<'a> {
        self.calls
            .lock()
            .expect("lock")
            .push((guest, addrs.to_vec()));
        let fail = *self.fail.lock().expect("lock");
        Box::pin(async move {
            if fail {
                Err("refused (as the test asked)".to_string())
            } else {
                Ok(())
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlisted_clients_get_only_their_names_granted_before_the_answer() {
    if !which("dig") || !which("dnsmasq") {
        eprintln!("SKIP: needs dig (dnsutils) and dnsmasq (dnsmasq-base)");
        return;
    }
    let up_port = free_port();
    let _upstream = dnsmasq(
        up_port,
        "allowed.test",
        &[
            ("other.test", "198.18.0.8"),
            ("deep.wild.test", "198.18.0.9"),
        ],
    );
    let clients = ForwardClients::new();
    let me = Ipv4Addr::LOCALHOST;
    clients.set(
        me.into(),
        "allow:allowed.test,*.wild.test".parse().expect("policy"),
    );
    let grants = Arc::new(Recorded::default());
    let fwd = Forwarder::new(
        UpstreamSource::Addrs(vec![([127, 0, 0, 1], up_port).into()]),
        clients.clone(),
    )
    .with_timeout(Duration::from_millis(500))
    .with_grants(grants.clone());
    let handle = serve(NameTable::new(), fwd, 2).await;
    let addr = handle.local_addr();
    let g = Arc::clone(&grants);
    tokio::task::spawn_blocking(move || {
        let calls = || g.calls.lock().expect("lock").clone();
        let out = dig(addr, "allowed.test");
        assert!(
            out.contains("status: NOERROR") && out.contains("198.18.0.7"),
            "{out}"
        );
        let seen = calls();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].0, me);
        assert_eq!(
            seen[0].1.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
            [Ipv4Addr::new(198, 18, 0, 7)]
        );
        // Asked again at once: answered, no second helper call.
        let out = dig(addr, "ALLOWED.test.");
        assert!(out.contains("198.18.0.7"), "{out}");
        assert_eq!(calls().len(), 1, "a fresh grant is not asked again");
        // Another name, a parent of a wildcard, a name under an exact one.
        for name in ["other.test", "wild.test", "sub.allowed.test"] {
            let out = dig(addr, name);
            assert!(out.contains("status: REFUSED"), "{name}: {out}");
        }
        assert_eq!(calls().len(), 1, "nothing granted for refused names");
        let out = dig(addr, "deep.wild.test");
        assert!(out.contains("198.18.0.9"), "{out}");
        assert_eq!(calls().len(), 2);
        // A grant the helper refuses: no answer reaches the guest.
        *g.fail.lock().expect("lock") = true;
        clients.set(me.into(), "allow:other.test".parse().expect("policy"));
        let out = dig(addr, "other.test");
        assert!(out.contains("status: SERVFAIL"), "{out}");
        assert!(!out.contains("198.18.0.8"), "{out}");
        let out = dig(addr, "allowed.test");
        assert!(out.contains("status: REFUSED"), "the new policy: {out}");
    })
    .await
    .expect("checks");
    handle.shutdown();

    // An allowlisted client of a forwarder with nowhere to grant: SERVFAIL.
    let clients = ForwardClients::new();
    clients.set(me.into(), "allow:allowed.test".parse().expect("policy"));
    let fwd = Forwarder::new(
        UpstreamSource::Addrs(vec![([127, 0, 0, 1], up_port).into()]),
        clients,
    )
    .with_timeout(Duration::from_millis(500));
    servfails(serve(NameTable::new(), fwd, 1).await, "allowed.test").await;
}
