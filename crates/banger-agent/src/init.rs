//! `banger-init`: PID 1 for images that bring no init of their own (OCI
//! images: busybox, python:slim, ...). The daemon injects the static agent
//! binary as [`INIT_PATH`] and boots with `init=/sbin/banger-init`; the
//! binary runs this when it is PID 1 (or given `--init`).
//!
//! It does what systemd does for a Debian guest, minimally: mounts the API
//! filesystems and the work disk, sets the hostname and the network from the
//! kernel's `ip=` argument (ioctls only: the image needs no tools), starts
//! sshd when the image has one, runs the guest agent (restarting it if it
//! dies), reaps orphans, and powers off on SIGTERM/SIGUSR2/SIGPWR. The
//! agent's own shutdown request powers off directly (sync + reboot), as on
//! any guest whose PID 1 is not systemd.

use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Where the daemon installs the agent binary in OCI images.
pub const INIT_PATH: &str = "/sbin/banger-init";

/// The kernel argument that makes the kernel run [`INIT_PATH`].
pub const INIT_BOOT_ARG: &str = "init=/sbin/banger-init";

/// `PATH` for everything init starts (images' own `Env` comes per exec).
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Whether this process should be init: PID 1, or asked with `--init`.
pub fn wanted(args: &[String]) -> bool {
    std::process::id() == 1 || args.get(1).is_some_and(|a| a == "--init")
}

/// The kernel's `ip=<client>::<gw>:<mask>:<hostname>:<dev>:<autoconf>:<dns0>`
/// as the daemon writes it (see `Daemon::boot_args`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub client: Ipv4Addr,
    pub gateway: Option<Ipv4Addr>,
    pub netmask: Ipv4Addr,
    pub hostname: Option<String>,
    pub device: Option<String>,
    pub dns: Vec<Ipv4Addr>,
}

/// Finds and parses `ip=` on a kernel command line; `None` when absent or
/// not a static configuration (`ip=dhcp` and friends are not supported).
pub fn parse_ip_arg(cmdline: &str) -> Option<IpConfig> {
    let value = cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("ip="))
        .next_back()?;
    let f: Vec<&str> = value.split(':').collect();
    let field = |i: usize| f.get(i).copied().filter(|s| !s.is_empty());
    let client = field(0)?.parse().ok()?;
    let netmask = field(3)
        .and_then(|m| m.parse().ok())
        .unwrap_or(Ipv4Addr::new(255, 255, 255, 0));
    Some(IpConfig {
        client,
        gateway: field(2).and_then(|g| g.parse().ok()),
        netmask,
        hostname: field(4).map(str::to_string),
        device: field(5).map(str::to_string),
        dns: [field(7), field(8)]
            .into_iter()
            .flatten()
            .filter_map(|d| d.parse().ok())
            .collect(),
    })
}

fn log(msg: impl std::fmt::Display) {
    eprintln!("banger-init: {msg}");
}

// ------------------------------------------------------------------ mounts

fn mounted_targets() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect()
}

fn mount(src: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) {
    if mounted_targets().iter().any(|t| t == target) {
        return; // the initramfs moved it onto the new root already
    }
    let _ = std::fs::create_dir_all(target);
    let (Ok(s), Ok(t), Ok(f), Ok(d)) = (
        CString::new(src),
        CString::new(target),
        CString::new(fstype),
        CString::new(data),
    ) else {
        return;
    };
    // SAFETY: all pointers are valid NUL-terminated strings for the call.
    let r = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            f.as_ptr(),
            flags,
            d.as_ptr().cast::<libc::c_void>(),
        )
    };
    if r != 0 {
        log(format_args!(
            "cannot mount {fstype} on {target}: {}",
            std::io::Error::last_os_error()
        ));
    }
}

