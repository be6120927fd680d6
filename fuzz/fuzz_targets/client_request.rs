//! Fuzzes the client-request decoder: a byte stream as a broker reads it
//! from a client socket, and a single frame body.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use ordo_wire::client::Request;

/// Small enough that the fuzzer also hits the size limit often.
const MAX_FRAME: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    // As a stream: decode frames until the decoder wants more or refuses.
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = Request::decode(&mut buf, MAX_FRAME) {}

    // As one body: whatever parses must re-encode to something that parses
    // back to the same value.
    if let Ok(req) = Request::parse(&Bytes::copy_from_slice(data)) {
        let mut out = BytesMut::new();
        req.encode(&mut out);
        let again = Request::decode(&mut out, usize::MAX);
        assert_eq!(
            again,
            Ok(Some(req)),
            "re-encoded request did not round-trip"
        );
        assert!(out.is_empty());
    }
});
