//! Acting as a guest: attach to a tap the helper made (as a VMM does) and
//! write raw Ethernet frames into it, or read what the bridge delivers to
//! it; and UDP listeners inside a namespace that count what arrives.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Run `f` on a thread that has joined network namespace `ns`; sockets
/// and tap fds it creates stay in that namespace when used elsewhere.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let nsf = File::open(&path).expect("open netns");
        // SAFETY: setns on an open netns fd only moves this thread.
        let rc = unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("netns thread")
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Length of the virtio-net header the helper's taps carry (IFF_VNET_HDR).
const VNET_HDR: usize = 10;

/// The guest side of a tap.
pub struct Tap {
    file: File,
}

impl Tap {
    /// Attach to the existing tap `name` in namespace `ns`.
    pub fn open(ns: &str, name: &str) -> Tap {
        let name = name.to_string();
        in_netns(ns, move || {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
                .expect("open /dev/net/tun");
            let mut req = IfReq {
                name: [0; libc::IFNAMSIZ],
                flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
                _pad: [0; 22],
            };
            req.name[..name.len()].copy_from_slice(name.as_bytes());
            // SAFETY: a valid tun fd and an ifreq-sized struct.
            let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
            assert!(
                rc >= 0,
                "TUNSETIFF {name}: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: F_SETFL on our own fd.
            unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
            Tap { file }
        })
    }

    /// Send one Ethernet frame as the guest.
    pub fn send(&mut self, frame: &[u8]) {
        let mut buf = vec![0u8; VNET_HDR];
        buf.extend_from_slice(frame);
        self.file.write_all(&buf).expect("write frame to tap");
    }

    /// Whether a frame matching `pred` is delivered within `wait` (returns
    /// as soon as one is).
    pub fn saw(&mut self, mut pred: impl FnMut(&[u8]) -> bool, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            if self.received(Duration::ZERO).iter().any(|f| pred(f)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every frame delivered to the guest within `wait`.
    pub fn received(&mut self, wait: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            match self.file.read(&mut buf) {
                Ok(n) if n > VNET_HDR => out.push(buf[VNET_HDR..n].to_vec()),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return out;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("read tap: {e}"),
            }
        }
    }
}

/// A UDP socket bound in a namespace that reports what reached it.
pub struct Listener {
    sock: UdpSocket,
    pub addr: SocketAddr,
}

impl Listener {
    pub fn bind(ns: &str, addr: &str) -> Listener {
        let addr: SocketAddr = addr.parse().expect("addr");
        let sock = in_netns(ns, move || {
            UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"))
        });
        sock.set_nonblocking(true).expect("nonblocking");
        Listener { sock, addr }
    }

    /// Payloads received within `wait` (at least one poll).
    pub fn got(&self, wait: Duration) -> Vec<(Vec<u8>, SocketAddr)> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        loop {
            match self.sock.recv_from(&mut buf) {
                Ok((n, from)) => out.push((buf[..n].to_vec(), from)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return out;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("recv on {}: {e}", self.addr),
            }
        }
    }

    /// Whether a datagram carrying `tag` arrives within `wait` (returns as
    /// soon as it does; what arrives meanwhile is consumed).
    pub fn saw(&self, tag: &[u8], wait: Duration) -> bool {
        self.saw_all(&[tag], wait)
    }

    /// Whether datagrams carrying each of `tags` arrive within `wait`.
    pub fn saw_all(&self, tags: &[&[u8]], wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let mut seen = vec![false; tags.len()];
        loop {
            for (p, _) in self.got(Duration::ZERO) {
                for (i, t) in tags.iter().enumerate() {
                    seen[i] |= p == *t;
                }
            }
            if seen.iter().all(|s| *s) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The sender of the first datagram carrying `tag` within `wait`.
    pub fn first_from(&self, tag: &[u8], wait: Duration) -> Option<SocketAddr> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some((_, from)) = self.got(Duration::ZERO).into_iter().find(|(p, _)| p == tag) {
                return Some(from);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn send_to(&self, payload: &[u8], to: SocketAddr) {
        self.sock.send_to(payload, to).expect("send");
    }
}
