//! Fuzzes the inter-broker frame decoder (`ordo_wire::group`): datagrams as
//! they arrive from the multicast group.
#![no_main]

use bytes::{BufMut, Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use ordo_wire::group::Frame;

fn check(datagram: &Bytes) {
    if let Ok(frame) = Frame::decode(datagram) {
        // Whatever decodes must re-encode to a datagram that decodes the same.
        let again = Frame::decode(&frame.encode());
        assert_eq!(again, Ok(frame), "re-encoded frame did not round-trip");
    }
}

fuzz_target!(|data: &[u8]| {
    // As received: almost always stopped by the checksum.
    check(&Bytes::copy_from_slice(data));

    // With a valid crc32c trailer appended, so the fuzzer explores the
    // header and body decoders behind the checksum.
    let mut sealed = BytesMut::with_capacity(data.len() + 4);
    sealed.put_slice(data);
    sealed.put_u32(crc32c::crc32c(data));
    check(&sealed.freeze());
});