fn mount_all() {
    let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
    // /proc first: whether the others are mounted is read from it.
    if !Path::new("/proc/self").exists() {
        let _ = std::fs::create_dir_all("/proc");
        mount("proc", "/proc", "proc", nosuid_nodev | libc::MS_NOEXEC, "");
    }
    mount("sysfs", "/sys", "sysfs", nosuid_nodev | libc::MS_NOEXEC, "");
    mount("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755");
    mount(
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "mode=0620,gid=5,ptmxmode=0666",
    );
    mount("tmpfs", "/dev/shm", "tmpfs", nosuid_nodev, "mode=1777");
    mount("tmpfs", "/run", "tmpfs", nosuid_nodev, "mode=0755");
    mount("tmpfs", "/tmp", "tmpfs", nosuid_nodev, "mode=1777");
    // What udev would make; programs expect them.
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
        ("/dev/ptmx", "pts/ptmx"),
    ] {
        if std::fs::symlink_metadata(link).is_err() {
            let _ = std::os::unix::fs::symlink(target, link);
        }
    }
    // The VM's work disk is its /root (systemd guests get it from fstab).
    if Path::new("/dev/vdb").exists() {
        mount("/dev/vdb", "/root", "ext4", 0, "");
    }
}

// ------------------------------------------------------------------ network

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux; the
    // kernel reads an AF_INET sockaddr this way.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ifreq(dev: &str) -> Option<libc::ifreq> {
    let bytes = dev.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    Some(r)
}

/// The kernel's `struct rtentry` (linux/route.h); libc has it only for musl.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

struct Sock(libc::c_int);

impl Sock {
    fn new() -> std::io::Result<Sock> {
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Sock(fd))
    }

    fn ioctl<T>(&self, req: libc::c_ulong, arg: &mut T, what: &str) -> Result<(), String> {
        // SAFETY: `arg` is the struct this request reads/writes.
        let r = unsafe { libc::ioctl(self.0, req as _, arg as *mut T) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            // An address or route the kernel's own ip= already set is fine.
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(format!("{what}: {e}"));
            }
        }
        Ok(())
    }

    fn up(&self, dev: &str) -> Result<(), String> {
        let mut r = ifreq(dev).ok_or_else(|| format!("bad interface name {dev:?}"))?;
        self.ioctl(libc::SIOCGIFFLAGS, &mut r, "reading interface flags")?;
        // SAFETY: SIOCGIFFLAGS filled the flags member.
        unsafe { r.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        self.ioctl(libc::SIOCSIFFLAGS, &mut r, "bringing the interface up")
    }
}

impl Drop for Sock {
    fn drop(&mut self) {
        // SAFETY: closing the fd this value owns.
        unsafe { libc::close(self.0) };
    }
}

/// The interface `ip=` names if it exists, else the first non-loopback one
/// (udev in the initramfs may have renamed eth0).
fn pick_device(wanted: Option<&str>) -> Option<String> {
    if let Some(w) = wanted
        && Path::new("/sys/class/net").join(w).exists()
    {
        return Some(w.to_string());
    }
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    names.into_iter().next()
}

fn configure_network(cfg: Option<&IpConfig>) -> Result<(), String> {
    let s = Sock::new().map_err(|e| format!("socket: {e}"))?;
    s.up("lo")?;
    let Some(cfg) = cfg else {
        return Ok(());
    };
    let dev = pick_device(cfg.device.as_deref())
        .ok_or_else(|| "no network interface besides lo".to_string())?;
    let mut r = ifreq(&dev).ok_or_else(|| format!("bad interface name {dev:?}"))?;
    r.ifr_ifru.ifru_addr = sockaddr(cfg.client);
    s.ioctl(libc::SIOCSIFADDR, &mut r, "setting the address")?;
    r.ifr_ifru.ifru_netmask = sockaddr(cfg.netmask);
    s.ioctl(libc::SIOCSIFNETMASK, &mut r, "setting the netmask")?;
    s.up(&dev)?;
    if let Some(gw) = cfg.gateway {
        let mut devname = CString::new(dev.clone())
            .map_err(|_| "bad interface name".to_string())?
            .into_bytes_with_nul();
        let mut rt = RtEntry {
            rt_pad1: 0,
            rt_dst: sockaddr(Ipv4Addr::UNSPECIFIED),
            rt_gateway: sockaddr(gw),
            rt_genmask: sockaddr(Ipv4Addr::UNSPECIFIED),
            rt_flags: libc::RTF_UP | libc::RTF_GATEWAY,
            rt_pad2: 0,
            rt_pad3: 0,
            rt_pad4: std::ptr::null_mut(),
            rt_metric: 0,
            rt_dev: devname.as_mut_ptr().cast(),
            rt_mtu: 0,
            rt_window: 0,
            rt_irtt: 0,
        };
        s.ioctl(libc::SIOCADDRT, &mut rt, "adding the default route")?;
    }
    log(format_args!(
        "{dev}: {}/{} via {}",
        cfg.client,
        cfg.netmask,
        cfg.gateway.map(|g| g.to_string()).unwrap_or("-".into())
    ));
    if !cfg.dns.is_empty() {
        let text: String = cfg
            .dns
            .iter()
            .map(|d| format!("nameserver {d}\n"))
            .collect();
        // A symlink into systemd-resolved's /run would dangle here.
        if std::fs::symlink_metadata("/etc/resolv.conf").is_ok_and(|m| m.file_type().is_symlink()) {
            let _ = std::fs::remove_file("/etc/resolv.conf");
        }
        if let Err(e) = std::fs::write("/etc/resolv.conf", text) {
            log(format_args!("cannot write /etc/resolv.conf: {e}"));
        }
    }
    Ok(())
}

