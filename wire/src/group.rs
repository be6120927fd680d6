//! Inter-broker multicast frames: one frame per UDP datagram.
//!
//! Layout (big-endian):
//!
//! ```text
//! header  magic u16 | version u8 | kind u8 | flags u8 | reserved u8 |
//!         cluster u64 | sender node u32 | sender incarnation u64 | view u64
//! body    kind-specific
//! trailer crc32c u32 over everything before it           (no cluster key)
//!      or mac [u8; 32], keyed BLAKE3 of everything before it (flag MAC set)
//! ```
//!
//! The trailer is verified before anything else is parsed: a corrupted
//! datagram is rejected as [`WireError::Checksum`]; with a cluster key
//! ([`crate::key`]), a frame whose MAC matches none of the keys as
//! [`WireError::BadMac`], a frame without a MAC as [`WireError::MacMissing`],
//! and without a key, a frame with one as [`WireError::MacUnexpected`]. The
//! MAC covers the whole frame, header included (cluster, sender, incarnation,
//! view), and replaces the checksum, which it subsumes. Payloads are sliced
//! out of the datagram without copying; every count is checked against the
//! bytes left before anything is allocated for it.

use bytes::{BufMut, Bytes, BytesMut};

use crate::buf::put_str;
use crate::buf::{
    causal_context_len, put_bool, put_causal_context, put_origin, Reader, ORIGIN_LEN,
};
use crate::key::{ClusterKey, SigningKey, MAC_LEN};
use crate::types::{CausalContext, NodeId, Ordering, Origin, Seq, ViewId};

/// Every sequence number, view id, global seq and ISIS counter on the wire
/// must be below this (2^63). A peer cannot send a value near `u64::MAX`, so
/// the `+ 1` the engine does on such values can never overflow, whatever a
/// forged or garbled frame says; such a frame is malformed (a counted drop).
pub const COUNTER_LIMIT: u64 = 1 << 63;

/// Reads a protocol counter (seq, view id, gseq), refusing values at or above
/// [`COUNTER_LIMIT`].
trait ReadCounter {
    fn counter(&mut self, what: &'static str) -> Result<u64, WireError>;
}

impl ReadCounter for Reader<'_> {
    fn counter(&mut self, what: &'static str) -> Result<u64, WireError> {
        let v = self.u64(what)?;
        if v >= COUNTER_LIMIT {
            return Err(WireError::malformed(
                what,
                format!("{v} is beyond the counter limit"),
            ));
        }
        Ok(v)
    }
}
use crate::WireError;

/// First two bytes of every frame ("Or").
pub const MAGIC: u16 = 0x4f72;

/// The inter-broker protocol version this build speaks.
///
/// 2: installs carry the agreed state (topics, gseq); ordering control
/// messages ride in the data streams. A version-1 broker is refused, counted
/// as `bad_version`, rather than misreading an install.
///
/// 3: the header carries the view's tag (views are told apart by number
/// and members); flush acknowledgements and installs carry the total-order
/// delivery counts (the agreed frontier).
///
/// 4: flush acknowledgements name the proposers they answer; the header
/// carries the sender's frame counter ([`Header::beat`]).
pub const GROUP_PROTOCOL_VERSION: u8 = 4;

/// Bytes of the fixed header.
pub const HEADER_LEN: usize = 2 + 1 + 1 + 1 + 1 + 8 + ORIGIN_LEN + 8 + 4 + 8;

/// Bytes of the checksum trailer (frames without a cluster key).
pub const TRAILER_LEN: usize = 4;

/// Bytes of the longest trailer, the MAC of a keyed frame.
pub const MAX_TRAILER_LEN: usize = MAC_LEN;

/// Bytes a data frame spends outside its messages: header, origin, count,
/// and the longest trailer (so sizing does not depend on the key).
pub const DATA_FRAME_OVERHEAD: usize = HEADER_LEN + ORIGIN_LEN + 4 + MAX_TRAILER_LEN;

/// A cluster's identity on the wire: a stable 64-bit hash of its name, so
/// brokers of two clusters sharing a group address ignore each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ClusterId(pub u64);

impl ClusterId {
    /// FNV-1a (64-bit) of the cluster name: stable across builds and platforms.
    pub fn from_name(name: &str) -> ClusterId {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.as_bytes() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        ClusterId(h)
    }
}

/// Header flag bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(pub u8);

impl Flags {
    /// A data frame repeating messages (possibly of another origin) to repair a loss.
    pub const RETRANSMIT: Flags = Flags(0x01);
    /// The sender would like a prompt digest (it awaits a confirmation or stability).
    pub const ACK_REQUESTED: Flags = Flags(0x02);
    /// The trailer is a MAC under the cluster key instead of a checksum. Set
    /// and cleared by the encoder according to the key it is given; a
    /// decoded header never shows it.
    pub const MAC: Flags = Flags(0x80);
    const KNOWN: u8 = 0x01 | 0x02 | 0x80;

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Both sets of bits.
    pub fn with(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
}

/// Frame kind codes. Codes 0x20..=0x2f name the ordering layers' control
/// messages: they travel inside the reliable stream of their sender as
/// [`DataMsg`]s on the empty topic (see [`Control`]), never as frames of their
/// own, so a frame of such a kind is decoded as [`WireError::UnknownKind`].
pub mod kind {
    pub const DATA: u8 = 0x01;
    pub const HEARTBEAT: u8 = 0x02;
    pub const NAK: u8 = 0x03;
    pub const STABLE: u8 = 0x04;
    pub const JOIN: u8 = 0x10;
    pub const PROPOSE: u8 = 0x11;
    pub const FLUSH_ACK: u8 = 0x12;
    pub const INSTALL: u8 = 0x13;
    pub const INSTALL_ACK: u8 = 0x14;
    pub const LEAVE: u8 = 0x15;
    pub const SUSPECT: u8 = 0x16;
    pub const REFUSE: u8 = 0x17;
    /// Control tag: ISIS priority proposals.
    pub const ISIS_PROPOSAL: u8 = 0x20;
    /// Control tag: ISIS final priorities.
    pub const ISIS_FINAL: u8 = 0x21;
    /// Control tag: sequencer order.
    pub const SEQUENCER_ORDER: u8 = 0x22;
    /// Control tag: a topic declaration (carried in total order).
    pub const TOPIC_DECLARE: u8 = 0x23;
}

/// The fixed header every frame starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub flags: Flags,
    pub cluster: ClusterId,
    /// The broker that sent this datagram (not necessarily the messages' origin).
    pub sender: Origin,
    /// The view the sender has installed (0 before its first view).
    pub view: ViewId,
    /// That view's tag, a hash of its members ([`view_tag`]; 0 before its
    /// first view): two views with one number installed apart (a stalled
    /// coordinator's and the others') are told apart by it.
    pub tag: u32,
    /// The sender's frame counter: it grows with the frames its incarnation
    /// sends. A receiver takes only a frame newer than every earlier one of
    /// that sender as a sign of life, so a replayed or long-delayed copy
    /// (covered by the MAC, so not forgeable with a cluster key) does not
    /// keep a silent broker from being suspected.
    pub beat: u64,
}

/// The tag of a view of `members` (FNV-1a over their node ids and
/// incarnations, in view order).
pub fn view_tag(members: &[Origin]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for m in members {
        for b in m
            .node
            .0
            .to_be_bytes()
            .into_iter()
            .chain(m.incarnation.0.to_be_bytes())
        {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub header: Header,
    pub body: Body,
}

/// The kind-specific part of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Client messages of one origin, in sequence order.
    Data(DataFrame),
    /// The sender's digest; also the prompt acknowledgement of data.
    Heartbeat(Digest),
    /// A request to repeat missing messages of one origin.
    Nak(Nak),
    /// Per origin, the sequence number every member has; what lies at or
    /// below it is freed (and cannot be repaired any more).
    Stable(Stable),
    /// A broker asks to be admitted (or, with no target, announces itself during discovery).
    Join(Join),
    /// The coordinator proposes the next view and asks the old view to flush.
    Propose(Propose),
    /// A member of the old view stopped sending; its last sequence number.
    FlushAck(FlushAck),
    /// The coordinator installs the next view.
    Install(Install),
    /// A member installed a view.
    InstallAck(ViewId),
    /// A member asks to leave gracefully.
    Leave,
    /// A member tells its view's coordinator which members its failure
    /// detector suspects (so a one-sided suspicion reaches the coordinator).
    Suspect(Suspect),
    /// A member refuses a broker that claims a node id a live member of the
    /// view already has (two brokers configured with one node id).
    Refuse(Refuse),
}

/// Members the sender suspects of having failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suspect {
    /// The view the suspects are members of.
    pub view: ViewId,
    pub members: Vec<Origin>,
}

