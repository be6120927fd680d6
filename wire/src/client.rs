//! The client protocol: length-prefixed binary frames over TCP.
//!
//! Every frame is `u32 length | u8 kind | body`, big-endian, where `length`
//! counts the kind byte and the body. A connection opens with
//! [`Request::Hello`] naming the protocol version, answered by
//! [`Reply::Welcome`] with the server's limits. Requests that expect an
//! answer carry a `req` id echoed by [`Reply::Ok`] or [`Reply::Error`].
//!
//! Decoding is two steps, as in mini-redis: [`frame_len`] looks at the
//! prefix without allocating (so "need more bytes" is not an error, and an
//! oversized frame is refused before it is buffered), then the body is parsed
//! from the split-off frame, with payloads sliced out of it without copying.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::buf::{
    causal_context_len, put_bool, put_bytes, put_causal_context, put_origin, put_str, Reader,
    ORIGIN_LEN,
};
use crate::types::{CausalContext, GlobalSeq, Incarnation, NodeId, Ordering, Origin, Seq, ViewId};
use crate::WireError;

/// The client protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// Default cap on a whole frame (prefix excluded), both directions.
pub const DEFAULT_MAX_FRAME: u32 = 8 * 1024 * 1024;

/// Default cap on a published payload.
pub const DEFAULT_MAX_PAYLOAD: u32 = 1024 * 1024;

/// Limits a server announces in its welcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame the server accepts (length prefix excluded).
    pub max_frame: u32,
    /// Largest payload the server accepts in a publish.
    pub max_payload: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: DEFAULT_MAX_FRAME,
            max_payload: DEFAULT_MAX_PAYLOAD,
        }
    }
}

/// Frames a client sends to a broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Opens the session; must be the first frame.
    Hello {
        version: u16,
        token: Option<String>,
        /// Free-form client name for logs.
        name: String,
    },
    /// Declares a topic with its ordering.
    Declare {
        req: u64,
        topic: String,
        ordering: Ordering,
        safe: bool,
    },
    /// Subscribes `sid` to a pattern (`.`-separated, `*` one token, `>` the rest).
    Subscribe {
        req: u64,
        sid: u64,
        pattern: String,
    },
    /// Ends subscription `sid`.
    Unsubscribe {
        req: u64,
        sid: u64,
    },
    /// Publishes a message; with `confirm` the broker answers `Ok { req: confirm }`
    /// once the message is safe (DESIGN.md "Confirmed publishes").
    Publish {
        confirm: Option<u64>,
        topic: String,
        /// Causal context the client carries from other brokers; may be empty.
        context: CausalContext,
        payload: Bytes,
    },
    /// Asks for the topic table.
    ListTopics {
        req: u64,
    },
    /// Asks for the current view.
    Cluster {
        req: u64,
    },
    Ping {
        nonce: u64,
    },
    Pong {
        nonce: u64,
    },
}

/// Frames a broker sends to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Accepts the session.
    Welcome {
        version: u16,
        node: NodeId,
        incarnation: Incarnation,
        /// This connection's id at the broker; it is the `publisher` of its messages.
        client_id: u64,
        limits: Limits,
    },
    /// Request `req` succeeded.
    Ok {
        req: u64,
    },
    /// Request `req` failed (`req` 0: the connection as a whole).
    Error {
        req: u64,
        code: ErrorCode,
        message: String,
    },
    /// A message for subscription `sid`.
    Message(Box<Delivery>),
    /// Messages may be missing between two views for subscription `sid`.
    Discontinuity {
        sid: u64,
        from_view: ViewId,
        to_view: ViewId,
        reason: String,
    },
    /// The topic table.
    Topics {
        req: u64,
        topics: Vec<TopicInfo>,
    },
    /// The current view.
    Cluster {
        req: u64,
        view: ClusterView,
    },
    Ping {
        nonce: u64,
    },
    Pong {
        nonce: u64,
    },
}

/// A delivered message with its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub sid: u64,
    pub topic: String,
    pub ordering: Ordering,
    /// The publishing connection's id at the origin broker.
    pub publisher: u64,
    pub origin: Origin,
    /// The origin broker's sequence number for this message (per incarnation).
    pub seq: Seq,
    /// Causal context after this message; empty on non-causal topics.
    pub context: CausalContext,
    /// Position in the topic's total order; only on total topics.
    pub gseq: Option<GlobalSeq>,
    pub payload: Bytes,
}

/// A delivery whose fields are borrowed: encodes the same frame as
/// `Reply::Message(Box::new(Delivery { .. }))` without building one, so a
/// broker encoding one message for many subscribers allocates nothing.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryRef<'a> {
    pub sid: u64,
    pub topic: &'a str,
    pub ordering: Ordering,
    pub publisher: u64,
    pub origin: Origin,
    pub seq: Seq,
    pub context: &'a CausalContext,
    pub gseq: Option<GlobalSeq>,
    pub payload: &'a [u8],
}

