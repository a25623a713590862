//! "Ready" means what the user's next step needs is true: `/root` is the
//! VM's work disk, `authorized_keys` holds banger's key with modes sshd's
//! StrictModes accepts, sshd listens, the network is configured.
//!
//! Both halves live here so the rules have one home: [`collect`] runs in
//! the agent (guest side, `HostMsg::Readiness`) and only reads facts from
//! /proc and the filesystem (no tools: OCI images have none); [`judge`]
//! runs in the daemon and turns a report into the list of what is missing,
//! each phrased for the user.

use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use banger_proto::agent::{PathFacts, PathStat, ReadinessReport};

/// The guest's home and its ssh files, in report order.
pub const HOME_PATHS: [&str; 3] = ["/root", "/root/.ssh", "/root/.ssh/authorized_keys"];
/// Where images keep sshd (Debian's openssh-server; most OCI images).
const SSHD_PATHS: [&str; 2] = ["/usr/sbin/sshd", "/usr/bin/sshd"];
const MAX_KEYS_LEN: u64 = 64 * 1024;

/// Whether a `/proc/net/tcp{,6}` table has a socket listening on `port`.
pub fn listening_in(table: &str, port: u16) -> bool {
    let want = format!(":{port:04X}");
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1].ends_with(&want) && f[3] == "0A"
    })
}

/// Source of the filesystem mounted on `target` in `/proc/self/mounts`
/// text (the last mount wins, as the kernel stacks them).
pub fn mount_source(mounts: &str, target: &str) -> Option<String> {
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (src, dst) = (f.next()?, f.next()?);
            (dst == target).then(|| src.to_string())
        })
        .next_back()
}

/// Whether `/proc/net/route` text has an IPv4 default route (destination
/// and mask 0, the route up).
pub fn has_default_route(route: &str) -> bool {
    route.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let flags = f
            .get(3)
            .and_then(|x| u16::from_str_radix(x, 16).ok())
            .unwrap_or(0);
        f.len() > 7 && f[1] == "00000000" && f[7] == "00000000" && flags & 0x1 != 0
    })
}

fn stat(path: &str) -> PathFacts {
    PathFacts {
        path: path.to_string(),
        stat: std::fs::symlink_metadata(path).ok().map(|m| PathStat {
            mode: m.mode(),
            uid: m.uid(),
        }),
    }
}

fn ipv4_addresses() -> Vec<Ipv4Addr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter(|a| a.interface_name != "lo")
        .filter_map(|a| a.address?.as_sockaddr_in().map(|s| s.ip()))
        .collect()
}

/// The guest's report (agent side).
pub fn collect() -> ReadinessReport {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let keys = std::fs::File::open(HOME_PATHS[2])
        .map(|f| {
            use std::io::Read;
            let mut s = String::new();
            let _ = f.take(MAX_KEYS_LEN).read_to_string(&mut s);
            s
        })
        .unwrap_or_default();
    ReadinessReport {
        root_source: mount_source(&read("/proc/self/mounts"), "/root"),
        home: HOME_PATHS.iter().map(|p| stat(p)).collect(),
        authorized_keys: keys,
        sshd_installed: SSHD_PATHS.iter().any(|p| Path::new(p).is_file()),
        sshd_listening: ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .any(|t| listening_in(&read(t), 22)),
        ipv4: ipv4_addresses(),
        default_route: has_default_route(&read("/proc/net/route")),
    }
}

/// What the host expects of a guest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expect {
    /// The work disk's device in the guest (`/dev/vdb`); `None`: no work disk.
    pub work_device: Option<String>,
    /// The OpenSSH public key line that must be in authorized_keys.
    pub key: Option<String>,
    /// The address the guest must have.
    pub ip: Option<Ipv4Addr>,
    /// Whether a default route must exist (a gateway was given).
    pub gateway: bool,
}

/// The key's type and base64 body: comments do not matter to sshd.
fn key_id(line: &str) -> Option<(&str, &str)> {
    let mut w = line.split_whitespace();
    Some((w.next()?, w.next()?))
}

