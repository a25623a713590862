//! Guest side of the serial agent channel: the agent serves its protocol on
//! the virtio-serial port named [`banger_proto::agent::AGENT_SERIAL_PORT`], each stream of the
//! [`crate::mux`] multiplexer one session exactly like a vsock connection.
//!
//! The port is a character device read and written by two blocking threads
//! (it is not a socket; the kernel's poll on it reports a hangup for as long
//! as the host is away). When the host side goes away (`read` returns 0: the
//! daemon restarted, or this guest was restored into a new QEMU) every
//! stream is dropped and the agent waits for the next `Hello`; a `Hello`
//! at any time also starts a clean session, because after a restore the
//! kernel may not report the hangup at all.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::mux::{
    Decoder, Frame, Kind, Link, MAX_STREAMS, MUX_VERSION, MuxStream, hello_payload, parse_hello,
};
use crate::server::{AgentConfig, guest_hello, serve_connection};

/// How often the reader looks again while the host side is disconnected
/// (the port reads EOF immediately then; there is nothing to block on).
const HANGUP_POLL: Duration = Duration::from_millis(50);

/// The device node of the virtio-serial port called `name`: udev's
/// `/dev/virtio-ports/<name>` link, or (no udev: banger-init) the `vport*`
/// node whose sysfs `name` matches.
pub fn find_port(name: &str) -> Option<PathBuf> {
    find_port_in(
        name,
        Path::new("/dev"),
        Path::new("/sys/class/virtio-ports"),
    )
}

fn find_port_in(name: &str, dev: &Path, sys: &Path) -> Option<PathBuf> {
    let link = dev.join("virtio-ports").join(name);
    if link.exists() {
        return Some(link);
    }
    std::fs::read_dir(sys).ok()?.flatten().find_map(|e| {
        let n = std::fs::read_to_string(e.path().join("name")).ok()?;
        let node = dev.join(e.file_name());
        (n.trim() == name && node.exists()).then_some(node)
    })
}

/// Finds the agent's port, loading the virtio console driver if it is not
/// there yet (Debian builds it as a module; udev may not have loaded it this
/// early). Waits at most `timeout`.
pub async fn wait_for_port(name: &str, timeout: Duration) -> Option<PathBuf> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut modprobed = false;
    loop {
        if let Some(p) = find_port(name) {
            return Some(p);
        }
        if !modprobed {
            modprobed = true;
            let _ = tokio::process::Command::new("modprobe")
                .arg("virtio_console")
                .stderr(std::process::Stdio::null())
                .status()
                .await;
            continue;
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Serves the agent on the port at `path` for as long as the agent runs.
pub async fn serve_port(path: &Path, cfg: Arc<AgentConfig>) -> Result<(), String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("cannot open the serial agent port {}: {e}", path.display()))?;
    let writer = file
        .try_clone()
        .map_err(|e| format!("cannot duplicate the serial port descriptor: {e}"))?;
    tracing::info!("serving on the serial port {}", path.display());
    serve_io(file, writer, cfg).await
}

/// Serves the agent over a port's two directions: `read` returns 0 while
/// the host side is disconnected (as a virtio-serial port does) and blocks
/// while it is connected and idle; `write` blocks while the host is away.
/// Returns only if the reader thread stops.
pub async fn serve_io<R, W>(read: R, write: W, cfg: Arc<AgentConfig>) -> Result<(), String>
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    let (link, out) = Link::new();
    let (opened_tx, mut opened) = mpsc::unbounded_channel();
    // Whatever host is there: this agent has no streams (it just started).
    link.send(Frame::new(Kind::Announce, 0, vec![]));
    {
        let link = link.clone();
        std::thread::Builder::new()
            .name("serial-writer".into())
            .spawn(move || write_loop(write, &link, out))
            .map_err(|e| format!("cannot start the serial writer: {e}"))?;
    }
    {
        let link = link.clone();
        std::thread::Builder::new()
            .name("serial-reader".into())
            .spawn(move || read_loop(read, &link, &opened_tx))
            .map_err(|e| format!("cannot start the serial reader: {e}"))?;
    }
    while let Some(s) = opened.recv().await {
        tokio::spawn(serve_connection(s, cfg.clone()));
    }
    Err("the serial port reader stopped".into())
}