impl DeliveryRef<'_> {
    /// Appends the frame, length prefix included, to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(LEN_PREFIX);
        put_frame(out, |out| self.put_body(out));
    }

    /// Appends the frame to `out` like [`DeliveryRef::encode`], but a
    /// payload of [`SHARE_MIN`] bytes or more is written from `shared` (the
    /// same bytes as `self.payload`, e.g. a slice of the datagram it
    /// arrived in) in place instead of being copied.
    pub fn encode_vectored(&self, shared: &Bytes, out: &mut FrameBuf) {
        debug_assert_eq!(&shared[..], self.payload, "shared must hold the payload");
        if shared.len() < SHARE_MIN {
            self.encode(out.copied());
            return;
        }
        let head = out.copied();
        head.reserve(LEN_PREFIX + self.head_len());
        let len = (self.head_len() + shared.len()) as u32;
        head.put_u32(len);
        self.put_head(head);
        out.push_shared(shared.clone());
    }

    /// Bytes of the body before the payload.
    fn head_len(&self) -> usize {
        1 + 8
            + 2
            + self.topic.len()
            + 1
            + 8
            + ORIGIN_LEN
            + 8
            + causal_context_len(self.context)
            + 1
            + if self.gseq.is_some() { 8 } else { 0 }
            + 4
    }

    fn put_body(&self, out: &mut BytesMut) {
        out.reserve(self.head_len() + self.payload.len());
        self.put_head(out);
        out.put_slice(self.payload);
    }

    /// The body up to and including the payload's length.
    fn put_head(&self, out: &mut BytesMut) {
        out.put_u8(K_MESSAGE);
        out.put_u64(self.sid);
        put_str(out, self.topic);
        out.put_u8(self.ordering.code());
        out.put_u64(self.publisher);
        put_origin(out, self.origin);
        out.put_u64(self.seq.0);
        put_causal_context(out, self.context);
        put_bool(out, self.gseq.is_some());
        if let Some(g) = self.gseq {
            out.put_u64(g.0);
        }
        out.put_u32(self.payload.len() as u32);
    }
}

/// Payloads at least this long are written in place by
/// [`DeliveryRef::encode_vectored`]; shorter ones are cheaper to copy than
/// to give a slot of a vectored write (and a reference count).
pub const SHARE_MIN: usize = 2048;

/// Encoded frames waiting to be written to a socket, for vectored writes:
/// small frames and frame headers are copied into one buffer, large
/// payloads stay shared [`Bytes`] (no copy between the datagram they arrived
/// in and the socket). As a [`Buf`] its `chunks_vectored` hands out every
/// piece in order, so tokio's `write_buf`/`write_all_buf` send many frames
/// with one `writev`.
#[derive(Debug, Default)]
pub struct FrameBuf {
    /// Pieces before `tail`, in write order; none is empty.
    pieces: std::collections::VecDeque<Bytes>,
    /// Copied bytes after the last piece.
    tail: BytesMut,
    /// Bytes in `pieces`.
    pieces_len: usize,
}

impl FrameBuf {
    /// An empty buffer whose copy buffer starts with `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        FrameBuf {
            tail: BytesMut::with_capacity(capacity),
            ..FrameBuf::default()
        }
    }

    /// Where whole frames (or a frame's head) are appended by copying.
    pub fn copied(&mut self) -> &mut BytesMut {
        &mut self.tail
    }

    /// Appends `b` without copying it.
    pub fn push_shared(&mut self, b: Bytes) {
        if b.is_empty() {
            return;
        }
        if !self.tail.is_empty() {
            // The copied bytes so far go first; splitting them off shares
            // the buffer (no copy), and `tail` reclaims it once written.
            let head = self.tail.split().freeze();
            self.pieces_len += head.len();
            self.pieces.push_back(head);
        }
        self.pieces_len += b.len();
        self.pieces.push_back(b);
    }

    /// Bytes waiting to be written.
    pub fn len(&self) -> usize {
        self.pieces_len + self.tail.len()
    }

    /// Whether nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Capacity of the copy buffer (shared pieces not counted).
    pub fn capacity(&self) -> usize {
        self.tail.capacity()
    }
}

impl Buf for FrameBuf {
    fn remaining(&self) -> usize {
        self.len()
    }