/// A refusal of a duplicate node id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refuse {
    /// The refused broker (its node id belongs to `holder`).
    pub refused: Origin,
    /// The live member that holds the node id.
    pub holder: Origin,
}

/// The data body: messages of one origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFrame {
    /// The messages' origin; differs from the sender on a repair by another holder.
    pub origin: Origin,
    pub msgs: Vec<DataMsg>,
}

/// Where a fragment sits in its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// 0-based index of this fragment.
    pub index: u32,
    /// Number of fragments of the message (at least 2).
    pub count: u32,
}

/// One client message (or fragment of one), as sequenced by its origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataMsg {
    pub seq: Seq,
    /// UTF-8 (checked on decode), sliced from the datagram.
    pub topic: Bytes,
    pub ordering: Ordering,
    pub safe: bool,
    pub publisher: u64,
    pub context: CausalContext,
    pub published_at_us: u64,
    pub fragment: Option<Fragment>,
    pub payload: Bytes,
}

impl DataMsg {
    /// Bytes of everything but the payload and topic.
    pub const FIXED_LEN: usize = 8 + 2 + 1 + 1 + 8 + 8 + 1 + 4;
    const FRAGMENT_LEN: usize = 8;

    /// Encoded size of this message.
    pub fn encoded_len(&self) -> usize {
        Self::overhead(self.topic.len(), &self.context, self.fragment.is_some())
            + self.payload.len()
    }

    /// Encoded size of a message with this topic, context and no payload.
    pub fn overhead(topic_len: usize, context: &CausalContext, fragment: bool) -> usize {
        Self::FIXED_LEN
            + topic_len
            + causal_context_len(context)
            + if fragment { Self::FRAGMENT_LEN } else { 0 }
    }

    fn encode(&self, out: &mut impl BufMut) {
        out.put_u64(self.seq.0);
        out.put_u16(self.topic.len().min(usize::from(u16::MAX)) as u16);
        out.put_slice(&self.topic[..self.topic.len().min(usize::from(u16::MAX))]);
        out.put_u8(self.ordering.code());
        put_bool(out, self.safe);
        out.put_u64(self.publisher);
        put_causal_context(out, &self.context);
        out.put_u64(self.published_at_us);
        put_bool(out, self.fragment.is_some());
        if let Some(f) = self.fragment {
            out.put_u32(f.index);
            out.put_u32(f.count);
        }
        out.put_u32(self.payload.len() as u32);
        out.put_slice(&self.payload);
    }

    fn decode(r: &mut Reader<'_>, frame: &Bytes) -> Result<DataMsg, WireError> {
        let seq = Seq(r.counter("seq")?);
        let topic_len = usize::from(r.u16("topic")?);
        let topic = slice(r, frame, topic_len, "topic")?;
        if std::str::from_utf8(&topic).is_err() {
            return Err(WireError::malformed("topic", "not UTF-8"));
        }
        let code = r.u8("ordering")?;
        let ordering = Ordering::from_code(code)
            .ok_or_else(|| WireError::malformed("ordering", format!("unknown code {code}")))?;
        let safe = r.bool("safe")?;
        let publisher = r.u64("publisher")?;
        let context = r.causal_context()?;
        if let Some((o, s)) = context.entries().iter().find(|(_, s)| s.0 >= COUNTER_LIMIT) {
            return Err(WireError::malformed(
                "causal context",
                format!("seq {s} for {o} is beyond the counter limit"),
            ));
        }
        let published_at_us = r.u64("published_at_us")?;
        let fragment = r.opt("fragment", |r| {
            let index = r.u32("fragment index")?;
            let count = r.u32("fragment count")?;
            if count < 2 || index >= count {
                return Err(WireError::malformed(
                    "fragment",
                    format!("index {index} of {count}"),
                ));
            }
            Ok(Fragment { index, count })
        })?;
        let len = r.u32("payload")? as usize;
        let payload = slice(r, frame, len, "payload")?;
        Ok(DataMsg {
            seq,
            topic,
            ordering,
            safe,
            publisher,
            context,
            published_at_us,
            fragment,
            payload,
        })
    }
}

/// One origin's entry in a digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigestEntry {
    pub origin: Origin,
    /// Everything up to this was received (for the sender itself: sent).
    pub contiguous: Seq,
    /// The highest sequence number known to exist. Below `contiguous` only
    /// from a member flushing `origin` out of the view: it vouches for no
    /// more than this (its flush report), so nobody confirms beyond it.
    pub highest: Seq,
}

/// A heartbeat: the sender's view of the group's streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    /// The coordinator of the sender's view, so a joiner knows whom to ask.
    pub coordinator: Origin,
    /// How many members the sender's view has, and whether it is primary:
    /// a member of another view of the cluster decides from them which
    /// view wins a merge.
    pub view_size: u32,
    pub primary: bool,
    /// Sorted by origin.
    pub entries: Vec<DigestEntry>,
}

/// A request to repeat messages of `origin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nak {
    pub origin: Origin,
    /// Inclusive ranges, ascending and disjoint.
    pub ranges: Vec<(Seq, Seq)>,
}

/// Per origin, what every member has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stable {
    pub entries: Vec<(Origin, Seq)>,
}

/// A join request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    /// The coordinator asked to admit the sender; `None` while discovering.
    pub target: Option<Origin>,
    /// The sender's highest sequence number so far (its stream continues after it).
    pub last_seq: Seq,
    /// The last primary view the sender (any earlier incarnation of it in
    /// this process) was a member of, 0 if none: a broker merging back after
    /// a partition counts toward the quorum of that view.
    pub last_primary: ViewId,
    /// How far into that view's agreed order its decisions reached: what it
    /// delivered plus the ISIS finals and sequencer orders it held
    /// undelivered. It counts only if the coordinator's side knows at least
    /// as much (else it held an order a quorum may have delivered and the
    /// side lacks). The sequencer's orders are one sequence, so `seq` names
    /// a prefix of it; ISIS finals are not, and are judged by
    /// `primary_final` (`isis` is informative).
    pub primary_held: TotalCounts,
    /// The highest ISIS place (final priority, origin, seq) it delivered or
    /// held a final for in that view; the default if none. A coordinator's
    /// side that delivered up to at least this place delivered every
    /// message it held a final for (ISIS places every undelivered message
    /// above a member's last delivered one).
    pub primary_final: (Priority, Origin, Seq),
}

/// A view proposal; members of the current view stop sending and flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Propose {
    pub view: ViewId,
    pub members: Vec<Origin>,
    /// The proposer ends its view to merge into another (its members, left
    /// out, flush all the same and then rejoin the other view).
    pub dissolve: bool,
}

/// A member's answer to a proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushAck {
    pub view: ViewId,
    /// The member's last sequence number in the old view.
    pub last_seq: Seq,
    /// What the member holds contiguously of every other origin of the old
    /// view: the cut of a departed origin is the most any survivor holds.
    pub held: Vec<(Origin, Seq)>,
    /// How many ISIS messages and how many sequenced messages (declarations
    /// included) the member delivered in the old view: the install's agreed
    /// frontier is the most any survivor delivered.
    pub delivered: TotalCounts,
    /// The proposers of `view` whose proposal the member flushes for. A
    /// proposer counts only acknowledgements that name it: two members
    /// proposing one view number at once (one that cannot hear the other
    /// takes over) each counted the acknowledgements meant for the other,
    /// and both installed their view (sim seed 39033).
    pub proposers: Vec<Origin>,
}

/// Counts of total-order deliveries in one view, per layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TotalCounts {
    pub isis: u64,
    pub seq: u64,
}

