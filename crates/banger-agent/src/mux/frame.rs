//! The serial channel's frames and their byte encoding.
//!
//! A frame is `kind (u8) | stream id (u32, big endian) | payload`, COBS
//! encoded and written between two `0x00` bytes. COBS output never contains
//! `0x00`, so a reader that starts anywhere in the byte stream (a host that
//! connects to a guest restored in the middle of writing a frame, a guest
//! whose buffer still holds half a frame from the previous host) finds the
//! next frame boundary at the next `0x00` and drops the fragment it had: that
//! is what lets the channel resynchronise without a reliable "connection
//! start" from the transport.

use std::fmt;

/// Largest payload of a `Data` frame.
pub const MAX_DATA: usize = 32 * 1024;

/// Largest decoded frame: header plus the largest payload any kind carries
/// (a `HelloAck` carries a small JSON document, well under this).
pub const MAX_FRAME: usize = HEADER_LEN + MAX_DATA;

/// Largest encoded frame (COBS adds one byte per 254 plus one).
const MAX_ENCODED: usize = MAX_FRAME + MAX_FRAME / 254 + 2;

const HEADER_LEN: usize = 5;

/// What a frame means. Stream 0 carries the link-level kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Host → guest, stream 0: start a new session on this link. Payload:
    /// mux version (u32) and a nonce (u64). The guest drops every stream it
    /// has and answers `HelloAck` with the same nonce.
    Hello = 1,
    /// Guest → host, stream 0: mux version, the nonce, then the agent's
    /// `GuestHello` as JSON (the readiness announcement).
    HelloAck = 2,
    /// Guest → host, stream 0: the agent (re)started and has no streams;
    /// the host fails its streams and says `Hello` again.
    Announce = 3,
    /// Host → guest: a new stream with this id (one agent session).
    Open = 4,
    /// Bytes of a stream (at most [`MAX_DATA`]).
    Data = 5,
    /// The sender will send no more data on this stream.
    Fin = 6,
    /// The sender dropped the stream: no more data either way.
    Close = 7,
    /// The receiver consumed this many bytes (u32): the sender may send
    /// that many more.
    Credit = 8,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::HelloAck,
            3 => Kind::Announce,
            4 => Kind::Open,
            5 => Kind::Data,
            6 => Kind::Fin,
            7 => Kind::Close,
            8 => Kind::Credit,
            _ => return None,
        })
    }
}

/// One decoded frame.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?}(stream {}, {} bytes)",
            self.kind,
            self.stream,
            self.payload.len()
        )
    }
}

impl Frame {
    pub fn new(kind: Kind, stream: u32, payload: Vec<u8>) -> Frame {
        Frame {
            kind,
            stream,
            payload,
        }
    }

    /// `0x00`, the COBS encoding of the frame, `0x00`.
    pub fn encode(&self) -> Vec<u8> {
        let mut raw = Vec::with_capacity(HEADER_LEN + self.payload.len());
        raw.push(self.kind as u8);
        raw.extend_from_slice(&self.stream.to_be_bytes());
        raw.extend_from_slice(&self.payload);
        let mut out = Vec::with_capacity(raw.len() + raw.len() / 254 + 3);
        out.push(0);
        cobs_encode(&raw, &mut out);
        out.push(0);
        out
    }

    fn parse(raw: &[u8]) -> Option<Frame> {
        if raw.len() < HEADER_LEN || raw.len() > MAX_FRAME {
            return None;
        }
        let kind = Kind::from_u8(raw[0])?;
        let stream = u32::from_be_bytes([raw[1], raw[2], raw[3], raw[4]]);
        Some(Frame::new(kind, stream, raw[HEADER_LEN..].to_vec()))
    }

    /// A big-endian u32 payload (`Credit`).
    pub fn u32_payload(&self) -> Option<u32> {
        let b: [u8; 4] = self.payload.get(..4)?.try_into().ok()?;
        Some(u32::from_be_bytes(b))
    }
}

fn cobs_encode(src: &[u8], out: &mut Vec<u8>) {
    let mut code_at = out.len();
    out.push(0);
    let mut code = 1u8;
    for &b in src {
        if b == 0 {
            out[code_at] = code;
            code_at = out.len();
            out.push(0);
            code = 1;
        } else {
            out.push(b);
            code += 1;
            if code == 0xFF {
                out[code_at] = code;
                code_at = out.len();
                out.push(0);
                code = 1;
            }
        }
    }
    out[code_at] = code;
}

fn cobs_decode(src: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(src.len());
    let mut i = 0;
    while i < src.len() {
        let code = usize::from(src[i]);
        if code == 0 {
            return None;
        }
        let end = i + code;
        if end > src.len() {
            return None;
        }
        out.extend_from_slice(&src[i + 1..end]);
        i = end;
        if code < 0xFF && i < src.len() {
            out.push(0);
        }
    }
    Some(out)
}