    fn chunk(&self) -> &[u8] {
        match self.pieces.front() {
            Some(p) => p,
            None => &self.tail,
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [std::io::IoSlice<'a>]) -> usize {
        let mut n = 0;
        let pieces = self.pieces.iter().map(|p| &p[..]);
        for chunk in pieces.chain(std::iter::once(&self.tail[..])) {
            if n == dst.len() {
                break;
            }
            if !chunk.is_empty() {
                dst[n] = std::io::IoSlice::new(chunk);
                n += 1;
            }
        }
        n
    }

    fn advance(&mut self, mut cnt: usize) {
        while cnt > 0 {
            let Some(front) = self.pieces.front_mut() else {
                // Past the pieces: the rest is in `tail` (Buf::advance
                // panics beyond `remaining` for every implementation).
                self.tail.advance(cnt);
                return;
            };
            let n = cnt.min(front.len());
            front.advance(n);
            self.pieces_len -= n;
            cnt -= n;
            if front.is_empty() {
                self.pieces.pop_front();
            }
        }
    }
}

/// One row of the topic table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub ordering: Ordering,
    pub safe: bool,
}

/// The membership view as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterView {
    pub view_id: ViewId,
    /// The broker answering.
    pub this: Origin,
    pub members: Vec<Origin>,
    pub coordinator: NodeId,
    /// The total-seq sequencer, if the view has one.
    pub sequencer: Option<NodeId>,
    /// What the answering broker is doing in the group and whether the view
    /// is primary; `None` from a broker that predates these fields (sent
    /// after the others, so such a reply still decodes). The broker is a
    /// member of `view_id` only while the state [`MembershipState::is_member`];
    /// otherwise the view is the last one it was a member of.
    pub status: Option<ViewStatus>,
}

/// The answering broker's place in the group ([`ClusterView::status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewStatus {
    pub state: MembershipState,
    /// Whether the view holds a quorum of the last primary view, i.e.
    /// whether total-order topics deliver and accept publishes in it.
    pub primary: bool,
}

/// What a broker is doing in the group, as `/healthz` and `ordo cluster`
/// show it. Unknown codes (a newer broker) survive a round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipState {
    /// Listening for an existing group of its cluster at start-up.
    Discovering,
    /// Asking a coordinator for admission (its first join).
    Joining,
    /// Lost its place in the group's view (excluded after a suspicion, cut
    /// off, or merging into a winning view) and asking for admission as a
    /// new incarnation.
    Rejoining,
    /// A member of its installed view.
    Member,
    /// A member of its installed view that stopped sending while a view
    /// change completes (milliseconds, unless a member dies mid-change).
    Flushing,
    /// Leaving the group (shutting down).
    Leaving,
    /// Out of the group: it left, or was refused (duplicate node id).
    Left,
    /// A code this build does not know.
    Other(u8),
}

impl MembershipState {
    /// Every state this build knows, in wire-code order.
    pub const ALL: [MembershipState; 7] = [
        MembershipState::Discovering,
        MembershipState::Joining,
        MembershipState::Rejoining,
        MembershipState::Member,
        MembershipState::Flushing,
        MembershipState::Leaving,
        MembershipState::Left,
    ];

    /// The name shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            MembershipState::Discovering => "discovering",
            MembershipState::Joining => "joining",
            MembershipState::Rejoining => "rejoining",
            MembershipState::Member => "member",
            MembershipState::Flushing => "flushing",
            MembershipState::Leaving => "leaving",
            MembershipState::Left => "left",
            MembershipState::Other(_) => "unknown",
        }
    }

    /// The state a name shown by [`MembershipState::as_str`] stands for.
    pub fn from_name(name: &str) -> Option<MembershipState> {
        MembershipState::ALL
            .into_iter()
            .find(|s| s.as_str() == name)
    }

    /// The one-byte wire code.
    pub fn code(self) -> u8 {
        match self {
            MembershipState::Other(c) => c,
            // ALL holds every other variant.
            s => MembershipState::ALL
                .iter()
                .position(|a| *a == s)
                .map_or(u8::MAX, |i| i as u8),
        }
    }

    /// The state for a wire code; unknown codes are kept as `Other`.
    pub fn from_code(code: u8) -> MembershipState {
        MembershipState::ALL
            .get(usize::from(code))
            .copied()
            .unwrap_or(MembershipState::Other(code))
    }

    /// Whether the broker is a member of its installed view (it serves
    /// clients there; a flush holds publishes for milliseconds only).
    pub fn is_member(self) -> bool {
        matches!(self, MembershipState::Member | MembershipState::Flushing)
    }
}

impl std::fmt::Display for MembershipState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MembershipState::Other(c) => write!(f, "unknown state {c}"),
            s => f.write_str(s.as_str()),
        }
    }
}

