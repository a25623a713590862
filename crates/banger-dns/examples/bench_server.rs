//! Serve the `.vm` zone with N synthetic VMs, for scripts/bench-dns.
//!
//! Usage: bench_server <listen-addr> <count>
//! Names are vm0 … vm{count-1}; vm{i} → 172.16.{i / 250}.{i % 250 + 2}
//! (scripts/bench-dns writes the same mapping into dnsmasq's hosts file).
//! Prints `READY <addr>` once it is serving, then serves until killed.

use std::net::{Ipv4Addr, SocketAddr};

use banger_dns::{DnsServer, NameTable};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .ok_or("usage: bench_server <listen-addr> <count>")?
        .parse()?;
    let count: u32 = args
        .next()
        .ok_or("usage: bench_server <listen-addr> <count>")?
        .parse()?;
    let table = NameTable::new();
    for i in 0..count {
        let ip = Ipv4Addr::new(172, 16, (i / 250) as u8, (i % 250 + 2) as u8);
        table.set(&format!("vm{i}"), ip)?;
    }
    let server = DnsServer::bind(addr, table).await?;
    let handle = server.spawn(2)?;
    println!("READY {}", handle.local_addr());
    std::future::pending::<()>().await;
    Ok(())
}