fn set_hostname(cfg: Option<&IpConfig>) {
    let name = cfg
        .and_then(|c| c.hostname.clone())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .filter(|n| !n.is_empty());
    if let Some(n) = name {
        // SAFETY: pointer and length describe `n`'s bytes.
        let r = unsafe { libc::sethostname(n.as_ptr().cast(), n.len()) };
        if r != 0 {
            log(format_args!(
                "cannot set the hostname: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
}

// ------------------------------------------------------------------ services

/// A process init keeps running, restarted (with backoff) when it exits.
struct Service {
    name: &'static str,
    argv0: &'static str,
    program: String,
    args: Vec<String>,
    child: Option<Child>,
    next_start: Instant,
    backoff: Duration,
}

impl Service {
    fn new(name: &'static str, argv0: &'static str, program: &str, args: &[&str]) -> Self {
        Service {
            name,
            argv0,
            program: program.to_string(),
            args: args.iter().map(|s| s.to_string()).collect(),
            child: None,
            next_start: Instant::now(),
            backoff: Duration::from_millis(500),
        }
    }

    fn ensure_running(&mut self) {
        if self.child.is_some() || Instant::now() < self.next_start {
            return;
        }
        let r = Command::new(&self.program)
            .arg0(self.argv0)
            .args(&self.args)
            .env_clear()
            .env("PATH", PATH)
            .env("HOME", "/root")
            .current_dir("/")
            .spawn();
        match r {
            Ok(c) => {
                log(format_args!("started {} (pid {})", self.name, c.id()));
                self.child = Some(c);
            }
            Err(e) => {
                log(format_args!("cannot start {}: {e}", self.name));
                self.exited();
            }
        }
    }

    fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    fn exited(&mut self) {
        self.child = None;
        self.next_start = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(Duration::from_secs(10));
    }
}

fn sigset(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, *s);
        }
    }
    set
}

fn power_off() -> ! {
    log("powering off");
    // SAFETY: kill(-1) signals every process but init itself.
    unsafe { libc::kill(-1, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        // SAFETY: reaping any child without blocking.
        let r = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if r < 0 {
            break; // no children left
        }
        if r == 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // SAFETY: as above.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    if let Ok(root) = CString::new("/root") {
        // SAFETY: valid path string.
        unsafe { libc::umount2(root.as_ptr(), 0) };
    }
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    // SAFETY: reboot(2) with a valid command; init never returns from here.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    log(format_args!(
        "reboot(RB_POWER_OFF) failed: {}",
        std::io::Error::last_os_error()
    ));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// How long sshd may take to listen before the agent starts regardless
/// (TCG guests load its libraries slowly).
const SSHD_START: Duration = Duration::from_secs(20);

enum Wait {
    Listening,
    /// The process exited (and was reaped).
    Exited,
    TimedOut,
}

/// Waits until something listens on TCP `port` (v4 or v6), giving up when
/// `pid` exits or after `timeout`.
fn wait_listening(port: u16, pid: i32, timeout: Duration) -> Wait {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        for t in ["/proc/net/tcp", "/proc/net/tcp6"] {
            if crate::readiness::listening_in(&std::fs::read_to_string(t).unwrap_or_default(), port)
            {
                return Wait::Listening;
            }
        }
        let mut status = 0;
        // SAFETY: non-blocking check on our own child; a zombie means it died.
        if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
            log(format_args!("sshd exited at start (status {status:#x})"));
            return Wait::Exited;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Wait::TimedOut
}

/// Runs init. Never returns: PID 1 exiting panics the kernel.
pub fn run() -> ! {
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0o022) };
    mount_all();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let ip = parse_ip_arg(&cmdline);
    set_hostname(ip.as_ref());
    if let Err(e) = configure_network(ip.as_ref()) {
        log(format_args!("network setup failed: {e}"));
    }
    if std::process::id() != 1 {
        // SAFETY: prctl with an integer argument.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    }
    // Signals are taken synchronously; children get an empty mask back
    // (std's spawn resets it).
    let set = sigset(&[
        libc::SIGCHLD,
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGUSR2,
        libc::SIGPWR,
    ]);
    // SAFETY: blocking signals for this (single) thread.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };

    let self_exe = std::fs::read_link("/proc/self/exe")
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| INIT_PATH.to_string());
    let mut services = Vec::new();
    let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd", "/sbin/sshd"]
        .into_iter()
        .find(|p| Path::new(p).is_file());
    if let Some(sshd) = sshd {
        // sshd's privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        // sshd re-executes itself and insists on an absolute argv[0].
        let mut svc = Service::new("sshd", sshd, sshd, &["-D", "-e"]);
        svc.ensure_running();
        // The agent's announcement is what the host calls "ready": make
        // that mean ssh works, as on systemd guests.
        if let Some(pid) = svc.pid() {
            match wait_listening(22, pid, SSHD_START) {
                Wait::Listening => {}
                // Reaped there: restarted by the main loop.
                Wait::Exited => svc.exited(),
                Wait::TimedOut => {
                    log("sshd is not listening on port 22 yet; starting the agent anyway")
                }
            }
        }
        services.push(svc);
    }
    services.push(Service::new(
        "guest agent",
        "banger-vsock-agent",
        &self_exe,
        &[],
    ));
    loop {
        for s in services.iter_mut() {
            s.ensure_running();
        }
        let timeout = libc::timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        // SAFETY: `set` and `info` are valid; waits at most `timeout`.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let sig = unsafe { libc::sigtimedwait(&set, &mut info, &timeout) };
        if matches!(
            sig,
            libc::SIGTERM | libc::SIGINT | libc::SIGUSR2 | libc::SIGPWR
        ) {
            power_off();
        }
        // Reap everything: our services and every orphan reparented to us.
        loop {
            let mut status = 0;
            // SAFETY: non-blocking wait for any child.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            for s in services.iter_mut() {
                if s.pid() == Some(pid) {
                    log(format_args!("{} exited (status {status:#x})", s.name));
                    // Already reaped; dropping a Child does not wait.
                    s.exited();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_arg_as_the_daemon_writes_it() {
        let c = parse_ip_arg(
            "console=ttyS0 root=/dev/vda rw ip=172.16.0.2::172.16.0.1:255.255.255.0:box:eth0:off:10.0.0.53 init=/sbin/banger-init",
        )
        .expect("parsed");
        assert_eq!(
            c,
            IpConfig {
                client: Ipv4Addr::new(172, 16, 0, 2),
                gateway: Some(Ipv4Addr::new(172, 16, 0, 1)),
                netmask: Ipv4Addr::new(255, 255, 255, 0),
                hostname: Some("box".into()),
                device: Some("eth0".into()),
                dns: vec![Ipv4Addr::new(10, 0, 0, 53)],
            }
        );
    }

    #[test]
    fn ip_arg_without_dns_or_gateway() {
        let c = parse_ip_arg("ip=10.1.2.3:::255.255.0.0:h:eth0:off:").expect("parsed");
        assert_eq!(c.gateway, None);
        assert_eq!(c.netmask, Ipv4Addr::new(255, 255, 0, 0));
        assert!(c.dns.is_empty());
    }

    #[test]
    fn ip_arg_absent_or_dynamic() {
        assert_eq!(parse_ip_arg("console=ttyS0 quiet"), None);
        assert_eq!(parse_ip_arg("ip=dhcp"), None);
        assert_eq!(parse_ip_arg("ip=off"), None);
    }

    #[test]
    fn sockaddr_is_network_order() {
        let sa = sockaddr(Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(sa.sa_family, libc::AF_INET as libc::sa_family_t);
        // sa_data: 2 port bytes, then the address as written
        assert_eq!(&sa.sa_data[2..6], &[10, 0, 0, 1]);
    }

    #[test]
    fn not_init_in_tests() {
        assert!(!wanted(&["x".into()]));
        assert!(wanted(&["x".into(), "--init".into()]));
    }
}