/// What is not ready, one user-facing phrase each; empty means ready.
pub fn judge(r: &ReadinessReport, want: &Expect) -> Vec<String> {
    let mut missing = Vec::new();
    if let Some(dev) = &want.work_device {
        match &r.root_source {
            Some(s) if s == dev => {}
            Some(s) => missing.push(format!(
                "/root is {s}, not the VM's work disk {dev} (its authorized_keys and files are missing)"
            )),
            None => missing.push(format!(
                "the work disk {dev} is not mounted on /root (its authorized_keys and files are missing)"
            )),
        }
    }
    if let Some(key) = want.key.as_deref().and_then(key_id) {
        for (i, f) in r.home.iter().enumerate() {
            let Some(st) = f.stat else {
                missing.push(format!("{} does not exist", f.path));
                continue;
            };
            let want_dir = i < 2;
            let kind = st.mode & 0o170000;
            let kind_ok = if want_dir {
                kind == 0o040000
            } else {
                kind == 0o100000
            };
            if !kind_ok {
                let what = if want_dir {
                    "directory"
                } else {
                    "regular file"
                };
                missing.push(format!("{} is not a {what}", f.path));
            } else if st.uid != 0 || st.mode & 0o022 != 0 {
                missing.push(format!(
                    "{} is owned by uid {} with mode {:o}; sshd's StrictModes needs root-owned and not group/other-writable",
                    f.path,
                    st.uid,
                    st.mode & 0o7777
                ));
            }
        }
        if !r.authorized_keys.lines().any(|l| key_id(l) == Some(key)) {
            missing.push("banger's ssh key is not in /root/.ssh/authorized_keys".into());
        }
        if r.sshd_installed && !r.sshd_listening {
            missing.push("sshd is not listening on port 22".into());
        }
    }
    if let Some(ip) = want.ip
        && !r.ipv4.contains(&ip)
    {
        missing.push(format!(
            "the network is not up: the guest does not have {ip}"
        ));
    }
    if want.ip.is_some() && want.gateway && !r.default_route {
        missing.push("the network is not up: the guest has no default route".into());
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey user@host";

    fn good() -> ReadinessReport {
        ReadinessReport {
            root_source: Some("/dev/vdb".into()),
            home: [
                (0o040700, "/root"),
                (0o040700, "/root/.ssh"),
                (0o100600, "/root/.ssh/authorized_keys"),
            ]
            .iter()
            .map(|(mode, p)| PathFacts {
                path: (*p).into(),
                stat: Some(PathStat {
                    mode: *mode,
                    uid: 0,
                }),
            })
            .collect(),
            authorized_keys: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey other-comment\n".into(),
            sshd_installed: true,
            sshd_listening: true,
            ipv4: vec![Ipv4Addr::new(172, 16, 0, 2)],
            default_route: true,
        }
    }

    fn expect() -> Expect {
        Expect {
            work_device: Some("/dev/vdb".into()),
            key: Some(KEY.into()),
            ip: Some(Ipv4Addr::new(172, 16, 0, 2)),
            gateway: true,
        }
    }

    #[test]
    fn a_ready_guest_has_no_problems() {
        assert_eq!(judge(&good(), &expect()), Vec::<String>::new());
    }

    #[test]
    fn each_missing_part_is_named() {
        // the measured failure: the work disk's mount timed out
        let mut r = good();
        r.root_source = None;
        r.home[2].stat = None;
        r.authorized_keys.clear();
        let p = judge(&r, &expect());
        assert!(
            p[0].contains("work disk /dev/vdb is not mounted on /root"),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m.contains("authorized_keys does not exist")),
            "{p:?}"
        );
        assert!(p.iter().any(|m| m.contains("key is not in")), "{p:?}");

        let mut r = good();
        r.home[1].stat = Some(PathStat {
            mode: 0o040777,
            uid: 0,
        });
        r.home[2].stat = Some(PathStat {
            mode: 0o100600,
            uid: 1000,
        });
        let p = judge(&r, &expect());
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].contains("/root/.ssh is owned by uid 0 with mode 777"),
            "{p:?}"
        );
        assert!(p[1].contains("uid 1000"), "{p:?}");

        let mut r = good();
        r.sshd_listening = false;
        r.ipv4.clear();
        r.default_route = false;
        let p = judge(&r, &expect());
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].contains("sshd is not listening"));
        assert!(p[1].contains("does not have 172.16.0.2"));
        assert!(p[2].contains("no default route"));

        let mut r = good();
        r.root_source = Some("/dev/vda".into());
        assert!(judge(&r, &expect())[0].contains("/root is /dev/vda"));
    }

    #[test]
    fn what_is_not_expected_is_not_checked() {
        // an image without sshd: no ssh checks fail on sshd
        let mut r = good();
        r.sshd_installed = false;
        r.sshd_listening = false;
        assert!(judge(&r, &expect()).is_empty());
        // no key given at create, no network
        let r = ReadinessReport {
            root_source: Some("/dev/vdb".into()),
            ..Default::default()
        };
        let e = Expect {
            work_device: Some("/dev/vdb".into()),
            ..Default::default()
        };
        assert!(judge(&r, &e).is_empty());
    }

    #[test]
    fn proc_tables() {
        let mounts =
            "/dev/vda / ext4 rw 0 0\nproc /proc proc rw 0 0\n/dev/vdb /root ext4 rw,relatime 0 0\n";
        assert_eq!(mount_source(mounts, "/root").as_deref(), Some("/dev/vdb"));
        assert_eq!(mount_source(mounts, "/home"), None);
        let route = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\neth0\t00000000\t010010AC\t0003\t0\t0\t0\t00000000\t0\t0\t0\neth0\t000010AC\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert!(has_default_route(route));
        let no_default = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\neth0\t000010AC\t00000000\t0001\t0\t0\t0\t00FFFFFF\n";
        assert!(!has_default_route(no_default));
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1\n   1: 0200A8C0:0016 0100A8C0:D431 01 00000000:00000000 00:00000000 00000000     0        0 2\n";
        assert!(listening_in(t, 22));
        assert!(!listening_in(t, 2222));
        let established_only = "hdr\n   1: 0200A8C0:0016 0100A8C0:D431 01 0 0 0 0 0 2\n";
        assert!(!listening_in(established_only, 22));
    }
}