/// Cuts a byte stream into frames. Fragments (a reader that started in the
/// middle of a frame) and anything malformed are dropped and counted, never
/// fatal: the next `0x00` starts afresh. Memory is bounded by one encoded
/// frame.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    overflow: bool,
    /// Chunks between delimiters that were not a valid frame.
    pub dropped: u64,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Forgets a partial frame (the link was reset).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.overflow = false;
    }

    /// Feeds bytes; calls `on_frame` for every complete, valid frame.
    pub fn feed(&mut self, mut bytes: &[u8], mut on_frame: impl FnMut(Frame)) {
        while !bytes.is_empty() {
            match bytes.iter().position(|&b| b == 0) {
                None => {
                    self.push(bytes);
                    return;
                }
                Some(z) => {
                    self.push(&bytes[..z]);
                    bytes = &bytes[z + 1..];
                    if self.overflow {
                        self.dropped += 1;
                    } else if !self.buf.is_empty() {
                        match cobs_decode(&self.buf).and_then(|raw| Frame::parse(&raw)) {
                            Some(f) => on_frame(f),
                            None => self.dropped += 1,
                        }
                    }
                    self.clear();
                }
            }
        }
    }

    fn push(&mut self, b: &[u8]) {
        if self.overflow {
            return;
        }
        if self.buf.len() + b.len() > MAX_ENCODED {
            self.overflow = true;
            self.buf.clear();
            return;
        }
        self.buf.extend_from_slice(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(bytes: &[u8]) -> (Vec<Frame>, u64) {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        d.feed(bytes, |f| out.push(f));
        (out, d.dropped)
    }

    #[test]
    fn cobs_edge_cases() {
        for src in [
            vec![],
            vec![0],
            vec![0, 0],
            vec![1; 254],
            vec![1; 255],
            vec![1; 508],
            [vec![1; 254], vec![0]].concat(),
        ] {
            let mut enc = Vec::new();
            cobs_encode(&src, &mut enc);
            assert!(!enc.contains(&0), "{src:?}");
            assert_eq!(cobs_decode(&enc).as_deref(), Some(&src[..]), "{src:?}");
        }
        assert_eq!(cobs_decode(&[5, 1]), None, "a code past the end");
    }

    #[test]
    fn a_fragment_before_a_frame_is_dropped_and_the_frame_kept() {
        let a = Frame::new(Kind::Data, 7, b"first frame".to_vec()).encode();
        let b = Frame::new(Kind::Fin, 7, vec![]).encode();
        // A reader that joined in the middle of `a`.
        let mut stream = a[6..].to_vec();
        stream.extend_from_slice(&b);
        let (frames, dropped) = decode_all(&stream);
        assert_eq!(frames, vec![Frame::new(Kind::Fin, 7, vec![])]);
        assert_eq!(dropped, 1);
        // A writer cut off in the middle of `a`, then a new frame.
        let mut stream = a[..a.len() - 4].to_vec();
        stream.extend_from_slice(&b);
        let (frames, _) = decode_all(&stream);
        assert_eq!(frames, vec![Frame::new(Kind::Fin, 7, vec![])]);
    }

    #[test]
    fn oversized_and_unknown_frames_are_dropped() {
        let mut raw = vec![1u8; MAX_ENCODED + 10];
        raw.push(0);
        raw.extend_from_slice(&Frame::new(Kind::Open, 1, vec![]).encode());
        let (frames, dropped) = decode_all(&raw);
        assert_eq!(frames, vec![Frame::new(Kind::Open, 1, vec![])]);
        assert_eq!(dropped, 1);
        let mut unknown = Vec::new();
        cobs_encode(&[99, 0, 0, 0, 1], &mut unknown);
        unknown.push(0);
        assert_eq!(decode_all(&unknown), (vec![], 1));
        let mut short = Vec::new();
        cobs_encode(&[5, 0], &mut short);
        short.push(0);
        assert_eq!(decode_all(&short), (vec![], 1));
    }

    proptest! {
        #[test]
        fn frames_round_trip_in_any_split(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..600), 1..6),
            cut in 1usize..97,
        ) {
            let frames: Vec<Frame> = payloads
                .into_iter()
                .enumerate()
                .map(|(i, p)| Frame::new(Kind::Data, i as u32, p))
                .collect();
            let bytes: Vec<u8> = frames.iter().flat_map(|f| f.encode()).collect();
            let mut d = Decoder::new();
            let mut got = Vec::new();
            for chunk in bytes.chunks(cut) {
                d.feed(chunk, |f| got.push(f));
            }
            prop_assert_eq!(got, frames);
            prop_assert_eq!(d.dropped, 0);
        }

        #[test]
        fn garbage_never_panics_and_resyncs(garbage in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut d = Decoder::new();
            d.feed(&garbage, |_| {});
            let good = Frame::new(Kind::Credit, 3, 65536u32.to_be_bytes().to_vec());
            let mut got = Vec::new();
            d.feed(&good.encode(), |f| got.push(f));
            prop_assert_eq!(got.last(), Some(&good));
        }
    }
}
