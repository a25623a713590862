//! Streams over one link: per-stream buffers, credit-based flow control,
//! half-close, and resets that invalidate every stream of the old session.
//!
//! Both ends use this; what differs (who opens streams, the handshake) is in
//! the host's [`crate::serial`] and the guest's [`crate::guest_serial`].
//! Frames to send go to an unbounded queue tagged with the session epoch; the
//! transport's writer drops frames of an epoch that was reset, so nothing of
//! an old session leaks into a new one. The queue stays bounded in practice:
//! data is limited by each stream's credit ([`WINDOW`]).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

use super::frame::{Frame, Kind, MAX_DATA};

/// Bytes a sender may have unconsumed at the receiver, per stream.
pub const WINDOW: usize = 256 * 1024;

/// A frame to write, with the session epoch it belongs to.
#[derive(Debug)]
pub struct Outgoing {
    pub epoch: u64,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Default)]
struct Slot {
    rx: VecDeque<Vec<u8>>,
    rx_off: usize,
    rx_len: usize,
    rx_fin: bool,
    peer_closed: bool,
    local_fin: bool,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    /// Bytes we may still send.
    credit: usize,
    /// Bytes consumed since the last credit we granted.
    consumed: usize,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            credit: WINDOW,
            ..Slot::default()
        }
    }

    fn wake(&mut self) {
        if let Some(w) = self.read_waker.take() {
            w.wake();
        }
        if let Some(w) = self.write_waker.take() {
            w.wake();
        }
    }
}

#[derive(Debug)]
struct State {
    epoch: u64,
    streams: HashMap<u32, Slot>,
    /// Why the link is gone for good (host: the socket closed).
    dead: Option<String>,
}

/// The streams of one link.
#[derive(Debug)]
pub struct Link {
    state: Mutex<State>,
    /// Mirror of `State::epoch` for the writer, which must not lock per frame.
    epoch: AtomicU64,
    out: mpsc::UnboundedSender<Outgoing>,
}

impl Link {
    pub fn new() -> (Arc<Link>, mpsc::UnboundedReceiver<Outgoing>) {
        let (out, rx) = mpsc::unbounded_channel();
        let link = Link {
            state: Mutex::new(State {
                epoch: 0,
                streams: HashMap::new(),
                dead: None,
            }),
            epoch: AtomicU64::new(0),
            out,
        };
        (Arc::new(link), rx)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind: keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a frame of `epoch` may still be written.
    pub fn current(&self, epoch: u64) -> bool {
        self.epoch.load(Ordering::Acquire) == epoch
    }

    fn queue(&self, epoch: u64, f: Frame) {
        let _ = self.out.send(Outgoing {
            epoch,
            bytes: f.encode(),
        });
    }

    /// Queues a link-level frame in the current epoch.
    pub fn send(&self, f: Frame) {
        let st = self.lock();
        self.queue(st.epoch, f);
    }

    /// Ends the session: every stream fails (reads and writes error), the
    /// epoch moves on so their queued frames are not written. With
    /// `close_frames`, a `Close` for each is queued in the new epoch (the
    /// guest does this on a hangup: if the host is in fact still there, it
    /// learns its streams are gone instead of waiting forever).
    pub fn reset(&self, close_frames: bool) -> usize {
        let mut st = self.lock();
        st.epoch += 1;
        self.epoch.store(st.epoch, Ordering::Release);
        let streams = std::mem::take(&mut st.streams);
        let n = streams.len();
        for (id, mut slot) in streams {
            slot.wake();
            if close_frames {
                self.queue(st.epoch, Frame::new(Kind::Close, id, vec![]));
            }
        }
        n
    }

    /// Resets and refuses new streams from now on.
    pub fn kill(&self, why: &str) {
        self.lock().dead = Some(why.to_string());
        self.reset(false);
    }

    /// Why the link is dead, if it is.
    pub fn dead(&self) -> Option<String> {
        self.lock().dead.clone()
    }

    /// Number of live streams.
    pub fn streams(&self) -> usize {
        self.lock().streams.len()
    }

    /// Registers stream `id` (opened by us when `announce`, which sends
    /// `Open`; by the peer otherwise). `None` if the id is taken, the link is
    /// dead or already holds `max` streams.
    pub fn add_stream(self: &Arc<Self>, id: u32, announce: bool, max: usize) -> Option<MuxStream> {
        let mut st = self.lock();
        if st.dead.is_some() || st.streams.contains_key(&id) || st.streams.len() >= max {
            return None;
        }
        st.streams.insert(id, Slot::new());
        if announce {
            self.queue(st.epoch, Frame::new(Kind::Open, id, vec![]));
        }
        Some(MuxStream {
            link: self.clone(),
            id,
            epoch: st.epoch,
        })
    }

    /// Applies a stream frame from the peer (`Data`, `Fin`, `Close`,
    /// `Credit`). Frames for unknown streams are ignored (a stream we just
    /// dropped may still have data in flight). Returns false for a frame that
    /// is not a stream frame.
    pub fn deliver(&self, f: Frame) -> bool {
        let mut st = self.lock();
        let epoch = st.epoch;
        let id = f.stream;
        let Some(slot) = st.streams.get_mut(&id) else {
            return matches!(f.kind, Kind::Data | Kind::Fin | Kind::Close | Kind::Credit);
        };
        match f.kind {
            Kind::Data => {
                if slot.peer_closed || slot.rx_fin || f.payload.is_empty() {
                    return true;
                }
                if slot.rx_len + f.payload.len() > WINDOW {
                    // The peer ignored its credit: drop the stream.
                    tracing::warn!("agent channel: stream {id} overran its window; closing it");
                    slot.peer_closed = true;
                    slot.wake();
                    self.queue(epoch, Frame::new(Kind::Close, id, vec![]));
                    return true;
                }
                slot.rx_len += f.payload.len();
                slot.rx.push_back(f.payload);
                if let Some(w) = slot.read_waker.take() {
                    w.wake();
                }
            }
            Kind::Fin => {
                slot.rx_fin = true;
                if let Some(w) = slot.read_waker.take() {
                    w.wake();
                }
            }
            Kind::Close => {
                slot.peer_closed = true;
                slot.wake();
            }
            Kind::Credit => {
                let n = f.u32_payload().unwrap_or(0) as usize;
                slot.credit = (slot.credit + n).min(WINDOW);
                if let Some(w) = slot.write_waker.take() {
                    w.wake();
                }
            }
            _ => return false,
        }
        true
    }
}

/// One stream: an agent session's byte stream, like a vsock connection.
#[derive(Debug)]
pub struct MuxStream {
    link: Arc<Link>,
    id: u32,
    epoch: u64,
}

fn reset_err() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        "the agent channel was reset (the VM was restored, or the other side reconnected)",
    )
}

