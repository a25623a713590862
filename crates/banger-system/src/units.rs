//! The two systemd units, rendered by pure functions.
//!
//! Why each directive is there (and why some hardening is deliberately
//! absent) is written in docs/privilege-model.md; comments here only point at
//! the non-obvious consequences.

use std::fmt::Write as _;

use crate::error::{Result, SystemError};
use crate::layout::{
    BIN_DIR, CACHE_DIR, DAEMON_UNIT, LIB_DIR, Owner, ROOT_SOCKET, ROOT_UNIT, RUNTIME_DIR, SOCKET,
    STATE_DIR,
};

/// Everything the unit text depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitParams {
    pub owner: Owner,
    /// Directory holding `bangerd` and `bangerd-root` (host path).
    pub bin_dir: String,
    /// Installed guest agent (host path), handed to the daemon.
    pub agent_path: String,
    /// `Some("kvm")` when the host has a kvm group.
    pub kvm_group: Option<String>,
    /// banger version, recorded in the header comment.
    pub version: String,
    /// The helper's network arguments (`--bridge …`), from the owner's
    /// config at install time.
    pub helper_args: Vec<String>,
}

impl UnitParams {
    /// The parameters of a standard install.
    pub fn standard(owner: Owner, kvm_group: Option<String>, version: &str) -> Self {
        UnitParams {
            owner,
            bin_dir: BIN_DIR.to_owned(),
            agent_path: format!("{LIB_DIR}/banger-vsock-agent"),
            kvm_group,
            version: version.to_owned(),
            helper_args: crate::helper_net::helper_net_args(&Default::default()),
        }
    }
}

/// A value placed verbatim into a unit line. systemd expands `%` specifiers
/// and `$VARS` in ExecStart and splits on whitespace, so only a conservative
/// character set is accepted rather than attempting to escape.
fn unit_value(v: &str) -> Result<&str> {
    let ok = !v.is_empty()
        && v.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+' | ':' | '@' | ',')
        });
    if ok {
        Ok(v)
    } else {
        Err(SystemError::UnitValue(v.to_owned()))
    }
}

fn absolute_path(v: &str) -> Result<&str> {
    if v.starts_with('/') {
        unit_value(v)
    } else {
        Err(SystemError::UnitValue(v.to_owned()))
    }
}

fn header(out: &mut String, unit: &str, version: &str) {
    let _ = writeln!(
        out,
        "# {unit}: rendered by `banger system install` (banger {version}).\n\
         # Re-running install rewrites this file; put local changes in a drop-in\n\
         # (`systemctl edit {unit}`) instead."
    );
}

/// `bangerd.service`: the owner daemon, unprivileged.
pub fn render_daemon_unit(p: &UnitParams) -> Result<String> {
    let bin_dir = absolute_path(&p.bin_dir)?;
    let agent = absolute_path(&p.agent_path)?;
    let user = unit_value(&p.owner.name)?;
    let group = unit_value(&p.owner.group)?;
    let mut s = String::new();
    header(&mut s, DAEMON_UNIT, &p.version);
    let _ = writeln!(
        s,
        "
[Unit]
Description=banger owner daemon (VM lifecycle, images, .vm DNS)
Wants={ROOT_UNIT}
After={ROOT_UNIT} network.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={bin_dir}/bangerd --socket {SOCKET} --state-dir {STATE_DIR} --cache-dir {CACHE_DIR} --runtime-dir {RUNTIME_DIR}
# `systemctl reload bangerd`: re-read config.toml (see `banger config reload`).
ExecReload=/bin/kill -HUP $MAINPID
Environment=BANGER_ROOT_SOCKET={ROOT_SOCKET}
Environment=BANGER_VSOCK_AGENT={agent}
User={user}
Group={group}"
    );
    if let Some(kvm) = &p.kvm_group {
        let _ = writeln!(s, "SupplementaryGroups={}", unit_value(kvm)?);
    }
    let _ = writeln!(
        s,
        "UMask=0077
StateDirectory=banger
StateDirectoryMode=0700
CacheDirectory=banger
CacheDirectoryMode=0700
RuntimeDirectory=banger
RuntimeDirectoryMode=0700
# VMs keep their API and vsock sockets here; they must survive a restart.
RuntimeDirectoryPreserve=yes
# Only the daemon is stopped on restart: its VMM children keep running and the
# next daemon re-adopts them.
KillMode=process
Restart=on-failure
RestartSec=2s
TimeoutStopSec=30s

# The .vm DNS server listens on the bridge gateway, port 53.
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
AmbientCapabilities=CAP_NET_BIND_SERVICE
NoNewPrivileges=yes
DevicePolicy=closed
DeviceAllow=/dev/kvm rw
DeviceAllow=/dev/net/tun rw
ProtectSystem=strict
ProtectHome=read-only
PrivateTmp=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
# Hides other users' processes; the daemon's VMMs run as the owner too.
ProtectProc=invisible
PrivateMounts=yes
RestrictRealtime=yes
LockPersonality=yes
RemoveIPC=yes
SystemCallArchitectures=native
SystemCallFilter=~@clock @debug @module @obsolete @raw-io @reboot @swap
SystemCallErrorNumber=EPERM
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_VSOCK
# Not set, on purpose: MemoryDenyWriteExecute (QEMU's TCG is a JIT),
# RestrictNamespaces (image builds unshare), RestrictSUIDSGID (a guest rootfs
# holds setuid files), ~@mount (unshare builds mount in their namespace).
# See docs/privilege-model.md.

[Install]
WantedBy=multi-user.target"
    );
    Ok(s)
}