impl TotalCounts {
    /// The most of each count.
    pub fn max(self, other: TotalCounts) -> TotalCounts {
        TotalCounts {
            isis: self.isis.max(other.isis),
            seq: self.seq.max(other.seq),
        }
    }
}

/// The next view with the digest it starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Install {
    pub view: ViewId,
    /// This frame's share of `state`, from 0 (see [`Install::into_parts`]):
    /// an install whose state does not fit one datagram is sent as `parts`
    /// frames, identical but for their slice of `state`; it takes effect
    /// once every part arrived.
    pub part: u32,
    /// How many frames carry this install (at least 1).
    pub parts: u32,
    /// Whether the view is primary (holds a quorum of the last primary view).
    pub primary: bool,
    /// Whether the view merges back brokers that were cut off from it (a
    /// healed partition): its members' subscribers are told of the gap.
    pub merge: bool,
    pub members: Vec<Origin>,
    /// For every member, the last sequence number before this view: old
    /// members' streams were flushed up to it, joiners' continue after it.
    pub digest: Vec<(Origin, Seq)>,
    /// The agreed frontier of the old view's total order: the most ISIS
    /// and sequenced messages any survivor delivered in it. A member
    /// entering a non-primary view delivers exactly this much of the old
    /// view, so members moving together deliver the same messages.
    pub delivered: TotalCounts,
    /// The group's agreed state a joiner starts from: every declared topic
    /// and, for total topics, the `gseq` of its last message before this view.
    pub state: Vec<TopicState>,
}

impl Install {
    /// Encoded size of one [`TopicState`].
    fn state_len(t: &TopicState) -> usize {
        2 + t.name.len().min(usize::from(u16::MAX)) + 1 + 1 + 8
    }

    /// Splits the install into frames of at most `max_datagram` bytes each
    /// (one topic larger than that still goes alone). Every part repeats
    /// the view, members and digest.
    pub fn into_parts(self, max_datagram: usize) -> Vec<Install> {
        let base = HEADER_LEN
            + 1
            + 1
            + 1
            + 8
            + 4
            + 4
            + 4
            + self.members.len() * ORIGIN_LEN
            + 4
            + self.digest.len() * (ORIGIN_LEN + 8)
            + 16
            + 4
            + MAX_TRAILER_LEN;
        let room = max_datagram.saturating_sub(base);
        let mut chunks: Vec<Vec<TopicState>> = vec![Vec::new()];
        let mut used = 0;
        for t in self.state {
            let len = Self::state_len(&t);
            let last_empty = chunks.last().is_none_or(Vec::is_empty);
            if used + len > room && !last_empty {
                chunks.push(Vec::new());
                used = 0;
            }
            used += len;
            if let Some(c) = chunks.last_mut() {
                c.push(t);
            }
        }
        let parts = u32::try_from(chunks.len()).unwrap_or(u32::MAX);
        chunks
            .into_iter()
            .enumerate()
            .map(|(i, state)| Install {
                view: self.view,
                part: u32::try_from(i).unwrap_or(u32::MAX),
                parts,
                primary: self.primary,
                merge: self.merge,
                members: self.members.clone(),
                digest: self.digest.clone(),
                delivered: self.delivered,
                state,
            })
            .collect()
    }
}

/// One agreed topic in an [`Install`]'s state transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicState {
    pub name: String,
    pub ordering: Ordering,
    pub safe: bool,
    /// The last `gseq` delivered on the topic (0 for none or non-total topics).
    pub gseq: u64,
}

/// An ISIS priority: a counter, ties broken by the proposing node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Priority {
    pub counter: u64,
    pub node: NodeId,
}

/// An ordering layer's control message. It rides in its sender's reliable
/// stream as a [`DataMsg`] whose topic is empty (no client topic may be) and
/// whose payload is [`Control::encode`]; a declaration is ordered like a
/// `total-seq` message, the others are acted on in stream order. Each
/// carries a batch: many messages' proposals, finals or places per frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// The sender's proposed priority for each (origin, seq) message.
    IsisProposal(Vec<(Origin, Seq, Priority)>),
    /// The final priority of each of the sender's own messages, by seq.
    IsisFinal(Vec<(Seq, Priority)>),
    /// The sequencer's next places in the total order.
    SequencerOrder(Vec<(Origin, Seq)>),
    /// A topic declaration; the first one in total order wins.
    Declare {
        name: String,
        ordering: Ordering,
        safe: bool,
        /// The declaring client's request id at the origin.
        req: u64,
    },
}

impl Control {
    /// Bytes of a proposal entry, a final entry and an order entry.
    pub const PROPOSAL_LEN: usize = ORIGIN_LEN + 8 + 12;
    pub const FINAL_LEN: usize = 8 + 12;
    pub const ORDER_LEN: usize = ORIGIN_LEN + 8;
    /// Bytes before the entries (tag and count).
    pub const HEADER_LEN: usize = 1 + 4;

    /// The payload carrying this control message.
    pub fn encode(&self) -> Bytes {
        // Sized up front: a batch fills most of a datagram.
        let mut out = BytesMut::with_capacity(Self::HEADER_LEN + self.entries_len());
        match self {
            Control::IsisProposal(v) => {
                out.put_u8(kind::ISIS_PROPOSAL);
                out.put_u32(v.len() as u32);
                for (o, s, p) in v {
                    put_origin(&mut out, *o);
                    out.put_u64(s.0);
                    put_priority(&mut out, *p);
                }
            }
            Control::IsisFinal(v) => {
                out.put_u8(kind::ISIS_FINAL);
                out.put_u32(v.len() as u32);
                for (s, p) in v {
                    out.put_u64(s.0);
                    put_priority(&mut out, *p);
                }
            }
            Control::SequencerOrder(v) => {
                out.put_u8(kind::SEQUENCER_ORDER);
                put_seq_vector(&mut out, v);
            }
            Control::Declare {
                name,
                ordering,
                safe,
                req,
            } => {
                out.put_u8(kind::TOPIC_DECLARE);
                put_str(&mut out, name);
                out.put_u8(ordering.code());
                put_bool(&mut out, *safe);
                out.put_u64(*req);
            }
        }
        out.freeze()
    }

    /// Bytes of the entries (a declaration's fields, roughly).
    fn entries_len(&self) -> usize {
        match self {
            Control::IsisProposal(v) => v.len() * Self::PROPOSAL_LEN,
            Control::IsisFinal(v) => v.len() * Self::FINAL_LEN,
            Control::SequencerOrder(v) => v.len() * Self::ORDER_LEN,
            Control::Declare { name, .. } => name.len() + 16,
        }
    }

    /// Decodes a control payload. Never panics.
    pub fn decode(b: &[u8]) -> Result<Control, WireError> {
        let mut r = Reader::new(b);
        let c = match r.u8("control tag")? {
            kind::ISIS_PROPOSAL => {
                let n = r.count(Self::PROPOSAL_LEN, "isis proposals")?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    let o = r.origin()?;
                    let s = Seq(r.counter("seq")?);
                    v.push((o, s, priority(&mut r)?));
                }
                Control::IsisProposal(v)
            }
            kind::ISIS_FINAL => {
                let n = r.count(Self::FINAL_LEN, "isis finals")?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    let s = Seq(r.counter("seq")?);
                    v.push((s, priority(&mut r)?));
                }
                Control::IsisFinal(v)
            }
            kind::SEQUENCER_ORDER => Control::SequencerOrder(seq_vector(&mut r)?),
            kind::TOPIC_DECLARE => {
                let name = r.str("topic")?.to_string();
                let code = r.u8("ordering")?;
                let ordering = Ordering::from_code(code).ok_or_else(|| {
                    WireError::malformed("ordering", format!("unknown code {code}"))
                })?;
                Control::Declare {
                    name,
                    ordering,
                    safe: r.bool("safe")?,
                    req: r.u64("req")?,
                }
            }
            k => return Err(WireError::UnknownKind(k)),
        };
        r.finish()?;
        Ok(c)
    }
}

fn put_priority(out: &mut impl BufMut, p: Priority) {
    out.put_u64(p.counter);
    out.put_u32(p.node.0);
}

fn priority(r: &mut Reader<'_>) -> Result<Priority, WireError> {
    Ok(Priority {
        counter: r.counter("priority")?,
        node: NodeId(r.u32("priority node")?),
    })
}