/// Why a request or connection failed. Unknown codes survive a round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The peer broke the protocol (bad frame, wrong first frame).
    Protocol,
    /// A frame exceeded the size limit.
    FrameTooLarge,
    /// A payload exceeded the size limit.
    PayloadTooLarge,
    /// A topic was declared with a different ordering or safety.
    Conflict,
    /// A topic name or pattern is not valid.
    InvalidName,
    /// The token is missing or wrong.
    NotAuthorized,
    /// A configured limit (connections, subscriptions) was reached.
    Limit,
    /// The client did not read fast enough and was disconnected.
    SlowConsumer,
    /// The broker is shutting down.
    ShuttingDown,
    /// The request cannot be served now (e.g. no quorum for a total topic).
    Unavailable,
    /// Something failed inside the broker.
    Internal,
    /// A code this build does not know.
    Other(u16),
}

impl ErrorCode {
    pub fn code(self) -> u16 {
        match self {
            ErrorCode::Protocol => 1,
            ErrorCode::FrameTooLarge => 2,
            ErrorCode::PayloadTooLarge => 3,
            ErrorCode::Conflict => 4,
            ErrorCode::InvalidName => 5,
            ErrorCode::NotAuthorized => 6,
            ErrorCode::Limit => 7,
            ErrorCode::SlowConsumer => 8,
            ErrorCode::ShuttingDown => 9,
            ErrorCode::Unavailable => 10,
            ErrorCode::Internal => 11,
            ErrorCode::Other(c) => c,
        }
    }

    pub fn from_code(c: u16) -> ErrorCode {
        match c {
            1 => ErrorCode::Protocol,
            2 => ErrorCode::FrameTooLarge,
            3 => ErrorCode::PayloadTooLarge,
            4 => ErrorCode::Conflict,
            5 => ErrorCode::InvalidName,
            6 => ErrorCode::NotAuthorized,
            7 => ErrorCode::Limit,
            8 => ErrorCode::SlowConsumer,
            9 => ErrorCode::ShuttingDown,
            10 => ErrorCode::Unavailable,
            11 => ErrorCode::Internal,
            c => ErrorCode::Other(c),
        }
    }

    /// A short lower-case name for messages and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Protocol => "protocol error",
            ErrorCode::FrameTooLarge => "frame too large",
            ErrorCode::PayloadTooLarge => "payload too large",
            ErrorCode::Conflict => "conflict",
            ErrorCode::InvalidName => "invalid name",
            ErrorCode::NotAuthorized => "not authorized",
            ErrorCode::Limit => "limit reached",
            ErrorCode::SlowConsumer => "slow consumer",
            ErrorCode::ShuttingDown => "shutting down",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal error",
            ErrorCode::Other(_) => "error",
        }
    }
}

// Frame kinds. Requests and replies have separate spaces so a frame sent the
// wrong way is rejected as unknown.
const K_HELLO: u8 = 0x01;
const K_DECLARE: u8 = 0x02;
const K_SUBSCRIBE: u8 = 0x03;
const K_UNSUBSCRIBE: u8 = 0x04;
const K_PUBLISH: u8 = 0x05;
const K_LIST_TOPICS: u8 = 0x06;
const K_CLUSTER: u8 = 0x07;
const K_PING: u8 = 0x0e;
const K_PONG: u8 = 0x0f;

const K_WELCOME: u8 = 0x81;
const K_OK: u8 = 0x82;
const K_ERROR: u8 = 0x83;
const K_MESSAGE: u8 = 0x84;
const K_DISCONTINUITY: u8 = 0x85;
const K_TOPICS: u8 = 0x86;
const K_CLUSTER_VIEW: u8 = 0x87;
const K_REPLY_PING: u8 = 0x8e;
const K_REPLY_PONG: u8 = 0x8f;

