//! The real [`HostNet`]: rtnetlink for links and addresses, the tun ioctls
//! for taps, `nft -j -f -` for the firewall, `resolvectl` for DNS routing.
//! External programs are run from fixed system paths with argv and a
//! cleared environment — never through a shell, never from `$PATH`.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, RouteMessageBuilder};
use serde_json::Value;

use crate::alloc::bridge_mac;
use crate::host::{HostError, HostNet};
use crate::nft::TABLE;
use crate::routes::Route;

const NFT_PATHS: &[&str] = &["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"];
const RESOLVECTL_PATHS: &[&str] = &[
    "/usr/bin/resolvectl",
    "/bin/resolvectl",
    "/usr/sbin/resolvectl",
];

/// Host networking through the kernel. Needs CAP_NET_ADMIN in the current
/// network namespace.
pub struct RealHostNet {
    rt: tokio::runtime::Runtime,
}

fn nl_err(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> HostError {
    let op = op.into();
    move |e| HostError::Netlink {
        op,
        detail: e.to_string(),
    }
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code().abs() == errno)
}

async fn link_index(h: &Handle, name: &str) -> Result<Option<u32>, HostError> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(Some(msg.header.index)),
        Ok(None) => Ok(None),
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
        Err(e) => Err(nl_err(format!("look up link {name}"))(e)),
    }
}

/// The hardware address of link `index`.
async fn link_address(h: &Handle, index: u32) -> Result<Option<Vec<u8>>, HostError> {
    let mut links = h.link().get().match_index(index).execute();
    let msg = links
        .try_next()
        .await
        .map_err(nl_err(format!("look up link {index}")))?;
    Ok(msg.and_then(|m| {
        m.attributes.into_iter().find_map(|a| match a {
            LinkAttribute::Address(v) => Some(v),
            _ => None,
        })
    }))
}

async fn has_ipv4(h: &Handle, index: u32, addr: Ipv4Addr, prefix: u8) -> Result<bool, HostError> {
    let mut addrs = h.address().get().set_link_index_filter(index).execute();
    while let Some(msg) = addrs.try_next().await.map_err(nl_err("list addresses"))? {
        if msg.header.prefix_len != prefix {
            continue;
        }
        if msg
            .attributes
            .iter()
            .any(|a| matches!(a, AddressAttribute::Local(IpAddr::V4(ip)) if *ip == addr))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

fn find_program(
    candidates: &'static [&'static str],
    program: &'static str,
    package: &'static str,
) -> Result<&'static str, HostError> {
    candidates
        .iter()
        .copied()
        .find(|c| Path::new(c).exists())
        .ok_or_else(|| HostError::MissingProgram {
            program,
            searched: candidates.join(", "),
            package,
        })
}

fn run(program: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<String, HostError> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| HostError::Io {
        what: format!("start {program}"),
        source: e,
    })?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(data).map_err(|e| HostError::Io {
            what: format!("write to {program}"),
            source: e,
        })?;
    }
    let out = child.wait_with_output().map_err(|e| HostError::Io {
        what: format!("wait for {program}"),
        source: e,
    })?;
    if !out.status.success() {
        return Err(HostError::Command {
            program: format!("{program} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl RealHostNet {
    pub fn new() -> Result<Self, HostError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| HostError::Io {
                what: "start netlink runtime".into(),
                source: e,
            })?;
        Ok(RealHostNet { rt })
    }

    /// One netlink connection per operation: the helper handles a handful
    /// of operations per VM, and a fresh socket can never be left in a bad
    /// state by an earlier failure.
    fn with_handle<T>(
        &self,
        f: impl AsyncFnOnce(&Handle) -> Result<T, HostError>,
    ) -> Result<T, HostError> {
        self.rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| HostError::Io {
                what: "open netlink socket".into(),
                source: e,
            })?;
            let task = tokio::spawn(conn);
            let r = f(&handle).await;
            task.abort();
            r
        })
    }
}