fn write_loop(
    mut f: impl Write,
    link: &Link,
    mut out: mpsc::UnboundedReceiver<crate::mux::Outgoing>,
) {
    while let Some(o) = out.blocking_recv() {
        if !link.current(o.epoch) {
            continue;
        }
        // Blocks while the host is disconnected; a frame written then
        // reaches the next host, which ignores all before its handshake.
        if let Err(e) = f.write_all(&o.bytes) {
            tracing::warn!("writing the serial port: {e}");
            std::thread::sleep(HANGUP_POLL);
        }
    }
}

fn read_loop(mut f: impl Read, link: &Arc<Link>, opened: &mpsc::UnboundedSender<MuxStream>) {
    let mut d = Decoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut connected = true;
    loop {
        match f.read(&mut buf) {
            Ok(0) => {
                if connected {
                    connected = false;
                    d.clear();
                    // Close frames in case the host is in fact still there.
                    let n = link.reset(true);
                    tracing::info!("the host closed the serial channel; {n} session(s) dropped");
                }
                std::thread::sleep(HANGUP_POLL);
            }
            Ok(n) => {
                connected = true;
                d.feed(&buf[..n], |fr| on_frame(link, opened, fr));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!("reading the serial port: {e}");
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        if opened.is_closed() {
            return;
        }
    }
}

fn on_frame(link: &Arc<Link>, opened: &mpsc::UnboundedSender<MuxStream>, f: Frame) {
    match f.kind {
        Kind::Hello => {
            let Some((version, nonce, _)) = parse_hello(&f.payload) else {
                return;
            };
            let n = link.reset(false);
            if n > 0 {
                tracing::info!(
                    "a new host session on the serial channel; {n} old session(s) dropped"
                );
            }
            if version != MUX_VERSION {
                tracing::warn!(
                    "the host speaks serial mux version {version}, this agent {MUX_VERSION}"
                );
            }
            let mut payload = hello_payload(nonce);
            match serde_json::to_vec(&guest_hello()) {
                Ok(json) => payload.extend_from_slice(&json),
                Err(e) => tracing::warn!("encoding the hello: {e}"),
            }
            link.send(Frame::new(Kind::HelloAck, 0, payload));
        }
        Kind::Open => match link.add_stream(f.stream, false, MAX_STREAMS) {
            Some(s) => {
                let _ = opened.send(s);
            }
            None => {
                tracing::warn!("refusing agent stream {}", f.stream);
                link.send(Frame::new(Kind::Close, f.stream, vec![]));
            }
        },
        _ => {
            link.deliver(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_found_by_link_or_by_sysfs_name() {
        let t = tempfile::tempdir().expect("tempdir");
        let dev = t.path().join("dev");
        let sys = t.path().join("sys");
        std::fs::create_dir_all(dev.join("virtio-ports")).expect("mkdir");
        std::fs::create_dir_all(sys.join("vport0p1")).expect("mkdir");
        std::fs::create_dir_all(sys.join("vport0p2")).expect("mkdir");
        std::fs::write(sys.join("vport0p1/name"), "org.other\n").expect("write");
        std::fs::write(sys.join("vport0p2/name"), "banger.agent\n").expect("write");
        std::fs::write(dev.join("vport0p1"), "").expect("node");
        assert_eq!(find_port_in("banger.agent", &dev, &sys), None, "no node");
        std::fs::write(dev.join("vport0p2"), "").expect("node");
        assert_eq!(
            find_port_in("banger.agent", &dev, &sys),
            Some(dev.join("vport0p2"))
        );
        std::fs::write(dev.join("virtio-ports/banger.agent"), "").expect("link");
        assert_eq!(
            find_port_in("banger.agent", &dev, &sys),
            Some(dev.join("virtio-ports/banger.agent"))
        );
        assert_eq!(find_port_in("missing", &dev, &sys), None);
    }
}
