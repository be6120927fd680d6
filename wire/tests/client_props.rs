//! Property tests for the client protocol codec: every frame round-trips,
//! truncation is "need more bytes" (stream) or an error (body), arbitrary and
//! mutated input never panics, and the size limit is enforced before anything
//! is buffered. The fuzz targets in `fuzz/` reach the same decoders.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{Bytes, BytesMut};
use ordo_wire::client::{
    frame_len, ClusterView, Delivery, ErrorCode, Limits, MembershipState, Reply, Request,
    ViewStatus, LEN_PREFIX,
};
use ordo_wire::{
    CausalContext, GlobalSeq, Incarnation, NodeId, Ordering, Origin, Seq, ViewId, WireError,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

/// Generous enough for every generated frame; limits get their own tests.
const MAX: usize = 1 << 24;

fn text() -> impl Strategy<Value = String> {
    // Unicode of any width; u16 length prefixes are far from reached here
    // (the long-string case has its own test).
    prop_oneof![".{0,40}", "[a-z.*>]{0,20}"]
}

fn payload() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..300).prop_map(Bytes::from)
}

fn ordering() -> impl Strategy<Value = Ordering> {
    prop::sample::select(Ordering::ALL.to_vec())
}

fn origin() -> impl Strategy<Value = Origin> {
    (any::<u32>(), any::<u64>()).prop_map(|(n, i)| Origin {
        node: NodeId(n),
        incarnation: Incarnation(i),
    })
}

fn context() -> impl Strategy<Value = CausalContext> {
    // Few distinct nodes so duplicates (kept at their maximum) happen too.
    vec(
        ((0u32..4, 0u64..3), any::<u64>()).prop_map(|((n, i), s)| {
            (
                Origin {
                    node: NodeId(n),
                    incarnation: Incarnation(i),
                },
                Seq(s),
            )
        }),
        0..6,
    )
    .prop_map(CausalContext::from_entries)
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (any::<u16>(), option::of(text()), text()).prop_map(|(version, token, name)| {
            Request::Hello {
                version,
                token,
                name,
            }
        }),
        (any::<u64>(), text(), ordering(), any::<bool>()).prop_map(
            |(req, topic, ordering, safe)| Request::Declare {
                req,
                topic,
                ordering,
                safe
            }
        ),
        (any::<u64>(), any::<u64>(), text()).prop_map(|(req, sid, pattern)| Request::Subscribe {
            req,
            sid,
            pattern
        }),
        (any::<u64>(), any::<u64>()).prop_map(|(req, sid)| Request::Unsubscribe { req, sid }),
        (option::of(any::<u64>()), text(), context(), payload()).prop_map(
            |(confirm, topic, context, payload)| Request::Publish {
                confirm,
                topic,
                context,
                payload
            }
        ),
        any::<u64>().prop_map(|req| Request::ListTopics { req }),
        any::<u64>().prop_map(|req| Request::Cluster { req }),
        any::<u64>().prop_map(|nonce| Request::Ping { nonce }),
        any::<u64>().prop_map(|nonce| Request::Pong { nonce }),
    ]
}

fn delivery() -> impl Strategy<Value = Delivery> {
    (
        (any::<u64>(), text(), ordering(), any::<u64>(), origin()),
        (any::<u64>(), context(), option::of(any::<u64>()), payload()),
    )
        .prop_map(
            |((sid, topic, ordering, publisher, origin), (seq, context, gseq, payload))| Delivery {
                sid,
                topic,
                ordering,
                publisher,
                origin,
                seq: Seq(seq),
                context,
                gseq: gseq.map(GlobalSeq),
                payload,
            },
        )
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        (
            any::<u16>(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>()
        )
            .prop_map(|(version, node, inc, client_id, max_frame, max_payload)| {
                Reply::Welcome {
                    version,
                    node: NodeId(node),
                    incarnation: Incarnation(inc),
                    client_id,
                    limits: Limits {
                        max_frame,
                        max_payload,
                    },
                }
            }),
        any::<u64>().prop_map(|req| Reply::Ok { req }),
        // Through from_code so known codes are their named variants and
        // unknown ones `Other`, as a decoder produces them.
        (any::<u64>(), any::<u16>(), text()).prop_map(|(req, code, message)| Reply::Error {
            req,
            code: ErrorCode::from_code(code),
            message
        }),
        delivery().prop_map(|d| Reply::Message(Box::new(d))),
        (any::<u64>(), any::<u64>(), any::<u64>(), text()).prop_map(|(sid, from, to, reason)| {
            Reply::Discontinuity {
                sid,
                from_view: ViewId(from),
                to_view: ViewId(to),
                reason,
            }
        }),
        (
            any::<u64>(),
            vec(
                (text(), ordering(), any::<bool>()).prop_map(|(name, ordering, safe)| {
                    ordo_wire::client::TopicInfo {
                        name,
                        ordering,
                        safe,
                    }
                }),
                0..5
            )
        )
            .prop_map(|(req, topics)| Reply::Topics { req, topics }),
        (
            any::<u64>(),
            any::<u64>(),
            origin(),
            vec(origin(), 0..6),
            any::<u32>(),
            option::of(any::<u32>()),
            option::of((any::<u8>(), any::<bool>()))
        )
            .prop_map(
                |(req, view_id, this, members, coordinator, sequencer, status)| {
                    Reply::Cluster {
                        req,
                        view: ClusterView {
                            view_id: ViewId(view_id),
                            this,
                            members,
                            coordinator: NodeId(coordinator),
                            sequencer: sequencer.map(NodeId),
                            status: status.map(|(code, primary)| ViewStatus {
                                state: MembershipState::from_code(code),
                                primary,
                            }),
                        },
                    }
                }
            ),
        any::<u64>().prop_map(|nonce| Reply::Ping { nonce }),
        any::<u64>().prop_map(|nonce| Reply::Pong { nonce }),
    ]
}