impl Frame {
    /// Encodes the frame into one datagram, with a checksum and no MAC.
    pub fn encode(&self) -> Bytes {
        self.encode_with(None)
    }

    /// Encodes the frame into one datagram, signed with `key`'s signing key
    /// when there is one (a checksum otherwise).
    pub fn encode_with(&self, key: Option<&ClusterKey>) -> Bytes {
        let mut out = BytesMut::with_capacity(256);
        put_header(&mut out, self.kind(), &self.header);
        match &self.body {
            Body::Data(d) => {
                put_origin(&mut out, d.origin);
                out.put_u32(d.msgs.len() as u32);
                for m in &d.msgs {
                    m.encode(&mut out);
                }
            }
            Body::Heartbeat(d) => {
                put_origin(&mut out, d.coordinator);
                out.put_u32(d.view_size);
                put_bool(&mut out, d.primary);
                out.put_u32(d.entries.len() as u32);
                for e in &d.entries {
                    put_origin(&mut out, e.origin);
                    out.put_u64(e.contiguous.0);
                    out.put_u64(e.highest.0);
                }
            }
            Body::Nak(n) => {
                put_origin(&mut out, n.origin);
                out.put_u32(n.ranges.len() as u32);
                for (a, b) in &n.ranges {
                    out.put_u64(a.0);
                    out.put_u64(b.0);
                }
            }
            Body::Stable(s) => put_seq_vector(&mut out, &s.entries),
            Body::Join(j) => {
                put_bool(&mut out, j.target.is_some());
                if let Some(t) = j.target {
                    put_origin(&mut out, t);
                }
                out.put_u64(j.last_seq.0);
                out.put_u64(j.last_primary.0);
                out.put_u64(j.primary_held.isis);
                out.put_u64(j.primary_held.seq);
                put_priority(&mut out, j.primary_final.0);
                put_origin(&mut out, j.primary_final.1);
                out.put_u64(j.primary_final.2 .0);
            }
            Body::Propose(p) => {
                out.put_u64(p.view.0);
                put_members(&mut out, &p.members);
                put_bool(&mut out, p.dissolve);
            }
            Body::FlushAck(f) => {
                out.put_u64(f.view.0);
                out.put_u64(f.last_seq.0);
                put_seq_vector(&mut out, &f.held);
                out.put_u64(f.delivered.isis);
                out.put_u64(f.delivered.seq);
                put_members(&mut out, &f.proposers);
            }
            Body::Install(i) => {
                out.put_u64(i.view.0);
                out.put_u32(i.part);
                out.put_u32(i.parts);
                put_bool(&mut out, i.primary);
                put_bool(&mut out, i.merge);
                put_members(&mut out, &i.members);
                put_seq_vector(&mut out, &i.digest);
                out.put_u64(i.delivered.isis);
                out.put_u64(i.delivered.seq);
                out.put_u32(i.state.len() as u32);
                for t in &i.state {
                    put_str(&mut out, &t.name);
                    out.put_u8(t.ordering.code());
                    put_bool(&mut out, t.safe);
                    out.put_u64(t.gseq);
                }
            }
            Body::InstallAck(v) => out.put_u64(v.0),
            Body::Leave => {}
            Body::Suspect(x) => {
                out.put_u64(x.view.0);
                put_members(&mut out, &x.members);
            }
            Body::Refuse(x) => {
                put_origin(&mut out, x.refused);
                put_origin(&mut out, x.holder);
            }
        }
        seal(out, key.map(ClusterKey::signing))
    }

    /// The kind code of this frame's body.
    pub fn kind(&self) -> u8 {
        match self.body {
            Body::Data(_) => kind::DATA,
            Body::Heartbeat(_) => kind::HEARTBEAT,
            Body::Nak(_) => kind::NAK,
            Body::Stable(_) => kind::STABLE,
            Body::Join(_) => kind::JOIN,
            Body::Propose(_) => kind::PROPOSE,
            Body::FlushAck(_) => kind::FLUSH_ACK,
            Body::Install(_) => kind::INSTALL,
            Body::InstallAck(_) => kind::INSTALL_ACK,
            Body::Leave => kind::LEAVE,
            Body::Suspect(_) => kind::SUSPECT,
            Body::Refuse(_) => kind::REFUSE,
        }
    }

    /// Decodes one datagram of a broker without a cluster key (a frame with
    /// a MAC is refused). Never panics; payloads share `datagram`'s memory.
    pub fn decode(datagram: &Bytes) -> Result<Frame, WireError> {
        Frame::decode_with(datagram, None)
    }

    /// Decodes one datagram. With `key`, only a frame whose MAC one of its
    /// keys verifies is accepted, and that is checked before any other byte
    /// is interpreted; without, only a frame with a valid checksum. Never
    /// panics; payloads share `datagram`'s memory.
    pub fn decode_with(datagram: &Bytes, key: Option<&ClusterKey>) -> Result<Frame, WireError> {
        let (header, kind, body_start, body_end) = check(datagram, key)?;
        let body_bytes = datagram.slice(..body_end);
        let mut r = Reader::new(&body_bytes);
        r.take(body_start, "header")?;
        let body = match kind {
            kind::DATA => {
                let origin = r.origin()?;
                let n = r.count(DataMsg::FIXED_LEN, "data messages")?;
                let mut msgs = Vec::with_capacity(n);
                for _ in 0..n {
                    msgs.push(DataMsg::decode(&mut r, &body_bytes)?);
                }
                Body::Data(DataFrame { origin, msgs })
            }
            kind::HEARTBEAT => {
                let coordinator = r.origin()?;
                let view_size = r.u32("view size")?;
                let primary = r.bool("primary")?;
                let n = r.count(ORIGIN_LEN + 16, "digest")?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    entries.push(DigestEntry {
                        origin: r.origin()?,
                        contiguous: Seq(r.counter("contiguous")?),
                        highest: Seq(r.counter("highest")?),
                    });
                }
                Body::Heartbeat(Digest {
                    coordinator,
                    view_size,
                    primary,
                    entries,
                })
            }
            kind::NAK => {
                let origin = r.origin()?;
                let n = r.count(16, "nak ranges")?;
                let mut ranges = Vec::with_capacity(n);
                for _ in 0..n {
                    let a = Seq(r.counter("nak from")?);
                    let b = Seq(r.counter("nak to")?);
                    if a.0 == 0 || a > b {
                        return Err(WireError::malformed("nak range", format!("{a}..={b}")));
                    }
                    ranges.push((a, b));
                }
                Body::Nak(Nak { origin, ranges })
            }
            kind::STABLE => Body::Stable(Stable {
                entries: seq_vector(&mut r)?,
            }),
            kind::JOIN => Body::Join(Join {
                target: r.opt("join target", |r| r.origin())?,
                last_seq: Seq(r.counter("join last seq")?),
                last_primary: ViewId(r.counter("join last primary")?),
                primary_held: total_counts(&mut r)?,
                primary_final: (
                    priority(&mut r)?,
                    r.origin()?,
                    Seq(r.counter("join final seq")?),
                ),
            }),
            kind::PROPOSE => Body::Propose(Propose {
                view: ViewId(r.counter("view")?),
                members: members(&mut r)?,
                dissolve: r.bool("dissolve")?,
            }),
            kind::FLUSH_ACK => Body::FlushAck(FlushAck {
                view: ViewId(r.counter("view")?),
                last_seq: Seq(r.counter("flush last seq")?),
                held: seq_vector(&mut r)?,
                delivered: total_counts(&mut r)?,
                proposers: members(&mut r)?,
            }),
            kind::INSTALL => {
                let view = ViewId(r.counter("view")?);
                let part = r.u32("install part")?;
                let parts = r.u32("install parts")?;
                if part >= parts {
                    return Err(WireError::malformed(
                        "install part",
                        format!("part {part} of {parts}"),
                    ));
                }
                let primary = r.bool("primary")?;
                let merge = r.bool("merge")?;
                Body::Install(Install {
                    view,
                    part,
                    parts,
                    primary,
                    merge,
                    members: members(&mut r)?,
                    digest: seq_vector(&mut r)?,
                    delivered: total_counts(&mut r)?,
                    state: topic_states(&mut r)?,
                })
            }
            kind::INSTALL_ACK => Body::InstallAck(ViewId(r.counter("view")?)),
            kind::LEAVE => Body::Leave,
            kind::SUSPECT => Body::Suspect(Suspect {
                view: ViewId(r.counter("view")?),
                members: members(&mut r)?,
            }),
            kind::REFUSE => Body::Refuse(Refuse {
                refused: r.origin()?,
                holder: r.origin()?,
            }),
            k => return Err(WireError::UnknownKind(k)),
        };
        r.finish()?;
        Ok(Frame { header, body })
    }
}

