//! Feeds arbitrary bytes to the root helper's frame decoder as the helper
//! reads them (a line, at most `ROOT_MAX_FRAME` bytes). Invariants: no
//! panic; a decoded request re-encodes to a frame that decodes to the same
//! request; nothing above the cap is ever accepted.
#![no_main]

use banger_proto::root::{ROOT_MAX_FRAME, RootRequest, RootResponse, decode_frame, encode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = decode_frame::<RootRequest>(data) {
        assert!(data.len() <= ROOT_MAX_FRAME);
        let again = encode_frame(&req).expect("a decoded request encodes");
        let back: RootRequest = decode_frame(&again).expect("and decodes again");
        assert_eq!(back, req);
    }
    let _ = decode_frame::<RootResponse>(data);
});