fn encoded_request(r: &Request) -> BytesMut {
    let mut out = BytesMut::new();
    r.encode(&mut out);
    out
}

fn encoded_reply(r: &Reply) -> BytesMut {
    let mut out = BytesMut::new();
    r.encode(&mut out);
    out
}

/// Both directions share the framing; these tests run once per side.
trait Frame: Sized + PartialEq + std::fmt::Debug {
    fn encode(&self, out: &mut BytesMut);
    fn decode(buf: &mut BytesMut, max: usize) -> Result<Option<Self>, WireError>;
    fn parse(body: &Bytes) -> Result<Self, WireError>;
    /// The frame as a peer that predates its trailing optional fields sends
    /// it, and how many bytes shorter its body is; `None` if it has none.
    fn without_tail(&self) -> Option<(Self, usize)> {
        None
    }
}

impl Frame for Request {
    fn encode(&self, out: &mut BytesMut) {
        Request::encode(self, out)
    }
    fn decode(buf: &mut BytesMut, max: usize) -> Result<Option<Self>, WireError> {
        Request::decode(buf, max)
    }
    fn parse(body: &Bytes) -> Result<Self, WireError> {
        Request::parse(body)
    }
}

impl Frame for Reply {
    fn encode(&self, out: &mut BytesMut) {
        Reply::encode(self, out)
    }
    fn decode(buf: &mut BytesMut, max: usize) -> Result<Option<Self>, WireError> {
        Reply::decode(buf, max)
    }
    fn parse(body: &Bytes) -> Result<Self, WireError> {
        Reply::parse(body)
    }
    fn without_tail(&self) -> Option<(Self, usize)> {
        // A cluster view's status (state code, primary flag) comes last.
        match self {
            Reply::Cluster { req, view } if view.status.is_some() => {
                let mut old = view.clone();
                old.status = None;
                Some((
                    Reply::Cluster {
                        req: *req,
                        view: old,
                    },
                    2,
                ))
            }
            _ => None,
        }
    }
}

fn check_round_trip<F: Frame>(frame: &F) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::new();
    frame.encode(&mut buf);
    let announced = frame_len(&buf, MAX).unwrap().unwrap();
    prop_assert_eq!(announced + LEN_PREFIX, buf.len());
    let got = F::decode(&mut buf, MAX).unwrap();
    prop_assert_eq!(got.as_ref(), Some(frame));
    prop_assert!(buf.is_empty(), "decode left {} bytes", buf.len());
    Ok(())
}

fn check_truncations<F: Frame>(frame: &F) -> Result<(), TestCaseError> {
    let mut whole = BytesMut::new();
    frame.encode(&mut whole);
    let whole = whole.freeze();
    // The stream: any prefix is "need more bytes" and consumes nothing.
    for cut in 0..whole.len() {
        let mut buf = BytesMut::from(&whole[..cut]);
        prop_assert_eq!(F::decode(&mut buf, MAX), Ok(None), "cut at {}", cut);
        prop_assert_eq!(buf.len(), cut, "a partial frame was consumed");
    }
    // The body: any strict prefix is an error, never a panic or a shorter
    // frame, except exactly without its optional tail: the older frame.
    let body = whole.slice(LEN_PREFIX..);
    let tail = frame.without_tail();
    for cut in 0..body.len() {
        let r = F::parse(&body.slice(..cut));
        match &tail {
            Some((old, n)) if cut == body.len() - n => {
                prop_assert_eq!(r.as_ref(), Ok(old), "body cut at {}", cut);
            }
            _ => prop_assert!(r.is_err(), "body cut at {} parsed as {:?}", cut, r),
        }
    }
    Ok(())
}

/// Whatever parses must survive its own re-encoding unchanged (the decoder
/// may canonicalise, e.g. sort a causal context, but only once).
fn check_reencode<F: Frame>(body: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(frame) = F::parse(&Bytes::copy_from_slice(body)) {
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        let again = F::decode(&mut buf, MAX).unwrap();
        prop_assert_eq!(again.as_ref(), Some(&frame));
    }
    Ok(())
}

