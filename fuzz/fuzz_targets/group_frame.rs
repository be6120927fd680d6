//! Fuzzes the inter-broker frame decoder (`ordo_wire::group`): datagrams as
//! they arrive from the multicast group, without and with a cluster key.
#![no_main]

use std::sync::OnceLock;

use bytes::{BufMut, Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use ordo_wire::group::{encode_raw_with, ClusterId, Flags, Frame, Header};
use ordo_wire::key::ClusterKey;
use ordo_wire::{Incarnation, NodeId, Origin, ViewId, WireError};

fn check(datagram: &Bytes, key: Option<&ClusterKey>) {
    if let Ok(frame) = Frame::decode_with(datagram, key) {
        // Whatever decodes must re-encode to a datagram that decodes the same.
        let again = Frame::decode_with(&frame.encode_with(key), key);
        assert_eq!(again, Ok(frame), "re-encoded frame did not round-trip");
    }
}

/// Two keys, so verification under the second (rotation) is exercised too.
fn key() -> &'static ClusterKey {
    static KEY: OnceLock<ClusterKey> = OnceLock::new();
    KEY.get_or_init(|| {
        ClusterKey::parse(b"fuzzing-key-one-0123456789\nfuzzing-key-two-0123456789")
            .unwrap_or_else(|e| panic!("constant key: {e}"))
    })
}

/// A header from the first bytes of `data`, and the rest as the body.
fn split(data: &[u8]) -> Option<(u8, Header, &[u8])> {
    let (h, body) = data.split_at_checked(1 + 1 + 8 + 4 + 8 + 8 + 4)?;
    let u64_at = |i: usize| u64::from_be_bytes(h[i..i + 8].try_into().unwrap_or_default());
    let u32_at = |i: usize| u32::from_be_bytes(h[i..i + 4].try_into().unwrap_or_default());
    let header = Header {
        flags: Flags(h[1]),
        cluster: ClusterId(u64_at(2)),
        sender: Origin {
            node: NodeId(u32_at(10)),
            incarnation: Incarnation(u64_at(14)),
        },
        view: ViewId(u64_at(22)),
        tag: u32_at(30),
        beat: 0,
    };
    Some((h[0], header, body))
}

fuzz_target!(|data: &[u8]| {
    // As received: almost always stopped by the checksum, or by the MAC.
    let raw = Bytes::copy_from_slice(data);
    check(&raw, None);
    check(&raw, Some(key()));

    // With a valid crc32c trailer appended, so the fuzzer explores the
    // header and body decoders behind the checksum.
    let mut sealed = BytesMut::with_capacity(data.len() + 4);
    sealed.put_slice(data);
    sealed.put_u32(crc32c::crc32c(data));
    check(&sealed.freeze(), None);

    // Signed with the cluster key (header fields from the input), so the
    // keyed decode path reaches the body decoders; an unkeyed broker
    // refuses it before reading anything.
    if let Some((kind, header, body)) = split(data) {
        let signed = encode_raw_with(kind, &header, body, Some(key()));
        check(&signed, Some(key()));
        assert_eq!(Frame::decode(&signed), Err(WireError::MacUnexpected));
        // The tag cut short is never accepted.
        let cut = signed.slice(..signed.len() - 1);
        assert!(Frame::decode_with(&cut, Some(key())).is_err());
    }
});