/// `bangerd-root.service`: the root helper, bounded to CAP_NET_ADMIN.
pub fn render_root_unit(p: &UnitParams) -> Result<String> {
    let bin_dir = absolute_path(&p.bin_dir)?;
    let group = unit_value(&p.owner.group)?;
    let uid = p.owner.uid;
    let mut net = String::new();
    for a in &p.helper_args {
        net.push(' ');
        net.push_str(unit_value(a)?);
    }
    let mut s = String::new();
    header(&mut s, ROOT_UNIT, &p.version);
    let _ = writeln!(
        s,
        "
[Unit]
Description=banger root helper (bridge, taps, nftables and resolved wiring for bangerd)
Before={DAEMON_UNIT}

[Service]
Type=exec
ExecStart={bin_dir}/bangerd-root --socket {ROOT_SOCKET} --owner-uid {uid}{net}
# Root, with the owner's primary group: /run/banger-root is root:{group} 0750,
# the helper hands its socket to uid {uid} with mode 0600 and then admits
# only that uid (and root) by SO_PEERCRED.
Group={group}
UMask=0077
RuntimeDirectory=banger-root
RuntimeDirectoryMode=0750
Restart=on-failure
RestartSec=2s

# CAP_NET_ADMIN is what it works with. CAP_CHOWN, CAP_FOWNER and CAP_SETPCAP
# serve only its first moments (hand the socket to the owner, shrink its own
# bounding set); it drops them before accepting a connection.
CapabilityBoundingSet=CAP_NET_ADMIN CAP_CHOWN CAP_FOWNER CAP_SETPCAP
NoNewPrivileges=yes
DevicePolicy=closed
DeviceAllow=/dev/net/tun rw
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateIPC=yes
PrivateMounts=yes
ProtectProc=invisible
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
# ProtectKernelTunables is not set: the helper enables net.ipv4.ip_forward.
RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6
# AF_INET sockets serve interface ioctls only: no IP traffic at all.
IPAddressDeny=any
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
# Not ~@privileged: the helper drops its own capabilities with capset().
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM
RemoveIPC=yes

[Install]
WantedBy=multi-user.target"
    );
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> UnitParams {
        UnitParams::standard(
            Owner {
                name: "alice".into(),
                uid: 1000,
                gid: 1000,
                group: "alice".into(),
                home: "/home/alice".into(),
            },
            Some("kvm".into()),
            "0.1.0",
        )
    }

    #[test]
    fn daemon_unit_snapshot() {
        insta::assert_snapshot!(render_daemon_unit(&params()).expect("render"));
    }

    #[test]
    fn root_unit_snapshot() {
        insta::assert_snapshot!(render_root_unit(&params()).expect("render"));
    }

    #[test]
    fn no_kvm_group_means_no_supplementary_groups() {
        let mut p = params();
        p.kvm_group = None;
        let unit = render_daemon_unit(&p).expect("render");
        assert!(!unit.contains("SupplementaryGroups"));
        // Access to the device is still granted; the group only matters for
        // the file mode of /dev/kvm.
        assert!(unit.contains("DeviceAllow=/dev/kvm rw"));
    }

    #[test]
    fn values_that_could_escape_their_line_are_refused() {
        for bad in [
            "/opt/my bin",
            "/opt/$HOME",
            "/opt/%h",
            "relative/bin",
            "/a\nUser=root",
            "/a\"b",
        ] {
            let mut p = params();
            p.bin_dir = bad.into();
            assert!(
                matches!(render_daemon_unit(&p), Err(SystemError::UnitValue(_))),
                "{bad:?} accepted"
            );
            assert!(render_root_unit(&p).is_err(), "{bad:?} accepted");
        }
        let mut p = params();
        p.owner.group = "we ird".into();
        assert!(render_root_unit(&p).is_err());
    }

    #[test]
    fn root_unit_bounds_capabilities() {
        let unit = render_root_unit(&params()).expect("render");
        let caps: Vec<&str> = unit
            .lines()
            .filter(|l| {
                l.starts_with("CapabilityBoundingSet=") || l.starts_with("AmbientCapabilities=")
            })
            .collect();
        assert_eq!(
            caps,
            ["CapabilityBoundingSet=CAP_NET_ADMIN CAP_CHOWN CAP_FOWNER CAP_SETPCAP"]
        );
        assert!(
            !unit.lines().any(|l| l.starts_with("User=")),
            "the helper runs as root"
        );
    }
}
