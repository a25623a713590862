//! `banger doctor`'s checks of guest egress: whether the host forwards
//! IPv4 (NAT routes nothing otherwise) and what resolver guests get. Kept
//! apart from the rest of doctor because the rules are banger-dns's
//! (`banger_dns::forward`), read the same way the daemon reads them.

use std::path::Path;

use banger_core::Config;
use banger_proto::{Check, CheckStatus};

fn check(name: &str, status: CheckStatus, detail: String, fix: Option<&str>) -> Check {
    Check {
        name: name.into(),
        status,
        detail,
        fix: (status != CheckStatus::Ok)
            .then(|| fix.map(str::to_string))
            .flatten(),
        required: false,
    }
}

/// `net.ipv4.ip_forward` as read from `/proc` (`None`: unreadable).
fn ip_forward() -> Option<bool> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
        .ok()
        .map(|s| s.trim() == "1")
}

pub fn checks(config: &Config, home: &Path) -> Vec<Check> {
    use CheckStatus::*;
    let mut v = Vec::new();
    let egress_off = config.egress_blocked().value;
    v.push(match ip_forward() {
        Some(true) => check("ip forwarding", Ok, "net.ipv4.ip_forward = 1".into(), None),
        Some(false) if egress_off => check(
            "ip forwarding",
            Ok,
            "net.ipv4.ip_forward = 0; [network] no_egress = true, so guests do not need it".into(),
            None,
        ),
        Some(false) => check(
            "ip forwarding",
            Warn,
            "net.ipv4.ip_forward = 0: guests reach nothing outside the host until bangerd-root turns it on, which it does when a VM with egress starts".into(),
            Some("if it stays 0 while VMs run, read bangerd-root's log (journalctl -u bangerd-root); by hand: sudo sysctl -w net.ipv4.ip_forward=1"),
        ),
        None => check(
            "ip forwarding",
            Warn,
            "cannot read /proc/sys/net/ipv4/ip_forward".into(),
            None,
        ),
    });
    let source = banger_dns::UpstreamSource::from_file(config.dns_upstream_file(home));
    let server = config.dns_socket_addr();
    let (file, upstreams) = source.read(Some(server));
    let names: Vec<String> = upstreams.iter().map(|a| a.ip().to_string()).collect();
    let ns = banger_dns::forward::guest_nameserver(Some(server), &source);
    let via_banger = ns.is_some_and(|n| std::net::IpAddr::V4(n) == server.ip());
    v.push(match ns {
        Some(_) if via_banger && upstreams.is_empty() => check(
            "guest dns",
            Warn,
            format!("guests ask banger at {server}, which answers .vm but has no upstream for other names: {} lists no nameserver", file.display()),
            Some("give the host a nameserver, or point [dns] upstream_resolv_conf at a resolv.conf that has one"),
        ),
        Some(ns) if via_banger => check(
            "guest dns",
            Ok,
            format!("guests ask banger at {ns}:53: .vm answered, other names forwarded to {} (from {})", names.join(", "), file.display()),
            None,
        ),
        Some(ns) => check(
            "guest dns",
            Warn,
            format!("[dns] port = {} is not 53, so guests use {ns} directly and cannot resolve .vm names", server.port()),
            Some("leave [dns] port at 53 so guests can use banger's resolver"),
        ),
        None => check(
            "guest dns",
            Warn,
            format!("guests get no resolver: [dns] port = {} is not 53 and {} has no nameserver a guest can reach", server.port(), file.display()),
            Some("leave [dns] port at 53, or give the host a non-loopback nameserver"),
        ),
    });
    v
}