impl MuxStream {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Runs `f` on this stream's slot (`None` once the peer closed it and it
    /// was removed) under the lock, with the epoch to queue frames in.
    fn with_slot<T>(
        &self,
        f: impl FnOnce(&Link, u64, Option<&mut Slot>) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut st = self.link.lock();
        if st.epoch != self.epoch {
            return Err(reset_err());
        }
        let epoch = st.epoch;
        f(&self.link, epoch, st.streams.get_mut(&self.id))
    }
}

impl AsyncRead for MuxStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let id = self.id;
        let r = self.with_slot(|link, epoch, slot| {
            let Some(slot) = slot else {
                return Ok(true);
            };
            if slot.rx_len == 0 {
                if slot.rx_fin || slot.peer_closed {
                    return Ok(true);
                }
                slot.read_waker = Some(cx.waker().clone());
                return Ok(false);
            }
            while buf.remaining() > 0 {
                let Some(front) = slot.rx.front() else { break };
                let avail = &front[slot.rx_off..];
                let n = avail.len().min(buf.remaining());
                buf.put_slice(&avail[..n]);
                slot.rx_off += n;
                slot.rx_len -= n;
                slot.consumed += n;
                if slot.rx_off == front.len() {
                    slot.rx.pop_front();
                    slot.rx_off = 0;
                }
            }
            if slot.consumed >= WINDOW / 4 && !slot.peer_closed {
                let n = u32::try_from(slot.consumed).unwrap_or(u32::MAX);
                slot.consumed = 0;
                link.queue(
                    epoch,
                    Frame::new(Kind::Credit, id, n.to_be_bytes().to_vec()),
                );
            }
            Ok(true)
        });
        match r {
            Ok(true) => Poll::Ready(Ok(())),
            Ok(false) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for MuxStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let id = self.id;
        let r = self.with_slot(|link, epoch, slot| {
            let Some(slot) = slot.filter(|s| !s.peer_closed && !s.local_fin) else {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the agent stream is closed",
                ));
            };
            if slot.credit == 0 {
                slot.write_waker = Some(cx.waker().clone());
                return Ok(None);
            }
            let n = buf.len().min(slot.credit).min(MAX_DATA);
            slot.credit -= n;
            link.queue(epoch, Frame::new(Kind::Data, id, buf[..n].to_vec()));
            Ok(Some(n))
        });
        match r {
            Ok(Some(n)) => Poll::Ready(Ok(n)),
            Ok(None) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let id = self.id;
        let r = self.with_slot(|link, epoch, slot| {
            if let Some(slot) = slot
                && !slot.local_fin
            {
                slot.local_fin = true;
                if !slot.peer_closed {
                    link.queue(epoch, Frame::new(Kind::Fin, id, vec![]));
                }
            }
            Ok(())
        });
        Poll::Ready(r)
    }
}

impl Drop for MuxStream {
    fn drop(&mut self) {
        let mut st = self.link.lock();
        if st.epoch != self.epoch {
            return;
        }
        if let Some(slot) = st.streams.remove(&self.id)
            && !slot.peer_closed
        {
            self.link
                .queue(st.epoch, Frame::new(Kind::Close, self.id, vec![]));
        }
    }
}