/// Feeds `bytes` to a streaming decoder in the given chunk sizes, as a socket would.
fn decode_stream<F: Frame>(bytes: &[u8], chunks: &[usize]) -> Result<Vec<F>, WireError> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut sizes = chunks.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        while let Some(f) = F::decode(&mut buf, MAX)? {
            out.push(f);
        }
    }
    assert!(buf.is_empty(), "bytes left over after the last frame");
    Ok(out)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn requests_round_trip(r in request()) {
        check_round_trip(&r)?;
    }

    #[test]
    fn replies_round_trip(r in reply()) {
        check_round_trip(&r)?;
    }

    #[test]
    fn truncated_requests_need_more_or_fail(r in request()) {
        check_truncations(&r)?;
    }

    #[test]
    fn truncated_replies_need_more_or_fail(r in reply()) {
        check_truncations(&r)?;
    }

    #[test]
    fn frames_back_to_back_decode_in_order(
        reqs in vec(request(), 1..6),
        replies in vec(reply(), 1..6),
        chunks in vec(1usize..64, 1..8),
    ) {
        let mut bytes = BytesMut::new();
        for r in &reqs {
            r.encode(&mut bytes);
        }
        prop_assert_eq!(decode_stream::<Request>(&bytes, &chunks).unwrap(), reqs);

        let mut bytes = BytesMut::new();
        for r in &replies {
            r.encode(&mut bytes);
        }
        prop_assert_eq!(decode_stream::<Reply>(&bytes, &chunks).unwrap(), replies);
    }

    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..512), max in 0usize..1024) {
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = Request::decode(&mut buf, max);
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = Reply::decode(&mut buf, max);
        let body = Bytes::from(bytes);
        let _ = Request::parse(&body);
        let _ = Reply::parse(&body);
        check_reencode::<Request>(&body)?;
        check_reencode::<Reply>(&body)?;
    }

    /// Random bytes rarely get past the kind byte; flipping bytes of valid
    /// frames reaches every field decoder.
    #[test]
    fn mutated_frames_never_panic(
        req in request(),
        rep in reply(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        for mut body in [encoded_request(&req).split_off(LEN_PREFIX), encoded_reply(&rep).split_off(LEN_PREFIX)] {
            for (at, byte) in &flips {
                let i = at.index(body.len());
                body[i] = *byte;
            }
            let body = body.freeze();
            let _ = Request::parse(&body);
            let _ = Reply::parse(&body);
            check_reencode::<Request>(&body)?;
            check_reencode::<Reply>(&body)?;
        }
    }

    #[test]
    fn oversized_prefix_is_refused_without_buffering(
        max in 1usize..(1 << 20),
        excess in 1u32..u32::MAX / 2,
        tail in vec(any::<u8>(), 0..16),
    ) {
        let len = (max as u32).saturating_add(excess);
        let mut buf = BytesMut::with_capacity(4 + tail.len());
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(&tail);
        let capacity = buf.capacity();
        let expected = WireError::FrameTooLarge { len: len as usize, max };
        prop_assert_eq!(Request::decode(&mut buf, max), Err(expected.clone()));
        prop_assert_eq!(Reply::decode(&mut buf, max), Err(expected));
        // Nothing was reserved for the announced length, nothing consumed.
        prop_assert_eq!(buf.capacity(), capacity);
        prop_assert_eq!(buf.len(), 4 + tail.len());
    }
}

#[test]
fn a_frame_at_exactly_max_is_accepted_and_one_above_refused() {
    let r = Request::Ping { nonce: 7 };
    let buf = encoded_request(&r);
    let body_len = buf.len() - LEN_PREFIX;
    assert_eq!(Request::decode(&mut buf.clone(), body_len), Ok(Some(r)));
    assert_eq!(
        Request::decode(&mut buf.clone(), body_len - 1),
        Err(WireError::FrameTooLarge {
            len: body_len,
            max: body_len - 1
        })
    );
}

#[test]
fn longest_strings_round_trip() {
    // u16 length prefixes: 65535 bytes is the longest string a frame carries.
    let topic = "t".repeat(usize::from(u16::MAX));
    let r = Request::Declare {
        req: 1,
        topic,
        ordering: Ordering::TotalSeq,
        safe: true,
    };
    let mut buf = encoded_request(&r);
    assert_eq!(Request::decode(&mut buf, MAX), Ok(Some(r)));
}

#[test]
fn zero_length_frame_is_malformed() {
    let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
    assert!(matches!(
        Request::decode(&mut buf, MAX),
        Err(WireError::Malformed { .. })
    ));
}

#[test]
fn a_request_sent_as_a_reply_is_an_unknown_kind() {
    let buf = encoded_request(&Request::Ping { nonce: 1 });
    assert_eq!(
        Reply::decode(&mut buf.clone(), MAX),
        Err(WireError::UnknownKind(0x0e))
    );
}
