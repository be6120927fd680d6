//! Fuzzes the client-reply decoder: a byte stream as the client library
//! reads it from a broker, and a single frame body.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use ordo_wire::client::Reply;

/// Small enough that the fuzzer also hits the size limit often.
const MAX_FRAME: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = Reply::decode(&mut buf, MAX_FRAME) {}

    if let Ok(reply) = Reply::parse(&Bytes::copy_from_slice(data)) {
        let mut out = BytesMut::new();
        reply.encode(&mut out);
        let again = Reply::decode(&mut out, usize::MAX);
        assert_eq!(
            again,
            Ok(Some(reply)),
            "re-encoded reply did not round-trip"
        );
        assert!(out.is_empty());
    }
});
