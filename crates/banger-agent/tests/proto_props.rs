//! Property tests on frame decoding: arbitrary bytes never panic, oversized
//! lengths are refused from the header alone, valid frames round-trip however
//! the bytes are split.

use banger_agent::wire::{WireError, read_frame};
use banger_proto::agent::{
    Frame, FrameDecoder, FrameError, FrameKind, GuestMsg, HostMsg, MAX_FRAME_PAYLOAD, encode_header,
};
use proptest::prelude::*;

fn kind() -> impl Strategy<Value = FrameKind> {
    prop_oneof![
        Just(FrameKind::Control),
        Just(FrameKind::Stdin),
        Just(FrameKind::Stdout),
        Just(FrameKind::Stderr),
        Just(FrameKind::Data),
    ]
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096), split in 1usize..64) {
        let mut d = FrameDecoder::new();
        for chunk in bytes.chunks(split) {
            d.push(chunk);
            while let Ok(Some(f)) = d.next_frame() {
                prop_assert!(f.payload.len() <= MAX_FRAME_PAYLOAD);
                let _ = f.message::<HostMsg>();
                let _ = f.message::<GuestMsg>();
            }
        }
        let _ = d.finish();
        // The async reader agrees it never panics either.
        let mut r = &bytes[..];
        let res = rt().block_on(async {
            loop {
                match read_frame(&mut r).await {
                    Ok(Some(_)) => continue,
                    other => return other.map(|_| ()),
                }
            }
        });
        let _ = res;
    }

    #[test]
    fn oversized_lengths_are_refused(len in (MAX_FRAME_PAYLOAD as u64 + 1)..=u32::MAX as u64, k in kind()) {
        let h = encode_header(k, len as usize);
        let mut d = FrameDecoder::new();
        d.push(&h);
        let is_too_large = matches!(d.next_frame(), Err(FrameError::TooLarge { .. }));
        prop_assert!(is_too_large);
        // Poisoned: later bytes cannot resynchronise the stream.
        d.push(&Frame::control(&HostMsg::Ping).expect("f").encode());
        prop_assert!(d.next_frame().is_err());
        let mut r = &h[..];
        let res = rt().block_on(read_frame(&mut r));
        let refused = matches!(res, Err(WireError::Frame(FrameError::TooLarge { .. })));
        prop_assert!(refused);
    }

    #[test]
    fn frames_round_trip_through_any_split(
        frames in proptest::collection::vec((kind(), proptest::collection::vec(any::<u8>(), 0..2048)), 0..8),
        split in 1usize..300,
    ) {
        let frames: Vec<Frame> = frames.into_iter().map(|(k, p)| Frame { kind: k, payload: p }).collect();
        let bytes: Vec<u8> = frames.iter().flat_map(|f| f.encode()).collect();
        let mut d = FrameDecoder::new();
        let mut out = Vec::new();
        for chunk in bytes.chunks(split) {
            d.push(chunk);
            while let Some(f) = d.next_frame().expect("valid stream") {
                out.push(f);
            }
        }
        prop_assert!(d.finish().is_ok());
        prop_assert_eq!(&out, &frames);
        // Cutting the stream anywhere inside the last frame is reported.
        if !frames.is_empty() {
            let cut = bytes.len() - 1;
            let mut d = FrameDecoder::new();
            d.push(&bytes[..cut]);
            while let Ok(Some(_)) = d.next_frame() {}
            let truncated = matches!(d.finish(), Err(FrameError::Truncated { .. }));
            prop_assert!(truncated);
        }
    }
}
