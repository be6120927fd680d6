//! Micro-benchmarks of the byte formats on the hot path: the client codec
//! (Publish in, Message out) and the group data frame (writer and decoder),
//! at the 128-byte payloads of the peer comparison.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ordo_wire::client::{Delivery, Reply, Request, DEFAULT_MAX_FRAME};
use ordo_wire::group::{ClusterId, DataFrameWriter, DataMsg, Flags, Frame, Header};
use ordo_wire::{CausalContext, Incarnation, NodeId, Ordering, Origin, Seq, ViewId};

const PAYLOAD: usize = 128;
/// Frames per decode batch: a socket read carries many.
const BATCH: usize = 64;
const MAX_DATAGRAM: usize = 8192;

fn origin() -> Origin {
    Origin {
        node: NodeId(1),
        incarnation: Incarnation(7),
    }
}

fn publish() -> Request {
    Request::Publish {
        confirm: None,
        topic: "ordo.bench".into(),
        context: CausalContext::new(),
        payload: Bytes::from(vec![7u8; PAYLOAD]),
    }
}

fn message(seq: u64) -> Reply {
    Reply::Message(Box::new(Delivery {
        sid: 3,
        topic: "ordo.bench".into(),
        ordering: Ordering::Fifo,
        publisher: 42,
        origin: origin(),
        seq: Seq(seq),
        context: CausalContext::new(),
        gseq: None,
        payload: Bytes::from(vec![7u8; PAYLOAD]),
    }))
}

fn data_msg(seq: u64) -> DataMsg {
    DataMsg {
        seq: Seq(seq),
        topic: Bytes::from_static(b"ordo.bench"),
        ordering: Ordering::Fifo,
        safe: false,
        publisher: 42,
        context: CausalContext::new(),
        published_at_us: 1_700_000_000_000_000 + seq,
        fragment: None,
        payload: Bytes::from(vec![7u8; PAYLOAD]),
    }
}

fn header() -> Header {
    Header {
        flags: Flags(0),
        cluster: ClusterId::from_name("bench"),
        sender: origin(),
        view: ViewId(1),
        tag: 0,
        beat: 0,
    }
}

fn client_codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("client");
    g.throughput(Throughput::Elements(BATCH as u64));
    let req = publish();
    g.bench_function("publish_encode_x64", |b| {
        let mut out = BytesMut::with_capacity(BATCH * (PAYLOAD + 64));
        b.iter(|| {
            out.clear();
            for _ in 0..BATCH {
                black_box(&req).encode(&mut out);
            }
            black_box(out.len())
        })
    });
    let mut wire = BytesMut::new();
    for _ in 0..BATCH {
        req.encode(&mut wire);
    }
    let wire = wire.freeze();
    g.bench_function("publish_decode_x64", |b| {
        b.iter_batched(
            || BytesMut::from(&wire[..]),
            |mut buf| {
                let mut n = 0;
                while let Some(r) = Request::decode(&mut buf, DEFAULT_MAX_FRAME as usize).unwrap() {
                    black_box(r);
                    n += 1;
                }
                assert_eq!(n, BATCH);
            },
            BatchSize::SmallInput,
        )
    });
    let msgs: Vec<Reply> = (0..BATCH as u64).map(message).collect();
    g.bench_function("message_encode_x64", |b| {
        let mut out = BytesMut::with_capacity(BATCH * (PAYLOAD + 96));
        b.iter(|| {
            out.clear();
            for m in &msgs {
                m.encode(&mut out);
            }
            black_box(out.len())
        })
    });
    let mut wire = BytesMut::new();
    for m in &msgs {
        m.encode(&mut wire);
    }
    let wire = wire.freeze();
    g.bench_function("message_decode_x64", |b| {
        b.iter_batched(
            || BytesMut::from(&wire[..]),
            |mut buf| {
                let mut n = 0;
                while let Some(r) = Reply::decode(&mut buf, DEFAULT_MAX_FRAME as usize).unwrap() {
                    black_box(r);
                    n += 1;
                }
                assert_eq!(n, BATCH);
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn group_frames(c: &mut Criterion) {
    let msgs: Vec<DataMsg> = (1..=200).map(data_msg).collect();
    let h = header();
    // How many 128-byte messages one datagram holds.
    let mut w = DataFrameWriter::new(&h, origin(), MAX_DATAGRAM);
    let per_datagram = msgs.iter().take_while(|m| w.push(m)).count();
    let mut g = c.benchmark_group("group");
    g.throughput(Throughput::Elements(per_datagram as u64));
    g.bench_function("data_frame_write", |b| {
        b.iter(|| {
            let mut w = DataFrameWriter::new(&h, origin(), MAX_DATAGRAM);
            for m in &msgs[..per_datagram] {
                w.push(black_box(m));
            }
            black_box(w.finish())
        })
    });
    let mut w = DataFrameWriter::new(&h, origin(), MAX_DATAGRAM);
    for m in &msgs[..per_datagram] {
        w.push(m);
    }
    let datagram = w.finish();
    g.bench_function("data_frame_decode", |b| {
        b.iter(|| black_box(Frame::decode(black_box(&datagram)).unwrap()))
    });
    g.finish();
    println!(
        "group data frame: {per_datagram} messages of {PAYLOAD} B per {MAX_DATAGRAM} B datagram"
    );
}

criterion_group!(benches, client_codec, group_frames);
criterion_main!(benches);
