//! Feeds arbitrary bytes to the agent protocol's frame decoders (the
//! incremental `FrameDecoder` and the async `read_frame` the agent and client
//! use) and parses every complete control frame as both message directions.
//! Invariants: no panic, no frame above the cap, and both decoders agree.
#![no_main]

use banger_agent::wire::read_frame;
use banger_proto::agent::{FrameDecoder, GuestMsg, HostMsg, MAX_FRAME_PAYLOAD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte chooses how the input is split, to exercise partial
    // headers and payloads.
    let (split, bytes) = match data.split_first() {
        Some((s, rest)) => (usize::from(*s).max(1), rest),
        None => return,
    };
    let mut d = FrameDecoder::new();
    let mut from_decoder = Vec::new();
    'outer: for chunk in bytes.chunks(split) {
        d.push(chunk);
        loop {
            match d.next_frame() {
                Ok(Some(f)) => {
                    assert!(f.payload.len() <= MAX_FRAME_PAYLOAD);
                    let _ = f.message::<HostMsg>();
                    let _ = f.message::<GuestMsg>();
                    from_decoder.push(f);
                }
                Ok(None) => break,
                Err(_) => break 'outer,
            }
        }
    }
    let _ = d.finish();

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut r = bytes;
    let mut from_reader = Vec::new();
    rt.block_on(async {
        while let Ok(Some(f)) = read_frame(&mut r).await {
            from_reader.push(f);
        }
    });
    assert_eq!(from_decoder, from_reader, "decoders disagree");
});