/// Seals an arbitrary body under a header with any kind code: for tests and
/// fuzzers that need well-checksummed frames of kinds this build rejects.
pub fn encode_raw(kind: u8, header: &Header, body: &[u8]) -> Bytes {
    encode_raw_with(kind, header, body, None)
}

/// [`encode_raw`], signed with `key` when there is one: for fuzzers and
/// tests that need well-signed frames with arbitrary bodies.
pub fn encode_raw_with(kind: u8, header: &Header, body: &[u8], key: Option<&ClusterKey>) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_LEN + body.len() + MAX_TRAILER_LEN);
    put_header(&mut out, kind, header);
    out.extend_from_slice(body);
    seal(out, key.map(ClusterKey::signing))
}

/// Builds a data frame message by message, so the engine can batch as many
/// messages as fit in one datagram without building an intermediate list.
#[derive(Debug)]
pub struct DataFrameWriter {
    out: BytesMut,
    count_at: usize,
    count: u32,
    max: usize,
    /// Signs the frame when set; a checksum seals it otherwise.
    key: Option<SigningKey>,
    /// Bytes the trailer will take.
    trailer: usize,
}

impl DataFrameWriter {
    /// Starts a data frame of `origin`'s messages, at most `max_datagram`
    /// bytes long, sealed with a checksum.
    pub fn new(header: &Header, origin: Origin, max_datagram: usize) -> Self {
        DataFrameWriter::keyed(header, origin, max_datagram, None)
    }

    /// Starts a data frame of `origin`'s messages, at most `max_datagram`
    /// bytes long, signed with `key`'s signing key when there is one.
    pub fn keyed(
        header: &Header,
        origin: Origin,
        max_datagram: usize,
        key: Option<&ClusterKey>,
    ) -> Self {
        let mut out = BytesMut::with_capacity(max_datagram.min(64 * 1024));
        put_header(&mut out, kind::DATA, header);
        put_origin(&mut out, origin);
        let count_at = out.len();
        out.put_u32(0);
        DataFrameWriter {
            out,
            count_at,
            count: 0,
            max: max_datagram,
            key: key.map(ClusterKey::signing),
            trailer: if key.is_some() { MAC_LEN } else { TRAILER_LEN },
        }
    }

    /// Appends `msg` if it fits (the first message always goes in, so an
    /// oversized one is sent rather than lost); returns whether it was added.
    pub fn push(&mut self, msg: &DataMsg) -> bool {
        if self.count > 0 && self.out.len() + msg.encoded_len() + self.trailer > self.max {
            return false;
        }
        msg.encode(&mut self.out);
        self.count += 1;
        true
    }

    /// Messages added so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether no message was added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Sets extra header flags (e.g. [`Flags::ACK_REQUESTED`] once the batch is known to be the last).
    pub fn add_flags(&mut self, flags: Flags) {
        self.out[FLAGS_AT] |= flags.0;
    }

    /// Seals the datagram.
    pub fn finish(mut self) -> Bytes {
        let at = self.count_at;
        self.out[at..at + 4].copy_from_slice(&self.count.to_be_bytes());
        seal(self.out, self.key)
    }
}

/// Offset of the flags byte in the header.
const FLAGS_AT: usize = 4;

/// Checks the MAC (with a key) or the checksum (without), then magic,
/// version and flags; returns the header (without [`Flags::MAC`]), the kind
/// and the body's bounds.
fn check(
    datagram: &[u8],
    key: Option<&ClusterKey>,
) -> Result<(Header, u8, usize, usize), WireError> {
    if datagram.len() < HEADER_LEN + TRAILER_LEN {
        return Err(WireError::Truncated { what: "frame" });
    }
    // The flags byte only says which trailer to check: the MAC covers it, so
    // flipping it cannot make a frame acceptable.
    let mac = Flags(datagram[FLAGS_AT]).contains(Flags::MAC);
    let body_end = match (key, mac) {
        (Some(key), true) => {
            let Some(body_end) = datagram
                .len()
                .checked_sub(MAC_LEN)
                .filter(|e| *e >= HEADER_LEN)
            else {
                return Err(WireError::Truncated { what: "frame" });
            };
            if !key.verify(&datagram[..body_end], &datagram[body_end..]) {
                return Err(WireError::BadMac);
            }
            body_end
        }
        (Some(_), false) => return Err(WireError::MacMissing),
        (None, true) => return Err(WireError::MacUnexpected),
        (None, false) => {
            let body_end = datagram.len() - TRAILER_LEN;
            let mut sum = [0u8; 4];
            sum.copy_from_slice(&datagram[body_end..]);
            if crc32c::crc32c(&datagram[..body_end]) != u32::from_be_bytes(sum) {
                return Err(WireError::Checksum);
            }
            body_end
        }
    };
    let mut r = Reader::new(&datagram[..body_end]);
    let magic = r.u16("magic")?;
    if magic != MAGIC {
        return Err(WireError::malformed("magic", format!("{magic:#06x}")));
    }
    let version = r.u8("version")?;
    if version != GROUP_PROTOCOL_VERSION {
        return Err(WireError::Version {
            got: u16::from(version),
            supported: u16::from(GROUP_PROTOCOL_VERSION),
        });
    }
    let kind = r.u8("kind")?;
    let flags = Flags(r.u8("flags")?);
    if flags.0 & !Flags::KNOWN != 0 {
        return Err(WireError::malformed("flags", format!("{:#04x}", flags.0)));
    }
    let flags = Flags(flags.0 & !Flags::MAC.0);
    let _reserved = r.u8("reserved")?;
    let header = Header {
        flags,
        cluster: ClusterId(r.u64("cluster")?),
        sender: r.origin()?,
        view: ViewId(r.counter("view")?),
        tag: r.u32("view tag")?,
        beat: r.u64("frame counter")?,
    };
    Ok((header, kind, r.position(), body_end))
}

fn put_header(out: &mut BytesMut, kind: u8, h: &Header) {
    out.put_u16(MAGIC);
    out.put_u8(GROUP_PROTOCOL_VERSION);
    out.put_u8(kind);
    out.put_u8(h.flags.0);
    out.put_u8(0);
    out.put_u64(h.cluster.0);
    put_origin(out, h.sender);
    out.put_u64(h.view.0);
    out.put_u32(h.tag);
    out.put_u64(h.beat);
}

/// Appends the trailer: the MAC under `key` (and sets [`Flags::MAC`]), or
/// the checksum (and clears it). The one place every frame is sealed.
fn seal(mut out: BytesMut, key: Option<SigningKey>) -> Bytes {
    match key {
        Some(key) => {
            out[FLAGS_AT] |= Flags::MAC.0;
            let tag = key.sign(&out);
            out.extend_from_slice(&tag);
        }
        None => {
            out[FLAGS_AT] &= !Flags::MAC.0;
            let sum = crc32c::crc32c(&out);
            out.put_u32(sum);
        }
    }
    out.freeze()
}

/// Takes `n` bytes and returns them as a zero-copy slice of `frame`.
fn slice(
    r: &mut Reader<'_>,
    frame: &Bytes,
    n: usize,
    what: &'static str,
) -> Result<Bytes, WireError> {
    let start = r.position();
    r.take(n, what)?;
    Ok(frame.slice(start..start + n))
}

fn topic_states(r: &mut Reader<'_>) -> Result<Vec<TopicState>, WireError> {
    let n = r.count(2 + 1 + 1 + 8, "topic states")?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.str("topic")?.to_string();
        let code = r.u8("ordering")?;
        let ordering = Ordering::from_code(code)
            .ok_or_else(|| WireError::malformed("ordering", format!("unknown code {code}")))?;
        v.push(TopicState {
            name,
            ordering,
            safe: r.bool("safe")?,
            gseq: r.counter("gseq")?,
        });
    }
    Ok(v)
}

