//! Forwarding through the real server to a real upstream (dnsmasq on
//! loopback), answered for allowed clients only, SERVFAIL when no upstream
//! answers, the next upstream tried when one is dead.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use banger_dns::{DnsServer, ForwardClients, Forwarder, NameTable, UpstreamSource};

fn which(name: &str) -> bool {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .any(|d| std::path::Path::new(d).join(name).is_file())
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

/// dnsmasq on 127.0.0.1:`port` answering `name` with 198.18.0.7, nothing else.
fn dnsmasq(port: u16, name: &str) -> Dnsmasq {
    let child = Command::new("dnsmasq")
        .args(["--keep-in-foreground", "--no-resolv", "--no-hosts"])
        .args(["--listen-address=127.0.0.1", "--bind-interfaces"])
        .arg(format!("--port={port}"))
        .arg(format!("--address=/{name}/198.18.0.7"))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_outside_names_for_allowed_clients_only() {
    if !which("dig") || !which("dnsmasq") {
        eprintln!("SKIP: needs dig (dnsutils) and dnsmasq (dnsmasq-base)");
        return;
    }
    let up_port = free_port();
    let _upstream = dnsmasq(up_port, "outside.test");
    let dead: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let live: SocketAddr = ([127, 0, 0, 1], up_port).into();

    let table = NameTable::new();
    table
        .set("box", Ipv4Addr::new(172, 16, 0, 2))
        .expect("valid");
    let clients = ForwardClients::new();
    let fwd = Forwarder::new(UpstreamSource::Addrs(vec![dead, live]), clients.clone())
        .with_timeout(Duration::from_millis(500));
    let server = DnsServer::bind("127.0.0.1:0".parse().expect("addr"), table)
        .await
        .expect("bind")
        .with_forwarder(fwd);
    let handle = server.spawn(2).expect("spawn");
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
    let handle = DnsServer::bind("127.0.0.1:0".parse().expect("addr"), NameTable::new())
        .await
        .expect("bind")
        .with_forwarder(fwd)
        .spawn(1)
        .expect("spawn");
    let addr = handle.local_addr();
    tokio::task::spawn_blocking(move || {
        let out = dig(addr, "outside.test");
        assert!(out.contains("status: SERVFAIL"), "{out}");
    })
    .await
    .expect("checks");
    handle.shutdown();
}