/// Looks at the start of `buf` without consuming it: `Ok(None)` if the
/// length prefix is not complete, `Ok(Some(n))` with the body length
/// otherwise (the whole frame is `LEN_PREFIX + n` bytes), or an error if the
/// announced length is zero or above `max_frame`.
pub fn frame_len(buf: &[u8], max_frame: usize) -> Result<Option<usize>, WireError> {
    if buf.len() < LEN_PREFIX {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max_frame {
        return Err(WireError::FrameTooLarge {
            len,
            max: max_frame,
        });
    }
    if len == 0 {
        return Err(WireError::malformed("frame", "empty frame"));
    }
    Ok(Some(len))
}

/// Body length of the delivery frame ([`Reply::Message`]) of a message with
/// this topic, causal context size and payload, `gseq` included (the largest
/// case). A delivery carries more than its publish, so a server checks this
/// against `max_frame` before it accepts a publish that could not be delivered.
pub fn delivery_len(topic_len: usize, context_entries: usize, payload_len: usize) -> usize {
    1 + 8
        + 2
        + topic_len
        + 1
        + 8
        + ORIGIN_LEN
        + 8
        + 4
        + context_entries.saturating_mul(ORIGIN_LEN + 8)
        + 9
        + 4
        + payload_len
}

/// Splits one whole frame body (kind byte first) off the front of `buf`,
/// or returns `Ok(None)` and reserves room when more bytes are needed.
fn split_frame(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Bytes>, WireError> {
    let Some(len) = frame_len(buf, max_frame)? else {
        return Ok(None);
    };
    if buf.len() < LEN_PREFIX + len {
        buf.reserve(LEN_PREFIX + len - buf.len());
        return Ok(None);
    }
    buf.advance(LEN_PREFIX);
    Ok(Some(buf.split_to(len).freeze()))
}

/// Writes `u32 length | body` where `body` is produced by `f`.
fn put_frame(out: &mut BytesMut, f: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_u32(0);
    f(out);
    let len = (out.len() - start - LEN_PREFIX) as u32;
    out[start..start + LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
}

fn ordering(r: &mut Reader<'_>) -> Result<Ordering, WireError> {
    let code = r.u8("ordering")?;
    Ordering::from_code(code)
        .ok_or_else(|| WireError::malformed("ordering", format!("unknown code {code}")))
}

fn string(r: &mut Reader<'_>, what: &'static str) -> Result<String, WireError> {
    Ok(r.str(what)?.to_owned())
}

/// Slices length-prefixed bytes out of `frame` without copying.
fn payload(r: &mut Reader<'_>, frame: &Bytes) -> Result<Bytes, WireError> {
    let n = r.u32("payload")? as usize;
    let start = r.position();
    r.take(n, "payload")?;
    Ok(frame.slice(start..start + n))
}

impl Request {
    /// Appends this frame, length prefix included, to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        put_frame(out, |out| match self {
            Request::Hello {
                version,
                token,
                name,
            } => {
                out.put_u8(K_HELLO);
                out.put_u16(*version);
                put_bool(out, token.is_some());
                if let Some(t) = token {
                    put_str(out, t);
                }
                put_str(out, name);
            }
            Request::Declare {
                req,
                topic,
                ordering,
                safe,
            } => {
                out.put_u8(K_DECLARE);
                out.put_u64(*req);
                put_str(out, topic);
                out.put_u8(ordering.code());
                put_bool(out, *safe);
            }
            Request::Subscribe { req, sid, pattern } => {
                out.put_u8(K_SUBSCRIBE);
                out.put_u64(*req);
                out.put_u64(*sid);
                put_str(out, pattern);
            }
            Request::Unsubscribe { req, sid } => {
                out.put_u8(K_UNSUBSCRIBE);
                out.put_u64(*req);
                out.put_u64(*sid);
            }
            Request::Publish {
                confirm,
                topic,
                context,
                payload,
            } => {
                out.reserve(
                    1 + 9 + 2 + topic.len() + causal_context_len(context) + 4 + payload.len(),
                );
                out.put_u8(K_PUBLISH);
                put_bool(out, confirm.is_some());
                if let Some(c) = confirm {
                    out.put_u64(*c);
                }
                put_str(out, topic);
                put_causal_context(out, context);
                put_bytes(out, payload);
            }
            Request::ListTopics { req } => {
                out.put_u8(K_LIST_TOPICS);
                out.put_u64(*req);
            }
            Request::Cluster { req } => {
                out.put_u8(K_CLUSTER);
                out.put_u64(*req);
            }
            Request::Ping { nonce } => {
                out.put_u8(K_PING);
                out.put_u64(*nonce);
            }
            Request::Pong { nonce } => {
                out.put_u8(K_PONG);
                out.put_u64(*nonce);
            }
        });
    }

    /// Decodes one request from the front of `buf`. `Ok(None)`: need more
    /// bytes (nothing consumed). An error means the stream cannot be trusted
    /// any more; the caller reports it and closes the connection.
    pub fn decode(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Request>, WireError> {
        match split_frame(buf, max_frame)? {
            Some(frame) => Request::parse(&frame).map(Some),
            None => Ok(None),
        }
    }

    /// Parses one frame body (kind byte first, no length prefix).
    pub fn parse(frame: &Bytes) -> Result<Request, WireError> {
        let mut r = Reader::new(frame);
        let req = match r.u8("kind")? {
            K_HELLO => Request::Hello {
                version: r.u16("version")?,
                token: r.opt("token", |r| string(r, "token"))?,
                name: string(&mut r, "client name")?,
            },
            K_DECLARE => Request::Declare {
                req: r.u64("req")?,
                topic: string(&mut r, "topic")?,
                ordering: ordering(&mut r)?,
                safe: r.bool("safe")?,
            },
            K_SUBSCRIBE => Request::Subscribe {
                req: r.u64("req")?,
                sid: r.u64("sid")?,
                pattern: string(&mut r, "pattern")?,
            },
            K_UNSUBSCRIBE => Request::Unsubscribe {
                req: r.u64("req")?,
                sid: r.u64("sid")?,
            },
            K_PUBLISH => Request::Publish {
                confirm: r.opt("confirm", |r| r.u64("confirm"))?,
                topic: string(&mut r, "topic")?,
                context: r.causal_context()?,
                payload: payload(&mut r, frame)?,
            },
            K_LIST_TOPICS => Request::ListTopics { req: r.u64("req")? },
            K_CLUSTER => Request::Cluster { req: r.u64("req")? },
            K_PING => Request::Ping {
                nonce: r.u64("nonce")?,
            },
            K_PONG => Request::Pong {
                nonce: r.u64("nonce")?,
            },
            k => return Err(WireError::UnknownKind(k)),
        };
        r.finish()?;
        Ok(req)
    }
}

impl Reply {
    /// Appends this frame, length prefix included, to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        put_frame(out, |out| match self {
            Reply::Welcome {
                version,
                node,
                incarnation,
                client_id,
                limits,
            } => {
                out.put_u8(K_WELCOME);
                out.put_u16(*version);
                out.put_u32(node.0);
                out.put_u64(incarnation.0);
                out.put_u64(*client_id);
                out.put_u32(limits.max_frame);
                out.put_u32(limits.max_payload);
            }
            Reply::Ok { req } => {
                out.put_u8(K_OK);
                out.put_u64(*req);
            }
            Reply::Error { req, code, message } => {
                out.put_u8(K_ERROR);
                out.put_u64(*req);
                out.put_u16(code.code());
                put_str(out, message);
            }
            Reply::Message(d) => DeliveryRef {
                sid: d.sid,
                topic: &d.topic,
                ordering: d.ordering,
                publisher: d.publisher,
                origin: d.origin,
                seq: d.seq,
                context: &d.context,
                gseq: d.gseq,
                payload: &d.payload,
            }
            .put_body(out),
            Reply::Discontinuity {
                sid,
                from_view,
                to_view,
                reason,
            } => {
                out.put_u8(K_DISCONTINUITY);
                out.put_u64(*sid);
                out.put_u64(from_view.0);
                out.put_u64(to_view.0);
                put_str(out, reason);
            }
            Reply::Topics { req, topics } => {
                out.put_u8(K_TOPICS);
                out.put_u64(*req);
                out.put_u32(topics.len() as u32);
                for t in topics {
                    put_str(out, &t.name);
                    out.put_u8(t.ordering.code());
                    put_bool(out, t.safe);
                }
            }
            Reply::Cluster { req, view } => {
                out.put_u8(K_CLUSTER_VIEW);
                out.put_u64(*req);
                out.put_u64(view.view_id.0);
                put_origin(out, view.this);
                out.put_u32(view.members.len() as u32);
                for m in &view.members {
                    put_origin(out, *m);
                }
                out.put_u32(view.coordinator.0);
                put_bool(out, view.sequencer.is_some());
                if let Some(s) = view.sequencer {
                    out.put_u32(s.0);
                }
                // Last, so that a reply without them still decodes.
                if let Some(st) = view.status {
                    out.put_u8(st.state.code());
                    put_bool(out, st.primary);
                }
            }
            Reply::Ping { nonce } => {
                out.put_u8(K_REPLY_PING);
                out.put_u64(*nonce);
            }
            Reply::Pong { nonce } => {
                out.put_u8(K_REPLY_PONG);
                out.put_u64(*nonce);
            }
        });
    }

    /// Decodes one reply from the front of `buf`; see [`Request::decode`].
    pub fn decode(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Reply>, WireError> {
        match split_frame(buf, max_frame)? {
            Some(frame) => Reply::parse(&frame).map(Some),
            None => Ok(None),
        }
    }

    /// Parses one frame body (kind byte first, no length prefix).
    pub fn parse(frame: &Bytes) -> Result<Reply, WireError> {
        let mut r = Reader::new(frame);
        let reply = match r.u8("kind")? {
            K_WELCOME => Reply::Welcome {
                version: r.u16("version")?,
                node: NodeId(r.u32("node")?),
                incarnation: Incarnation(r.u64("incarnation")?),
                client_id: r.u64("client id")?,
                limits: Limits {
                    max_frame: r.u32("max frame")?,
                    max_payload: r.u32("max payload")?,
                },
            },
            K_OK => Reply::Ok { req: r.u64("req")? },
            K_ERROR => Reply::Error {
                req: r.u64("req")?,
                code: ErrorCode::from_code(r.u16("error code")?),
                message: string(&mut r, "error message")?,
            },
            K_MESSAGE => Reply::Message(Box::new(Delivery {
                sid: r.u64("sid")?,
                topic: string(&mut r, "topic")?,
                ordering: ordering(&mut r)?,
                publisher: r.u64("publisher")?,
                origin: r.origin()?,
                seq: Seq(r.u64("seq")?),
                context: r.causal_context()?,
                gseq: r.opt("gseq", |r| r.u64("gseq").map(GlobalSeq))?,
                payload: payload(&mut r, frame)?,
            })),
            K_DISCONTINUITY => Reply::Discontinuity {
                sid: r.u64("sid")?,
                from_view: ViewId(r.u64("from view")?),
                to_view: ViewId(r.u64("to view")?),
                reason: string(&mut r, "reason")?,
            },
            K_TOPICS => {
                let req = r.u64("req")?;
                let n = r.count(2 + 1 + 1, "topics")?;
                let mut topics = Vec::with_capacity(n);
                for _ in 0..n {
                    topics.push(TopicInfo {
                        name: string(&mut r, "topic")?,
                        ordering: ordering(&mut r)?,
                        safe: r.bool("safe")?,
                    });
                }
                Reply::Topics { req, topics }
            }
            K_CLUSTER_VIEW => {
                let req = r.u64("req")?;
                let view_id = ViewId(r.u64("view id")?);
                let this = r.origin()?;
                let n = r.count(ORIGIN_LEN, "members")?;
                let mut members = Vec::with_capacity(n);
                for _ in 0..n {
                    members.push(r.origin()?);
                }
                let coordinator = NodeId(r.u32("coordinator")?);
                let sequencer = r.opt("sequencer", |r| r.u32("sequencer").map(NodeId))?;
                let status = if r.remaining() > 0 {
                    Some(ViewStatus {
                        state: MembershipState::from_code(r.u8("membership state")?),
                        primary: r.bool("primary")?,
                    })
                } else {
                    None
                };
                Reply::Cluster {
                    req,
                    view: ClusterView {
                        view_id,
                        this,
                        members,
                        coordinator,
                        sequencer,
                        status,
                    },
                }
            }
            K_REPLY_PING => Reply::Ping {
                nonce: r.u64("nonce")?,
            },
            K_REPLY_PONG => Reply::Pong {
                nonce: r.u64("nonce")?,
            },
            k => return Err(WireError::UnknownKind(k)),
        };
        r.finish()?;
        Ok(reply)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn publish_round_trips_and_slices_payload() {
        let req = Request::Publish {
            confirm: Some(9),
            topic: "orders.eu".into(),
            context: CausalContext::new(),
            payload: Bytes::from_static(b"hello"),
        };
        let mut buf = BytesMut::new();
        req.encode(&mut buf);
        req.encode(&mut buf);
        assert_eq!(Request::decode(&mut buf, 1024), Ok(Some(req.clone())));
        assert_eq!(Request::decode(&mut buf, 1024), Ok(Some(req)));
        assert_eq!(Request::decode(&mut buf, 1024), Ok(None));
    }

    #[test]
    fn oversized_frame_is_refused_before_buffering() {
        let mut buf = BytesMut::from(&[0x00, 0x10, 0x00, 0x00][..]);
        assert_eq!(
            Request::decode(&mut buf, 1024),
            Err(WireError::FrameTooLarge {
                len: 0x0010_0000,
                max: 1024
            })
        );
    }

    #[test]
    fn delivery_len_is_the_encoded_body_length() {
        let origin = Origin {
            node: NodeId(1),
            incarnation: Incarnation(2),
        };
        let d = Delivery {
            sid: 1,
            topic: "orders.eu".into(),
            ordering: Ordering::Causal,
            publisher: 3,
            origin,
            seq: Seq(4),
            context: CausalContext::from_entries([(origin, Seq(4))]),
            gseq: Some(GlobalSeq(5)),
            payload: Bytes::from_static(b"hello"),
        };
        let mut by_ref = BytesMut::new();
        delivery_ref(&d).encode(&mut by_ref);
        let mut buf = BytesMut::new();
        Reply::Message(Box::new(d.clone())).encode(&mut buf);
        assert_eq!(buf.len(), LEN_PREFIX + delivery_len(9, 1, 5));
        assert_eq!(by_ref, buf, "the borrowed encoder writes the same frame");
        let back = Reply::decode(&mut by_ref, 1 << 20).unwrap().unwrap();
        assert_eq!(back, Reply::Message(Box::new(d)));
    }

    fn delivery_ref<'a>(d: &'a Delivery) -> DeliveryRef<'a> {
        DeliveryRef {
            sid: d.sid,
            topic: &d.topic,
            ordering: d.ordering,
            publisher: d.publisher,
            origin: d.origin,
            seq: d.seq,
            context: &d.context,
            gseq: d.gseq,
            payload: &d.payload,
        }
    }

    /// Drains a `FrameBuf` the way a vectored writer does: up to `slots`
    /// pieces per call, `take` bytes of them accepted per call.
    fn drain(f: &mut FrameBuf, slots: usize, take: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while f.has_remaining() {
            let mut io = vec![std::io::IoSlice::new(&[]); slots];
            let n = f.chunks_vectored(&mut io);
            assert!(n > 0);
            let flat: Vec<u8> = io[..n].iter().flat_map(|s| s.iter().copied()).collect();
            let k = flat.len().min(take);
            out.extend_from_slice(&flat[..k]);
            let before = f.remaining();
            f.advance(k);
            assert_eq!(f.remaining(), before - k);
        }
        out
    }

    proptest::proptest! {
        /// Frames written through a `FrameBuf` (large payloads shared,
        /// replies copied) are byte for byte the frames copied into one
        /// buffer, however the socket splits the writes.
        #[test]
        fn vectored_frames_are_the_copied_frames(
            sizes in proptest::collection::vec(0usize..3 * SHARE_MIN, 1..12),
            slots in 1usize..8,
            take in 1usize..20_000,
        ) {
            let origin = Origin { node: NodeId(1), incarnation: Incarnation(2) };
            let mut want = BytesMut::new();
            let mut f = FrameBuf::with_capacity(64);
            for (i, n) in sizes.iter().enumerate() {
                let d = Delivery {
                    sid: i as u64,
                    topic: "t".into(),
                    ordering: Ordering::Causal,
                    publisher: 3,
                    origin,
                    seq: Seq(i as u64 + 1),
                    context: CausalContext::from_entries([(origin, Seq(i as u64 + 1))]),
                    gseq: (i % 2 == 0).then_some(GlobalSeq(i as u64)),
                    payload: Bytes::from(vec![i as u8; *n]),
                };
                delivery_ref(&d).encode(&mut want);
                delivery_ref(&d).encode_vectored(&d.payload, &mut f);
                if i % 3 == 0 {
                    let pong = Reply::Pong { nonce: i as u64 };
                    pong.encode(&mut want);
                    pong.encode(f.copied());
                }
            }
            proptest::prop_assert_eq!(f.len(), want.len());
            let got = drain(&mut f, slots, take);
            proptest::prop_assert!(got == want[..], "frames differ");
            proptest::prop_assert!(f.is_empty());
        }
    }

    #[test]
    fn a_large_payload_is_shared_not_copied() {
        let d = Delivery {
            sid: 1,
            topic: "t".into(),
            ordering: Ordering::Fifo,
            publisher: 0,
            origin: Origin::default(),
            seq: Seq(1),
            context: CausalContext::new(),
            gseq: None,
            payload: Bytes::from(vec![7u8; SHARE_MIN]),
        };
        let mut f = FrameBuf::default();
        delivery_ref(&d).encode_vectored(&d.payload, &mut f);
        let mut io = [std::io::IoSlice::new(&[]); 4];
        assert_eq!(f.chunks_vectored(&mut io), 2, "head, then the payload");
        assert_eq!(
            io[1].as_ptr(),
            d.payload.as_ptr(),
            "the payload's own bytes"
        );
        assert!(
            f.capacity() < SHARE_MIN,
            "nothing of the payload was copied"
        );
    }

    #[test]
    fn cluster_view_carries_the_membership_state_and_decodes_without_it() {
        let view = ClusterView {
            view_id: ViewId(6),
            this: Origin {
                node: NodeId(3),
                incarnation: Incarnation(2),
            },
            members: vec![Origin {
                node: NodeId(1),
                incarnation: Incarnation(1),
            }],
            coordinator: NodeId(1),
            sequencer: Some(NodeId(1)),
            status: Some(ViewStatus {
                state: MembershipState::Rejoining,
                primary: true,
            }),
        };
        let reply = Reply::Cluster { req: 4, view };
        let mut buf = BytesMut::new();
        reply.encode(&mut buf);
        let full = buf.clone();
        assert_eq!(Reply::decode(&mut buf, 1024), Ok(Some(reply.clone())));

        // A broker that predates the status sends the frame without its
        // two trailing bytes (and a length two shorter): still a view.
        let mut old = BytesMut::new();
        let body = &full[LEN_PREFIX..full.len() - 2];
        old.put_u32(body.len() as u32);
        old.put_slice(body);
        let Ok(Some(Reply::Cluster { view, .. })) = Reply::decode(&mut old, 1024) else {
            panic!("an old cluster reply must decode");
        };
        assert_eq!(view.status, None);
        assert_eq!(view.view_id, ViewId(6));
    }

    #[test]
    fn membership_state_codes_and_names_round_trip() {
        for s in MembershipState::ALL {
            assert_eq!(MembershipState::from_code(s.code()), s);
            assert_eq!(MembershipState::from_name(s.as_str()), Some(s));
        }
        let unknown = MembershipState::from_code(200);
        assert_eq!(unknown, MembershipState::Other(200));
        assert_eq!(unknown.code(), 200);
        assert!(!unknown.is_member());
        assert!(MembershipState::Flushing.is_member());
        assert!(!MembershipState::Rejoining.is_member());
    }
}