fn put_members(out: &mut BytesMut, members: &[Origin]) {
    out.put_u32(members.len() as u32);
    for m in members {
        put_origin(out, *m);
    }
}

fn members(r: &mut Reader<'_>) -> Result<Vec<Origin>, WireError> {
    let n = r.count(ORIGIN_LEN, "members")?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(r.origin()?);
    }
    Ok(v)
}

fn put_seq_vector(out: &mut BytesMut, entries: &[(Origin, Seq)]) {
    out.put_u32(entries.len() as u32);
    for (o, s) in entries {
        put_origin(out, *o);
        out.put_u64(s.0);
    }
}

fn total_counts(r: &mut Reader<'_>) -> Result<TotalCounts, WireError> {
    Ok(TotalCounts {
        isis: r.counter("isis deliveries")?,
        seq: r.counter("sequenced deliveries")?,
    })
}

fn seq_vector(r: &mut Reader<'_>) -> Result<Vec<(Origin, Seq)>, WireError> {
    let n = r.count(ORIGIN_LEN + 8, "seq vector")?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let o = r.origin()?;
        v.push((o, Seq(r.counter("seq")?)));
    }
    Ok(v)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::types::{Incarnation, NodeId};
    use proptest::prelude::*;

    /// Any protocol counter the decoder accepts.
    fn ctr() -> impl Strategy<Value = u64> + Clone {
        0..COUNTER_LIMIT
    }

    fn origin() -> impl Strategy<Value = Origin> {
        (any::<u32>(), any::<u64>()).prop_map(|(n, i)| Origin {
            node: NodeId(n),
            incarnation: Incarnation(i),
        })
    }

    fn header() -> impl Strategy<Value = Header> {
        (0u8..4, any::<u64>(), origin(), ctr(), any::<u32>()).prop_map(|(f, c, s, v, tag)| Header {
            flags: Flags(f),
            cluster: ClusterId(c),
            sender: s,
            view: ViewId(v),
            tag,
            beat: 0,
        })
    }

    fn context() -> impl Strategy<Value = CausalContext> {
        proptest::collection::vec((origin(), ctr()), 0..3)
            .prop_map(|v| CausalContext::from_entries(v.into_iter().map(|(o, s)| (o, Seq(s)))))
    }

    fn msg() -> impl Strategy<Value = DataMsg> {
        (
            ctr(),
            "[a-z.]{0,12}",
            0u8..4,
            any::<bool>(),
            any::<u64>(),
            context(),
            any::<u64>(),
            proptest::option::of((0u32..5, 5u32..9)),
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(
                |(seq, topic, o, safe, publisher, context, at, frag, payload)| DataMsg {
                    seq: Seq(seq),
                    topic: Bytes::from(topic),
                    ordering: Ordering::from_code(o).unwrap(),
                    safe,
                    publisher,
                    context,
                    published_at_us: at,
                    fragment: frag.map(|(index, count)| Fragment { index, count }),
                    payload: Bytes::from(payload),
                },
            )
    }

    fn seqs() -> impl Strategy<Value = Vec<(Origin, Seq)>> {
        proptest::collection::vec((origin(), ctr().prop_map(Seq)), 0..4)
    }

    fn body() -> impl Strategy<Value = Body> {
        prop_oneof![
            (origin(), proptest::collection::vec(msg(), 0..4))
                .prop_map(|(origin, msgs)| Body::Data(DataFrame { origin, msgs })),
            (
                origin(),
                proptest::collection::vec((origin(), ctr(), ctr()), 0..4)
            )
                .prop_map(|(coordinator, e)| Body::Heartbeat(Digest {
                    coordinator,
                    view_size: e.len() as u32,
                    primary: e.len() % 2 == 0,
                    entries: e
                        .into_iter()
                        .map(|(origin, c, h)| DigestEntry {
                            origin,
                            contiguous: Seq(c),
                            highest: Seq(h)
                        })
                        .collect()
                })),
            (
                origin(),
                proptest::collection::vec((1u64..100, 0u64..100), 0..4)
            )
                .prop_map(|(origin, r)| Body::Nak(Nak {
                    origin,
                    ranges: r.into_iter().map(|(a, d)| (Seq(a), Seq(a + d))).collect()
                })),
            seqs().prop_map(|entries| Body::Stable(Stable { entries })),
            (
                proptest::option::of(origin()),
                ctr(),
                ctr(),
                ctr(),
                origin()
            )
                .prop_map(|(target, s, p, n, o)| {
                    Body::Join(Join {
                        target,
                        last_seq: Seq(s),
                        last_primary: ViewId(p),
                        primary_held: TotalCounts {
                            isis: n,
                            seq: n / 2,
                        },
                        primary_final: (
                            Priority {
                                counter: n / 3,
                                node: o.node,
                            },
                            o,
                            Seq(p),
                        ),
                    })
                }),
            (ctr(), proptest::collection::vec(origin(), 0..4)).prop_map(|(v, members)| {
                Body::Propose(Propose {
                    view: ViewId(v),
                    dissolve: members.len() == 1,
                    members,
                })
            }),
            (
                ctr(),
                ctr(),
                seqs(),
                ctr(),
                ctr(),
                proptest::collection::vec(origin(), 0..4)
            )
                .prop_map(|(v, s, held, isis, seq, proposers)| {
                    Body::FlushAck(FlushAck {
                        view: ViewId(v),
                        last_seq: Seq(s),
                        held,
                        delivered: TotalCounts { isis, seq },
                        proposers,
                    })
                }),
            (ctr(), proptest::collection::vec(origin(), 0..4)).prop_map(|(v, members)| {
                Body::Suspect(Suspect {
                    view: ViewId(v),
                    members,
                })
            }),
            (origin(), origin())
                .prop_map(|(refused, holder)| Body::Refuse(Refuse { refused, holder })),
            (
                ctr(),
                proptest::collection::vec(origin(), 0..4),
                seqs(),
                proptest::collection::vec(("[a-z.]{1,8}", 0u8..4, any::<bool>(), ctr()), 0..3),
                (ctr(), ctr()),
            )
                .prop_map(|(v, members, digest, st, (isis, seq))| Body::Install(
                    Install {
                        view: ViewId(v),
                        part: 0,
                        parts: 1,
                        primary: v % 2 == 0,
                        merge: v % 3 == 0,
                        members,
                        digest,
                        delivered: TotalCounts { isis, seq },
                        state: st
                            .into_iter()
                            .map(|(name, o, safe, gseq)| TopicState {
                                name,
                                ordering: Ordering::from_code(o).unwrap(),
                                safe,
                                gseq
                            })
                            .collect()
                    }
                )),
            ctr().prop_map(|v| Body::InstallAck(ViewId(v))),
            Just(Body::Leave),
        ]
    }

    fn frame() -> impl Strategy<Value = Frame> {
        (header(), body()).prop_map(|(header, body)| Frame { header, body })
    }

    fn control() -> impl Strategy<Value = Control> {
        let prio = (ctr(), any::<u32>()).prop_map(|(counter, n)| Priority {
            counter,
            node: NodeId(n),
        });
        prop_oneof![
            proptest::collection::vec((origin(), ctr(), prio.clone()), 0..4).prop_map(|v| {
                Control::IsisProposal(v.into_iter().map(|(o, s, p)| (o, Seq(s), p)).collect())
            }),
            proptest::collection::vec((ctr(), prio), 0..4).prop_map(|v| Control::IsisFinal(
                v.into_iter().map(|(s, p)| (Seq(s), p)).collect()
            )),
            seqs().prop_map(Control::SequencerOrder),
            ("[a-z.]{1,8}", 0u8..4, any::<bool>(), any::<u64>()).prop_map(
                |(name, o, safe, req)| {
                    Control::Declare {
                        name,
                        ordering: Ordering::from_code(o).unwrap(),
                        safe,
                        req,
                    }
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn every_control_round_trips_and_truncations_error(
            c in control(), cut in any::<prop::sample::Index>()
        ) {
            let b = c.encode();
            prop_assert_eq!(Control::decode(&b), Ok(c));
            let n = cut.index(b.len());
            prop_assert!(Control::decode(&b[..n]).is_err());
        }

        #[test]
        fn random_control_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Control::decode(&b);
        }

        #[test]
        fn every_frame_round_trips(f in frame()) {
            let bytes = f.encode();
            prop_assert_eq!(Frame::decode(&bytes), Ok(f));
        }

        #[test]
        fn every_truncation_errors(f in frame(), cut in any::<prop::sample::Index>()) {
            let bytes = f.encode();
            let n = cut.index(bytes.len());
            prop_assert!(Frame::decode(&bytes.slice(..n)).is_err());
        }

        #[test]
        fn random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Frame::decode(&Bytes::from(b));
        }

        #[test]
        fn random_bodies_with_valid_checksum_never_panic(
            h in header(), k in any::<u8>(), b in proptest::collection::vec(any::<u8>(), 0..128)
        ) {
            let mut out = BytesMut::new();
            put_header(&mut out, k, &h);
            out.extend_from_slice(&b);
            let _ = Frame::decode(&seal(out, None));
        }

        #[test]
        fn a_flipped_bit_fails_the_checksum(f in frame(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut bytes = f.encode().to_vec();
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
            // The flags byte follows magic, version and kind: setting the
            // MAC flag there makes an unkeyed receiver refuse it as such.
            let expected = if i == 4 && (1u8 << bit) == Flags::MAC.0 {
                WireError::MacUnexpected
            } else {
                WireError::Checksum
            };
            prop_assert_eq!(Frame::decode(&Bytes::from(bytes)), Err(expected));
        }

        #[test]
        fn every_keyed_frame_round_trips_and_truncations_error(
            f in frame(), cut in any::<prop::sample::Index>()
        ) {
            let k = key(b"0123456789abcdef-one");
            let bytes = f.encode_with(Some(&k));
            prop_assert!(Flags(bytes[FLAGS_AT]).contains(Flags::MAC));
            prop_assert_eq!(Frame::decode_with(&bytes, Some(&k)), Ok(f));
            let n = cut.index(bytes.len());
            prop_assert!(Frame::decode_with(&bytes.slice(..n), Some(&k)).is_err());
        }

        #[test]
        fn a_flipped_bit_fails_the_mac(f in frame(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let k = key(b"0123456789abcdef-one");
            let mut bytes = f.encode_with(Some(&k)).to_vec();
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
            let want = if i == FLAGS_AT && 1 << bit == Flags::MAC.0 {
                WireError::MacMissing
            } else {
                WireError::BadMac
            };
            prop_assert_eq!(Frame::decode_with(&Bytes::from(bytes), Some(&k)), Err(want));
        }

        #[test]
        fn a_frame_signed_with_another_key_or_none_is_refused(f in frame()) {
            let k = key(b"0123456789abcdef-one");
            let other = key(b"0123456789abcdef-two");
            prop_assert_eq!(
                Frame::decode_with(&f.encode_with(Some(&other)), Some(&k)),
                Err(WireError::BadMac)
            );
            prop_assert_eq!(Frame::decode_with(&f.encode(), Some(&k)), Err(WireError::MacMissing));
            prop_assert_eq!(Frame::decode(&f.encode_with(Some(&k))), Err(WireError::MacUnexpected));
        }

        #[test]
        fn random_bodies_with_a_valid_mac_never_panic(
            h in header(), k in any::<u8>(), b in proptest::collection::vec(any::<u8>(), 0..128)
        ) {
            let key = key(b"0123456789abcdef-one");
            let _ = Frame::decode_with(&encode_raw_with(k, &h, &b, Some(&key)), Some(&key));
        }

        #[test]
        fn writer_matches_keyed_frame_encoding(h in header(), o in origin(), msgs in proptest::collection::vec(msg(), 1..4)) {
            let k = key(b"0123456789abcdef-one");
            let mut w = DataFrameWriter::keyed(&h, o, usize::MAX, Some(&k));
            for m in &msgs {
                prop_assert!(w.push(m));
            }
            w.add_flags(Flags::ACK_REQUESTED);
            let h = Header { flags: h.flags.with(Flags::ACK_REQUESTED), ..h };
            let f = Frame { header: h, body: Body::Data(DataFrame { origin: o, msgs }) };
            prop_assert_eq!(w.finish(), f.encode_with(Some(&k)));
        }

        #[test]
        fn writer_matches_frame_encoding(h in header(), o in origin(), msgs in proptest::collection::vec(msg(), 1..4)) {
            let mut w = DataFrameWriter::new(&h, o, usize::MAX);
            for m in &msgs {
                prop_assert!(w.push(m));
            }
            let f = Frame { header: h, body: Body::Data(DataFrame { origin: o, msgs }) };
            prop_assert_eq!(w.finish(), f.encode());
        }
    }

    fn key(secret: &[u8]) -> ClusterKey {
        ClusterKey::from_secrets([secret]).unwrap()
    }

    /// A plain header of view 3 for the keyed-frame tests.
    fn view_3_header() -> Header {
        Header {
            flags: Flags::default(),
            cluster: ClusterId(7),
            sender: Origin::default(),
            view: ViewId(3),
            tag: 9,
            beat: 0,
        }
    }

    #[test]
    fn a_rotated_key_verifies_frames_of_either_key() {
        let f = Frame {
            header: view_3_header(),
            body: Body::Leave,
        };
        let old = key(b"the-old-secret-0123");
        let new = key(b"the-new-secret-0123");
        let adding = ClusterKey::parse(b"the-old-secret-0123\nthe-new-secret-0123").unwrap();
        let moved = ClusterKey::parse(b"the-new-secret-0123\nthe-old-secret-0123").unwrap();
        // Step 1: new key second everywhere: still signs with the old one.
        assert_eq!(f.encode_with(Some(&adding)), f.encode_with(Some(&old)));
        // Step 2: moved first on some brokers while others are at step 1:
        // everyone accepts everyone.
        for signer in [&adding, &moved] {
            for verifier in [&adding, &moved] {
                assert_eq!(
                    Frame::decode_with(&f.encode_with(Some(signer)), Some(verifier)),
                    Ok(f.clone())
                );
            }
        }
        // Step 3: old key dropped; only brokers at step 2 or later are heard.
        assert_eq!(
            Frame::decode_with(&f.encode_with(Some(&moved)), Some(&new)),
            Ok(f.clone())
        );
        assert_eq!(
            Frame::decode_with(&f.encode_with(Some(&adding)), Some(&new)),
            Err(WireError::BadMac)
        );
    }

    #[test]
    fn a_truncated_mac_is_refused() {
        let k = key(b"0123456789abcdef-one");
        let f = Frame {
            header: view_3_header(),
            body: Body::InstallAck(ViewId(3)),
        };
        let bytes = f.encode_with(Some(&k));
        for cut in 1..=MAC_LEN {
            let short = bytes.slice(..bytes.len() - cut);
            assert!(Frame::decode_with(&short, Some(&k)).is_err(), "cut {cut}");
        }
        // A frame of just a header and a few bytes of tag.
        let tiny = bytes.slice(..HEADER_LEN + TRAILER_LEN);
        assert_eq!(
            Frame::decode_with(&tiny, Some(&k)),
            Err(WireError::Truncated { what: "frame" })
        );
    }

    #[test]
    fn writer_respects_the_datagram_size() {
        let h = Header {
            flags: Flags::default(),
            cluster: ClusterId::from_name("c"),
            sender: Origin::default(),
            view: ViewId(1),
            tag: 0,
            beat: 0,
        };
        let m = DataMsg {
            seq: Seq(1),
            topic: Bytes::from_static(b"t"),
            ordering: Ordering::Fifo,
            safe: false,
            publisher: 1,
            context: CausalContext::new(),
            published_at_us: 0,
            fragment: None,
            payload: Bytes::from(vec![7u8; 100]),
        };
        // Keyed, the longest trailer: exactly DATA_FRAME_OVERHEAD.
        let max = DATA_FRAME_OVERHEAD + 3 * m.encoded_len();
        let key = ClusterKey::parse(b"0123456789abcdef").unwrap();
        let mut w = DataFrameWriter::keyed(&h, Origin::default(), max, Some(&key));
        while w.push(&m) {}
        assert_eq!(w.len(), 3);
        assert_eq!(w.finish().len(), max);
        // Unkeyed, the checksum trailer.
        let max = max - MAX_TRAILER_LEN + TRAILER_LEN;
        let mut w = DataFrameWriter::new(&h, Origin::default(), max);
        while w.push(&m) {}
        assert_eq!(w.len(), 3);
        assert_eq!(w.finish().len(), max);
    }

    #[test]
    fn reserved_and_unknown_kinds_are_errors() {
        for k in [
            kind::ISIS_PROPOSAL,
            kind::ISIS_FINAL,
            kind::SEQUENCER_ORDER,
            0x7f,
        ] {
            let mut out = BytesMut::new();
            put_header(
                &mut out,
                k,
                &Header {
                    flags: Flags::default(),
                    cluster: ClusterId(1),
                    sender: Origin::default(),
                    view: ViewId(0),
                    tag: 0,
                    beat: 0,
                },
            );
            assert_eq!(
                Frame::decode(&seal(out, None)),
                Err(WireError::UnknownKind(k))
            );
        }
    }

    #[test]
    fn another_version_or_magic_or_an_unexpected_mac_is_refused() {
        let h = Header {
            flags: Flags::default(),
            cluster: ClusterId(1),
            sender: Origin::default(),
            view: ViewId(0),
            tag: 0,
            beat: 0,
        };
        let patched = |at: usize, v: u8| {
            let mut out = BytesMut::new();
            put_header(&mut out, kind::LEAVE, &h);
            out[at] = v;
            Frame::decode(&seal(out, None))
        };
        assert!(matches!(
            patched(2, 9),
            Err(WireError::Version { got: 9, .. })
        ));
        assert!(matches!(patched(0, 0), Err(WireError::Malformed { .. })));
        // The MAC flag is judged before the checksum (seal would clear it).
        let mut with_mac = encode_raw(kind::LEAVE, &h, &[]).to_vec();
        with_mac[FLAGS_AT] |= Flags::MAC.0;
        assert_eq!(
            Frame::decode(&Bytes::from(with_mac)),
            Err(WireError::MacUnexpected)
        );
        assert!(matches!(patched(4, 0x40), Err(WireError::Malformed { .. })));
        assert!(patched(4, 0).is_ok());
    }

    #[test]
    fn counters_at_or_beyond_two_to_the_63_are_malformed() {
        let h = |view: u64| Header {
            flags: Flags::default(),
            cluster: ClusterId(1),
            sender: Origin::default(),
            view: ViewId(view),
            tag: 0,
            beat: 0,
        };
        let encode = |view: u64, body: Body| {
            Frame {
                header: h(view),
                body,
            }
            .encode()
        };
        let max = COUNTER_LIMIT - 1;
        // The largest accepted value still decodes.
        assert!(Frame::decode(&encode(max, Body::InstallAck(ViewId(max)))).is_ok());
        let bad = [
            encode(COUNTER_LIMIT, Body::Leave),
            encode(1, Body::InstallAck(ViewId(u64::MAX))),
            encode(
                1,
                Body::Install(Install {
                    view: ViewId(u64::MAX),
                    part: 0,
                    parts: 1,
                    primary: true,
                    merge: false,
                    members: vec![Origin::default()],
                    digest: vec![],
                    delivered: TotalCounts::default(),
                    state: vec![],
                }),
            ),
            encode(
                1,
                Body::Install(Install {
                    view: ViewId(2),
                    part: 0,
                    parts: 1,
                    primary: true,
                    merge: false,
                    members: vec![Origin::default()],
                    digest: vec![(Origin::default(), Seq(u64::MAX))],
                    delivered: TotalCounts::default(),
                    state: vec![TopicState {
                        name: "t".into(),
                        ordering: Ordering::TotalSeq,
                        safe: false,
                        gseq: 0,
                    }],
                }),
            ),
            encode(
                1,
                Body::Heartbeat(Digest {
                    coordinator: Origin::default(),
                    view_size: 1,
                    primary: true,
                    entries: vec![DigestEntry {
                        origin: Origin::default(),
                        contiguous: Seq(1),
                        highest: Seq(COUNTER_LIMIT),
                    }],
                }),
            ),
            encode(
                1,
                Body::Join(Join {
                    target: None,
                    last_seq: Seq(u64::MAX),
                    last_primary: ViewId(0),
                    primary_held: TotalCounts::default(),
                    primary_final: Default::default(),
                }),
            ),
        ];
        for f in bad {
            assert!(
                matches!(Frame::decode(&f), Err(WireError::Malformed { .. })),
                "{:?}",
                Frame::decode(&f)
            );
        }
        let mut m = DataMsg {
            seq: Seq(u64::MAX),
            topic: Bytes::from_static(b"t"),
            ordering: Ordering::Fifo,
            safe: false,
            publisher: 1,
            context: CausalContext::new(),
            published_at_us: 0,
            fragment: None,
            payload: Bytes::new(),
        };
        let data = |m: &DataMsg| {
            encode(
                1,
                Body::Data(DataFrame {
                    origin: Origin::default(),
                    msgs: vec![m.clone()],
                }),
            )
        };
        assert!(matches!(
            Frame::decode(&data(&m)),
            Err(WireError::Malformed { .. })
        ));
        m.seq = Seq(1);
        m.context = CausalContext::from_entries([(Origin::default(), Seq(u64::MAX))]);
        assert!(matches!(
            Frame::decode(&data(&m)),
            Err(WireError::Malformed { .. })
        ));
        let c = Control::IsisFinal(vec![(
            Seq(1),
            Priority {
                counter: u64::MAX,
                node: NodeId(1),
            },
        )]);
        assert!(matches!(
            Control::decode(&c.encode()),
            Err(WireError::Malformed { .. })
        ));
    }

    #[test]
    fn a_large_install_is_split_into_parts_that_fit_a_datagram() {
        let h = Header {
            flags: Flags::default(),
            cluster: ClusterId(1),
            sender: Origin::default(),
            view: ViewId(3),
            tag: 0,
            beat: 0,
        };
        let state: Vec<TopicState> = (0..1000)
            .map(|i| TopicState {
                name: format!("orders.region.{i:06}"),
                ordering: Ordering::TotalSeq,
                safe: i % 2 == 0,
                gseq: i,
            })
            .collect();
        let install = Install {
            view: ViewId(4),
            part: 0,
            parts: 1,
            primary: true,
            merge: false,
            members: vec![Origin::default(); 3],
            digest: vec![(Origin::default(), Seq(9)); 3],
            delivered: TotalCounts { isis: 4, seq: 5 },
            state: state.clone(),
        };
        for max in [512, 1400, 8192] {
            let parts = install.clone().into_parts(max);
            assert!(parts.len() > 1);
            let mut joined = Vec::new();
            for (i, p) in parts.iter().enumerate() {
                let f = Frame {
                    header: h,
                    body: Body::Install(p.clone()),
                }
                .encode();
                assert!(f.len() <= max, "part {i} is {} > {max}", f.len());
                let Ok(Frame {
                    body: Body::Install(d),
                    ..
                }) = Frame::decode(&f)
                else {
                    panic!("part {i} does not decode")
                };
                assert_eq!((d.part, d.parts), (i as u32, parts.len() as u32));
                joined.extend(d.state);
            }
            assert_eq!(joined, state);
        }
        let one = install.clone().into_parts(1 << 20);
        assert_eq!(one, vec![install.clone()]);
        let mut bad = install;
        bad.part = 2;
        bad.parts = 2;
        let f = Frame {
            header: h,
            body: Body::Install(bad),
        }
        .encode();
        assert!(matches!(
            Frame::decode(&f),
            Err(WireError::Malformed { .. })
        ));
    }

    #[test]
    fn cluster_id_is_stable() {
        // FNV-1a test vector: the empty string hashes to the offset basis.
        assert_eq!(ClusterId::from_name("").0, 0xcbf2_9ce4_8422_2325);
        assert_eq!(ClusterId::from_name("a").0, 0xaf63_dc4c_8601_ec8c);
        assert_ne!(ClusterId::from_name("ordo"), ClusterId::from_name("ordp"));
    }
}
