//! Frames over any async byte stream.

use banger_proto::agent::{
    FRAME_HEADER_LEN, Frame, FrameError, FrameKind, decode_header, encode_header,
};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Failure to read or write a frame.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("agent connection: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Reads one frame; `Ok(None)` on a clean end of stream between frames.
/// Oversized lengths are refused before any payload is read or allocated.
pub async fn read_frame<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
) -> Result<Option<Frame>, WireError> {
    let mut h = [0u8; FRAME_HEADER_LEN];
    let mut got = 0;
    while got < FRAME_HEADER_LEN {
        let n = r.read(&mut h[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(FrameError::Truncated {
                got,
                want: FRAME_HEADER_LEN,
            }
            .into());
        }
        got += n;
    }
    let (kind, len) = decode_header(h)?;
    let mut payload = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let n = r.read(&mut payload[got..]).await?;
        if n == 0 {
            return Err(FrameError::Truncated {
                got: FRAME_HEADER_LEN + got,
                want: FRAME_HEADER_LEN + len,
            }
            .into());
        }
        got += n;
    }
    Ok(Some(Frame { kind, payload }))
}

/// Writes one frame with raw payload (must be within the cap: callers cut
/// streams into [`banger_proto::agent::DATA_CHUNK`] pieces).
pub async fn write_data<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    kind: FrameKind,
    payload: &[u8],
) -> Result<(), WireError> {
    if payload.len() > banger_proto::agent::MAX_FRAME_PAYLOAD {
        return Err(FrameError::TooLarge {
            len: payload.len(),
            max: banger_proto::agent::MAX_FRAME_PAYLOAD,
        }
        .into());
    }
    // One buffer so a frame is one write: fewer syscalls and no interleaving
    // worries for callers that share a writer behind a lock.
    let mut buf = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    buf.extend_from_slice(&encode_header(kind, payload.len()));
    buf.extend_from_slice(payload);
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// Writes one control message.
pub async fn write_msg<W: AsyncWrite + Unpin + ?Sized, M: Serialize>(
    w: &mut W,
    msg: &M,
) -> Result<(), WireError> {
    let f = Frame::control(msg)?;
    write_data(w, FrameKind::Control, &f.payload).await
}