// Linux tun ioctls (include/uapi/linux/if_tun.h), as in libc.
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn create_persistent_tap(name: &str, owner_uid: u32) -> Result<(), HostError> {
    let io = |op: &'static str| {
        let tap = name.to_string();
        move |source: std::io::Error| HostError::Tap { tap, op, source }
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(io("open /dev/net/tun"))?;
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
        _pad: [0; 22],
    };
    let bytes = name.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        return Err(io("name")(std::io::Error::from_raw_os_error(
            libc::ENAMETOOLONG,
        )));
    }
    req.name[..bytes.len()].copy_from_slice(bytes);
    let fd = file.as_raw_fd();
    // SAFETY: fd is an open /dev/net/tun; req is a properly sized, aligned
    // ifreq-compatible struct that outlives the call.
    if unsafe { libc::ioctl(fd, libc::TUNSETIFF, &mut req as *mut IfReqFlags) } < 0 {
        return Err(io("TUNSETIFF")(std::io::Error::last_os_error()));
    }
    // SAFETY: TUNSETOWNER and TUNSETPERSIST take an integer argument.
    if unsafe { libc::ioctl(fd, libc::TUNSETOWNER, owner_uid as libc::c_ulong) } < 0 {
        return Err(io("TUNSETOWNER")(std::io::Error::last_os_error()));
    }
    // SAFETY: as above.
    if unsafe { libc::ioctl(fd, libc::TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(io("TUNSETPERSIST")(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Run an `nft -j list …` query and parse its JSON.
fn nft_list(args: &[&str]) -> Result<Value, HostError> {
    let nft = find_program(NFT_PATHS, "nft", "nftables")?;
    let out = run(nft, args, None)?;
    serde_json::from_str(&out).map_err(|e| HostError::Command {
        program: format!("nft {}", args.join(" ")),
        status: "unparseable output".into(),
        stderr: e.to_string(),
    })
}

impl HostNet for RealHostNet {
    fn routes(&mut self) -> Result<Vec<Route>, HostError> {
        self.with_handle(async |h| {
            let mut names = std::collections::HashMap::new();
            let mut links = h.link().get().execute();
            while let Some(l) = links.try_next().await.map_err(nl_err("list links"))? {
                for a in &l.attributes {
                    if let LinkAttribute::IfName(n) = a {
                        names.insert(l.header.index, n.clone());
                    }
                }
            }
            // A dump with table UNSPEC returns the routes of every table
            // (`ip route show table all`), local and policy tables included.
            let mut msg = RouteMessageBuilder::<Ipv4Addr>::new().build();
            msg.header.table = RouteHeader::RT_TABLE_UNSPEC;
            let mut dump = h.route().get(msg).execute();
            let mut out = Vec::new();
            while let Some(r) = dump.try_next().await.map_err(nl_err("list routes"))? {
                let mut dest = Ipv4Addr::UNSPECIFIED;
                let mut dev = String::new();
                let mut table = u32::from(r.header.table);
                for a in &r.attributes {
                    match a {
                        RouteAttribute::Destination(RouteAddress::Inet(d)) => dest = *d,
                        RouteAttribute::Oif(i) => dev = names.get(i).cloned().unwrap_or_default(),
                        RouteAttribute::Table(t) => table = *t,
                        _ => {}
                    }
                }
                out.push(Route {
                    dest,
                    prefix: r.header.destination_prefix_length,
                    dev,
                    table,
                });
            }
            Ok(out)
        })
    }

    fn ensure_bridge(&mut self, name: &str, addr: Ipv4Addr, prefix: u8) -> Result<(), HostError> {
        self.with_handle(async |h| {
            let index = match link_index(h, name).await? {
                Some(i) => i,
                None => {
                    match h.link().add(LinkBridge::new(name).build()).execute().await {
                        Ok(()) => {}
                        // Lost a race with another create: fine.
                        Err(e) if is_errno(&e, libc::EEXIST) => {}
                        Err(e) => return Err(nl_err(format!("create bridge {name}"))(e)),
                    }
                    link_index(h, name)
                        .await?
                        .ok_or_else(|| HostError::Netlink {
                            op: format!("create bridge {name}"),
                            detail: "bridge missing right after creation".into(),
                        })?
                }
            };
            if !has_ipv4(h, index, addr, prefix).await? {
                match h
                    .address()
                    .add(index, IpAddr::V4(addr), prefix)
                    .execute()
                    .await
                {
                    Ok(()) => {}
                    Err(e) if is_errno(&e, libc::EEXIST) => {}
                    Err(e) => return Err(nl_err(format!("add {addr}/{prefix} to {name}"))(e)),
                }
            }
            // A fixed address: a bridge otherwise takes its lowest port's
            // MAC, so a tap joining or leaving would change the gateway's
            // MAC under every guest and flush the host's neighbour entries.
            let mac = bridge_mac(name).0.to_vec();
            if link_address(h, index).await?.as_deref() != Some(mac.as_slice()) {
                h.link()
                    .set(LinkUnspec::new_with_index(index).address(mac).build())
                    .execute()
                    .await
                    .map_err(nl_err(format!("set the address of {name}")))?;
            }
            h.link()
                .set(LinkUnspec::new_with_index(index).up().build())
                .execute()
                .await
                .map_err(nl_err(format!("bring {name} up")))
        })
    }

    fn delete_link(&mut self, name: &str) -> Result<(), HostError> {
        self.with_handle(async |h| {
            let Some(index) = link_index(h, name).await? else {
                return Ok(());
            };
            match h.link().del(index).execute().await {
                Ok(()) => Ok(()),
                Err(e) if is_errno(&e, libc::ENODEV) => Ok(()),
                Err(e) => Err(nl_err(format!("delete {name}"))(e)),
            }
        })
    }

    fn link_exists(&mut self, name: &str) -> Result<bool, HostError> {
        self.with_handle(async |h| Ok(link_index(h, name).await?.is_some()))
    }

    fn create_tap(&mut self, name: &str, owner_uid: u32) -> Result<(), HostError> {
        create_persistent_tap(name, owner_uid)
    }

    fn attach(&mut self, link: &str, bridge: &str) -> Result<(), HostError> {
        self.with_handle(async |h| {
            let missing = |what: &str| HostError::Netlink {
                op: format!("attach {link} to {bridge}"),
                detail: format!("{what} does not exist"),
            };
            let bi = link_index(h, bridge)
                .await?
                .ok_or_else(|| missing(bridge))?;
            let li = link_index(h, link).await?.ok_or_else(|| missing(link))?;
            h.link()
                .set(LinkUnspec::new_with_index(li).controller(bi).up().build())
                .execute()
                .await
                .map_err(nl_err(format!("attach {link} to {bridge}")))
        })
    }

    fn nft_apply(&mut self, batch: &Value) -> Result<(), HostError> {
        let nft = find_program(NFT_PATHS, "nft", "nftables")?;
        let text = batch.to_string();
        run(nft, &["-j", "-f", "-"], Some(text.as_bytes())).map(|_| ())
    }

    fn nft_tables(&mut self) -> Result<Vec<(String, String)>, HostError> {
        let v = nft_list(&["-j", "list", "tables"])?;
        Ok(v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let t = e.get("table")?;
                Some((
                    t["family"].as_str()?.to_string(),
                    t["name"].as_str()?.to_string(),
                ))
            })
            .collect())
    }

    fn nft_set_elements(&mut self, family: &str, set: &str) -> Result<Vec<Value>, HostError> {
        let v = match nft_list(&["-j", "list", "set", family, TABLE, set]) {
            Ok(v) => v,
            // No table or set yet: nothing registered.
            Err(HostError::Command { stderr, .. }) if stderr.contains("No such file") => {
                return Ok(Vec::new());
            }
            Err(e) => return Err(e),
        };
        Ok(v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e.get("set")?.get("elem")?.as_array().cloned())
            .flatten()
            .collect())
    }

    fn resolvectl(&mut self, args: &[String]) -> Result<(), HostError> {
        let prog = find_program(RESOLVECTL_PATHS, "resolvectl", "systemd-resolved")?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(prog, &args, None).map(|_| ())
    }

    fn set_ip_forward(&mut self, on: bool) -> Result<(), HostError> {
        std::fs::write(
            "/proc/sys/net/ipv4/ip_forward",
            if on { "1\n" } else { "0\n" },
        )
        .map_err(|e| HostError::Io {
            what: "write /proc/sys/net/ipv4/ip_forward".into(),
            source: e,
        })
    }
}
