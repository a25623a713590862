//! Closed-loop UDP DNS load generator for scripts/bench-dns: `clients`
//! threads each send an A query for a random `vm<i>.vm`, wait for the
//! answer, check it (same id, NOERROR, one answer) and repeat, for
//! `seconds`. Prints one line: `qps=… p50_us=… p99_us=… ok=… errors=…`.
//!
//! Usage: dns_load <server-addr> <names> <seconds> <clients>

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(40);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in name.split('.') {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn worker(server: SocketAddr, names: u32, until: Instant, seed: u32) -> (Vec<u32>, u64) {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind loader socket");
    sock.connect(server).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let mut lat = Vec::with_capacity(200_000);
    let mut errors = 0u64;
    let mut x = seed | 1;
    let mut buf = [0u8; 1500];
    let mut id: u16 = seed as u16;
    while Instant::now() < until {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        id = id.wrapping_add(1);
        let q = query(id, &format!("vm{}.vm", x % names));
        let t0 = Instant::now();
        if sock.send(&q).is_err() {
            errors += 1;
            continue;
        }
        match sock.recv(&mut buf) {
            Ok(n)
                if n >= 12
                    && buf[..2] == id.to_be_bytes()
                    && buf[3] & 0x0f == 0
                    && buf[6..8] == [0, 1] =>
            {
                lat.push(t0.elapsed().as_micros() as u32)
            }
            _ => errors += 1,
        }
    }
    (lat, errors)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 4 {
        eprintln!("usage: dns_load <server-addr> <names> <seconds> <clients>");
        std::process::exit(2);
    }
    let server: SocketAddr = args[0].parse().expect("server address");
    let names: u32 = args[1].parse().expect("names");
    let secs: u64 = args[2].parse().expect("seconds");
    let clients: u32 = args[3].parse().expect("clients");
    let start = Instant::now();
    let until = start + Duration::from_secs(secs);
    let handles: Vec<_> = (0..clients)
        .map(|c| std::thread::spawn(move || worker(server, names, until, 0x9e37_79b9 ^ (c * 7919))))
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for h in handles {
        let (l, e) = h.join().expect("worker");
        all.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "qps={:.0} p50_us={} p99_us={} ok={} errors={}",
        all.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        all.len(),
        errors
    );
}
