//! The server answering real `dig` queries over loopback, and surviving a
//! batch of malformed packets.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use banger_dns::{DnsServer, NameTable};

fn dig(addr: SocketAddr, name: &str, qtype: &str) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .args([
            "-p",
            &addr.port().to_string(),
            name,
            qtype,
            "+time=2",
            "+tries=1",
        ])
        .output()
        .expect("run dig");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn dig_short(addr: SocketAddr, name: &str) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .args([
            "-p",
            &addr.port().to_string(),
            name,
            "A",
            "+short",
            "+time=2",
            "+tries=1",
        ])
        .output()
        .expect("run dig");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn have_dig() -> bool {
    Command::new("dig").arg("-v").output().is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_real_queries_and_survives_garbage() {
    if !have_dig() {
        eprintln!("SKIP: dig not found (Debian package dnsutils)");
        return;
    }
    let table = NameTable::new();
    table
        .set("sandbox", Ipv4Addr::new(172, 16, 0, 2))
        .expect("valid");
    let server = DnsServer::bind("127.0.0.1:0".parse().expect("addr"), table.clone())
        .await
        .expect("bind");
    let handle = server.spawn(2).expect("spawn");
    let addr = handle.local_addr();

    let checks = tokio::task::spawn_blocking(move || {
        assert_eq!(dig_short(addr, "sandbox.vm"), "172.16.0.2");
        assert_eq!(dig_short(addr, "SANDBOX.VM."), "172.16.0.2");

        let out = dig(addr, "nope.vm", "A");
        assert!(out.contains("status: NXDOMAIN"), "{out}");
        assert!(out.contains(" aa"), "authoritative: {out}");

        let out = dig(addr, "example.com", "A");
        assert!(out.contains("status: REFUSED"), "{out}");
        let out = dig(addr, "sandbox.vm.example.com", "A");
        assert!(out.contains("status: REFUSED"), "{out}");

        let out = dig(addr, "sandbox.vm", "AAAA");
        assert!(
            out.contains("status: NOERROR") && out.contains("ANSWER: 0"),
            "{out}"
        );
        let out = dig(addr, "sandbox.vm", "TXT");
        assert!(
            out.contains("status: NOERROR") && out.contains("ANSWER: 0"),
            "{out}"
        );

        // Live updates: create, rename, delete.
        table
            .set("web", Ipv4Addr::new(172, 16, 0, 3))
            .expect("valid");
        assert_eq!(dig_short(addr, "web.vm"), "172.16.0.3");
        table.rename("web", "web2").expect("valid");
        assert_eq!(dig_short(addr, "web2.vm"), "172.16.0.3");
        assert!(dig(addr, "web.vm", "A").contains("status: NXDOMAIN"));
        table.remove("web2");
        assert!(dig(addr, "web2.vm", "A").contains("status: NXDOMAIN"));

        // Garbage: empty, short, a response, oversized, truncated
        // question, compression pointer in the question, random bytes.
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind client");
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let mut garbage: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0xff; 11],
            vec![0x12, 0x34, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1],
            vec![0x41; 5000],
            vec![0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0, 7, b's', b'a'],
            vec![
                0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1,
            ],
            vec![
                0x12, 0x34, 0x01, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ],
        ];
        let mut x: u32 = 0x9e37_79b9;
        for len in 0..200 {
            garbage.push(
                (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        x as u8
                    })
                    .collect(),
            );
        }
        for g in &garbage {
            s.send_to(g, addr).expect("send garbage");
        }
        // A truncated question with an intact header gets FORMERR.
        s.send_to(&garbage[5], addr).expect("send");
        let mut buf = [0u8; 600];
        let mut formerr = false;
        while let Ok((n, _)) = s.recv_from(&mut buf) {
            if n >= 12 && buf[..2] == [0x12, 0x34] && buf[3] & 0x0f == 1 {
                formerr = true;
            }
        }
        assert!(formerr, "no FORMERR for a truncated question");

        assert_eq!(
            dig_short(addr, "sandbox.vm"),
            "172.16.0.2",
            "still answering after garbage"
        );
    });
    tokio::time::timeout(Duration::from_secs(60), checks)
        .await
        .expect("dig checks timed out")
        .expect("dig checks");
    handle.shutdown();
}
