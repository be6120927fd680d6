//! End-to-end tests of one real `ordo-broker` process and raw protocol
//! clients: pub/sub through wildcards, fan-out order, declaration
//! conflicts, the slow-consumer policy, bad input isolation, limits,
//! graceful shutdown and configuration through the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use common::{assert_error, broker, metric, start, Client};
use ordo_wire::client::{ErrorCode, Reply, Request, PROTOCOL_VERSION};
use ordo_wire::{CausalContext, NodeId, Ordering, Seq};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn wildcards_route_by_token() {
    let b = start(&[]);
    let mut star = Client::connect(b.addr()).await;
    let mut rest = Client::connect(b.addr()).await;
    let mut publisher = Client::connect(b.addr()).await;
    star.subscribe(1, "orders.*").await;
    rest.subscribe(7, "orders.>").await;

    for topic in ["orders.eu", "orders.eu.paris", "trades.eu", "orders"] {
        let r = publisher.publish_confirmed(topic, topic.to_string()).await;
        assert!(matches!(r, Reply::Ok { .. }), "{r:?}");
    }
    // A marker both patterns match ends each subscriber's expected stream.
    publisher.publish("orders.end", "end").await;

    let m = star.message().await;
    assert_eq!((m.sid, m.topic.as_str()), (1, "orders.eu"));
    assert_eq!(m.payload, Bytes::from("orders.eu"));
    assert_eq!(m.publisher, publisher.client_id);
    assert_eq!(m.origin.node, star.node);
    assert_eq!(m.ordering, Ordering::Fifo, "undeclared topics are fifo");
    assert_eq!(star.message().await.topic, "orders.end");

    let m1 = rest.message().await;
    let m2 = rest.message().await;
    assert_eq!((m1.sid, m1.topic.as_str()), (7, "orders.eu"));
    assert_eq!((m2.sid, m2.topic.as_str()), (7, "orders.eu.paris"));
    assert!(m2.seq > m1.seq, "the origin's sequence grows");
    assert_eq!(rest.message().await.topic, "orders.end");
}

#[tokio::test]
async fn two_subscribers_receive_everything_in_order() {
    let b = start(&[]);
    let mut s1 = Client::connect(b.addr()).await;
    let mut s2 = Client::connect(b.addr()).await;
    s1.subscribe(1, "ticks").await;
    s2.subscribe(2, "ticks").await;
    // A second matching subscription on one connection gets its own copy.
    s2.subscribe(3, "ticks.>").await;
    let mut p = Client::connect(b.addr()).await;
    const N: u64 = 2000;
    for i in 0..N {
        p.publish("ticks", i.to_string()).await;
    }
    for s in [&mut s1, &mut s2] {
        let mut last_seq = Seq(0);
        for i in 0..N {
            let m = s.message().await;
            assert_eq!(
                m.payload,
                Bytes::from(i.to_string()),
                "message {i} out of order"
            );
            assert!(m.seq > last_seq);
            last_seq = m.seq;
        }
    }
    // `ticks.>` needs at least one more token, so sid 3 saw nothing of `ticks`.
    p.publish("ticks.x", "x").await;
    let m = s2.message().await;
    assert_eq!((m.sid, m.topic.as_str()), (3, "ticks.x"));
}

#[tokio::test]
async fn declaration_conflicts_name_both_orderings() {
    let b = start(&[]);
    let mut c = Client::connect(b.addr()).await;
    assert!(matches!(
        c.declare("orders", Ordering::Fifo, false).await,
        Reply::Ok { .. }
    ));
    assert!(matches!(
        c.declare("orders", Ordering::Fifo, false).await,
        Reply::Ok { .. }
    ));
    let r = c.declare("orders", Ordering::TotalIsis, true).await;
    assert_error(
        &r,
        ErrorCode::Conflict,
        &["\"orders\"", "fifo", "total-isis --safe"],
    );

    // A topic used before declaration is created fifo.
    c.publish("audit", "x").await;
    let r = c.declare("audit", Ordering::Causal, false).await;
    assert_error(&r, ErrorCode::Conflict, &["fifo", "causal"]);

    let r = c.declare("bad.*", Ordering::Fifo, false).await;
    assert_error(&r, ErrorCode::InvalidName, &["wildcards"]);
    let r = c
        .request(|req| Request::Subscribe {
            req,
            sid: 1,
            pattern: "a.>.b".into(),
        })
        .await;
    assert_error(&r, ErrorCode::InvalidName, &["last token"]);

    let r = c.request(|req| Request::ListTopics { req }).await;
    let Reply::Topics { topics, .. } = r else {
        panic!("{r:?}")
    };
    let names: Vec<_> = topics
        .iter()
        .map(|t| (t.name.as_str(), t.ordering))
        .collect();
    assert_eq!(
        names,
        vec![("audit", Ordering::Fifo), ("orders", Ordering::Fifo)]
    );

    // The connection survived every refusal.
    let r = c.request(|req| Request::Cluster { req }).await;
    let Reply::Cluster { view, .. } = r else {
        panic!("{r:?}")
    };
    assert_eq!(view.members.len(), 1);
    assert_eq!(view.this.node, c.node);
}

#[tokio::test]
async fn slow_consumer_is_disconnected_while_fast_one_gets_everything() {
    let b = start(&["--client-queue-bytes", "256KiB"]);
    // The slow client keeps a small receive buffer, so the kernel does not
    // absorb the whole stream on its behalf.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(64 * 1024).unwrap();
    let mut slow = Client::from_stream(sock.connect(b.addr()).await.unwrap());
    slow.send(&Request::Hello {
        version: PROTOCOL_VERSION,
        token: None,
        name: "slow".into(),
    })
    .await;
    assert!(matches!(slow.recv().await, Some(Reply::Welcome { .. })));
    slow.subscribe(1, "load").await;

    let mut fast = Client::connect(b.addr()).await;
    fast.subscribe(1, "load").await;
    let mut p = Client::connect(b.addr()).await;

    // 40 MB in lockstep batches the fast subscriber drains as they come.
    const N: usize = 10_000;
    const BATCH: usize = 32;
    let body = vec![b'x'; 4096];
    let mut next = 0;
    while next < N {
        for i in next..next + BATCH {
            let mut payload = BytesMut::with_capacity(4104);
            payload.put_u64(i as u64);
            payload.put_slice(&body);
            p.publish("load", payload.freeze()).await;
        }
        for i in next..next + BATCH {
            let m = fast.message().await;
            assert_eq!(
                &m.payload[..8],
                &(i as u64).to_be_bytes(),
                "fast subscriber lost order at {i}"
            );
        }
        next += BATCH;
    }

    // Now the slow one reads: a gap-free prefix, then the reason, then EOF.
    let frames = slow.drain_to_eof().await;
    let (last, messages) = frames.split_last().expect("slow consumer got nothing");
    assert_error(last, ErrorCode::SlowConsumer, &["--client-queue-bytes"]);
    assert!(messages.len() < N, "the slow consumer was never cut off");
    for (i, f) in messages.iter().enumerate() {
        let Reply::Message(m) = f else {
            panic!("unexpected frame {f:?}")
        };
        assert_eq!(
            &m.payload[..8],
            &(i as u64).to_be_bytes(),
            "slow consumer's prefix has a gap at {i}"
        );
    }

    // The broker still serves the others, and counted the disconnect.
    p.publish("load", Bytes::from_static(b"after")).await;
    assert_eq!(fast.message().await.payload, Bytes::from_static(b"after"));
    assert_eq!(metric(&b, "ordo_slow_consumer_disconnects_total"), 1.0);
    assert_eq!(
        metric(&b, "ordo_subscriptions"),
        1.0,
        "the slow one's subscription is gone"
    );
}

#[tokio::test]
async fn bad_clients_are_dropped_alone() {
    let b = start(&["--max-frame", "64KiB", "--max-payload", "16KiB"]);
    let mut sub = Client::connect(b.addr()).await;
    sub.subscribe(1, "steady").await;
    let mut publisher = Client::connect(b.addr()).await;
    const N: u64 = 3000;
    // A steady stream runs the whole time the bad clients misbehave.
    let steady = tokio::spawn(async move {
        for i in 0..N {
            publisher.publish("steady", i.to_string()).await;
            if i % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        publisher
    });

    // 1. Garbage instead of a Hello: a well-sized frame of an unknown kind.
    let mut g = Client::raw(b.addr()).await;
    g.send_bytes(&[0, 0, 0, 5, 0x77, 1, 2, 3, 4]).await;
    let frames = g.drain_to_eof().await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_error(&frames[0], ErrorCode::Protocol, &["undecodable frame"]);

    // 2. Garbage after the handshake: a Declare with its body cut short.
    let mut g2 = Client::connect(b.addr()).await;
    g2.send_bytes(&[0, 0, 0, 3, 0x02, 0, 0]).await;
    let frames = g2.drain_to_eof().await;
    assert_error(&frames[0], ErrorCode::Protocol, &["truncated"]);

    // 3. A frame cut off by the client closing its side.
    let mut t = Client::connect(b.addr()).await;
    let mut frame = BytesMut::new();
    Request::Publish {
        confirm: None,
        topic: "steady".into(),
        context: CausalContext::new(),
        payload: Bytes::from_static(b"never finished"),
    }
    .encode(&mut frame);
    t.send_bytes(&frame[..10]).await;
    t.stream.shutdown().await.unwrap();
    let frames = t.drain_to_eof().await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_error(&frames[0], ErrorCode::Protocol, &["middle of a frame"]);

    // 4. A frame announced above --max-frame: refused from its length prefix.
    let mut o = Client::connect(b.addr()).await;
    assert_eq!(o.limits.max_frame, 64 * 1024);
    o.send_bytes(&(64 * 1024 + 1u32).to_be_bytes()).await;
    let frames = o.drain_to_eof().await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_error(
        &frames[0],
        ErrorCode::FrameTooLarge,
        &["65537", "--max-frame"],
    );

    // 5. A first frame that is not Hello.
    let mut h = Client::raw(b.addr()).await;
    h.send(&Request::Ping { nonce: 1 }).await;
    let frames = h.drain_to_eof().await;
    assert_error(
        &frames[0],
        ErrorCode::Protocol,
        &["first frame must be Hello"],
    );

    // The steady subscriber saw every message, in order, and nothing else.
    let mut publisher = steady.await.unwrap();
    for i in 0..N {
        let m = sub.message().await;
        assert_eq!(m.payload, Bytes::from(i.to_string()));
    }
    let r = publisher.publish_confirmed("steady", "last").await;
    assert!(matches!(r, Reply::Ok { .. }));
    assert_eq!(sub.message().await.payload, Bytes::from("last"));

    // Each drop was counted under its reason.
    for (reason, n) in [
        ("undecodable_frame", 2.0),
        ("truncated_frame", 1.0),
        ("frame_too_large", 1.0),
        ("not_hello", 1.0),
    ] {
        let series = format!("ordo_protocol_errors_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&b, &series), n, "{series}");
    }
    assert_eq!(
        metric(&b, "ordo_messages_published_total{ordering=\"fifo\"}"),
        (N + 1) as f64
    );
}

#[tokio::test]
async fn payload_above_limit_is_refused_and_connection_survives() {
    let b = start(&["--max-payload", "1KiB"]);
    let mut c = Client::connect(b.addr()).await;
    assert_eq!(c.limits.max_payload, 1024);
    c.subscribe(1, "big").await;
    let r = c.publish_confirmed("big", vec![0u8; 1025]).await;
    assert_error(&r, ErrorCode::PayloadTooLarge, &["1025", "--max-payload"]);
    let r = c.publish_confirmed("big", vec![1u8; 1024]).await;
    assert!(matches!(r, Reply::Ok { .. }), "{r:?}");
    let m = c.message().await;
    assert_eq!(
        m.payload.len(),
        1024,
        "only the message within the limit arrives"
    );
}

#[tokio::test]
async fn auth_token_is_checked_in_the_handshake() {
    let b = broker().env("ORDO_AUTH_TOKEN", "s3cret").start();
    let r = Client::connect_with_token(b.addr(), None)
        .await
        .err()
        .unwrap();
    assert_error(&r, ErrorCode::NotAuthorized, &["requires a token"]);
    let r = Client::connect_with_token(b.addr(), Some("s3creT"))
        .await
        .err()
        .unwrap();
    assert_error(&r, ErrorCode::NotAuthorized, &["not valid"]);
    let c = Client::connect_with_token(b.addr(), Some("s3cret")).await;
    assert!(c.is_ok());
}

#[tokio::test]
async fn sigterm_exits_zero_promptly_and_tells_clients() {
    let mut b = start(&[]);
    let mut c = Client::connect(b.addr()).await;
    c.subscribe(1, "x").await;
    let (code, body) = b.http_get("/healthz").unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(&format!("{}", c.node.0)), "{body}");
    let t0 = Instant::now();
    b.terminate();
    let status = b
        .wait_exit(Duration::from_secs(10))
        .expect("broker did not exit after SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        t0.elapsed()
    );
    let frames = c.drain_to_eof().await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_error(&frames[0], ErrorCode::ShuttingDown, &["shutting down"]);
}

#[test]
fn an_unreadable_cluster_key_file_is_a_configuration_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ordo-broker"))
        .args([
            "--cluster-key-file",
            "/nonexistent/key",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read the cluster key file /nonexistent/key"),
        "{stderr}"
    );
}

#[test]
fn bad_configuration_is_refused_with_a_hint() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ordo-broker"))
        .env("ORDO_TTL", "300")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--ttl") && stderr.contains("0..=255"),
        "{stderr}"
    );
}

#[tokio::test]
async fn configuration_precedence_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ordo.toml");
    std::fs::write(
        &path,
        r#"
node-id = 11
max-payload = "64KiB"
[[topics]]
name = "orders"
ordering = "causal"
"#,
    )
    .unwrap();
    let path = path.to_str().unwrap().to_string();

    // File over default.
    let b = broker().arg("--config").arg(&path).start();
    let mut c = Client::connect(b.addr()).await;
    assert_eq!(c.node, NodeId(11));
    assert_eq!(c.limits.max_payload, 64 * 1024);
    let r = c.declare("orders", Ordering::Fifo, false).await;
    assert_error(&r, ErrorCode::Conflict, &["causal", "fifo"]);
    drop(b);

    // Env over file (the file itself named through the environment).
    let b = broker()
        .env("ORDO_CONFIG", &path)
        .env("ORDO_NODE_ID", "22")
        .start();
    let c = Client::connect(b.addr()).await;
    assert_eq!(c.node, NodeId(22));
    assert_eq!(c.limits.max_payload, 64 * 1024);
    drop(b);

    // Flag over env.
    let b = broker()
        .env("ORDO_CONFIG", &path)
        .env("ORDO_NODE_ID", "22")
        .args(["--node-id", "33", "--max-payload", "2KiB"])
        .start();
    let c = Client::connect(b.addr()).await;
    assert_eq!(c.node, NodeId(33));
    assert_eq!(c.limits.max_payload, 2048);
}

#[tokio::test]
async fn connection_limit_refuses_with_a_reason() {
    let b = start(&["--max-connections", "1"]);
    // The start-up probe may still hold the only slot for a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let _first = loop {
        match Client::connect_with_token(b.addr(), None).await {
            Ok(c) => break c,
            Err(r) => {
                assert_error(&r, ErrorCode::Limit, &["--max-connections"]);
                assert!(Instant::now() < deadline, "the slot never freed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let mut second = Client::raw(b.addr()).await;
    let frames = second.drain_to_eof().await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_error(&frames[0], ErrorCode::Limit, &["--max-connections"]);
    assert!(metric(&b, "ordo_client_connections_refused_total") >= 1.0);
}

#[tokio::test]
async fn flow_control_slows_publishers_without_losing_anything() {
    // A small retransmit buffer closes the engine's send window often.
    let b = start(&["--retransmit-buffer-bytes", "64KiB"]);
    let mut sub = Client::connect(b.addr()).await;
    sub.subscribe(1, "flow").await;
    let mut p = Client::connect(b.addr()).await;
    const N: usize = 600;
    let body = vec![b'f'; 1024];
    let publisher = tokio::spawn(async move {
        for i in 0..N {
            let mut payload = (i as u32).to_be_bytes().to_vec();
            payload.extend_from_slice(&body);
            p.publish("flow", payload).await;
        }
        let r = p.publish_confirmed("flow", "end").await;
        assert!(matches!(r, Reply::Ok { .. }), "{r:?}");
    });
    for i in 0..N {
        let m = sub.message().await;
        assert_eq!(&m.payload[..4], &(i as u32).to_be_bytes(), "message {i}");
    }
    assert_eq!(sub.message().await.payload, Bytes::from("end"));
    publisher.await.unwrap();
}

#[tokio::test]
async fn ping_is_answered_and_unsubscribe_stops_delivery() {
    let b = start(&[]);
    let mut c = Client::connect(b.addr()).await;
    c.send(&Request::Ping { nonce: 42 }).await;
    assert_eq!(c.recv().await, Some(Reply::Pong { nonce: 42 }));
    c.subscribe(5, "u.*").await;
    c.publish("u.a", "one").await;
    assert_eq!(c.message().await.payload, Bytes::from("one"));
    let r = c.request(|req| Request::Unsubscribe { req, sid: 5 }).await;
    assert!(matches!(r, Reply::Ok { .. }), "{r:?}");
    let r = c.request(|req| Request::Unsubscribe { req, sid: 5 }).await;
    assert_error(&r, ErrorCode::InvalidName, &["no subscription"]);
    c.publish("u.a", "two").await;
    c.subscribe(6, "u.b").await;
    c.publish("u.b", "three").await;
    // "two" went to nobody: the next message is "three" on the new sid.
    let m = c.message().await;
    assert_eq!((m.sid, m.payload), (6, Bytes::from("three")));
}

#[tokio::test]
async fn subscription_limit_and_duplicate_ids_are_refused() {
    let b = start(&["--max-subscriptions", "2"]);
    let mut c = Client::connect(b.addr()).await;
    c.subscribe(1, "a").await;
    let r = c
        .request(|req| Request::Subscribe {
            req,
            sid: 1,
            pattern: "b".into(),
        })
        .await;
    assert_error(&r, ErrorCode::Protocol, &["already in use"]);
    c.subscribe(2, "b").await;
    let r = c
        .request(|req| Request::Subscribe {
            req,
            sid: 3,
            pattern: "c".into(),
        })
        .await;
    assert_error(&r, ErrorCode::Limit, &["--max-subscriptions"]);
    // The limit is per connection.
    let mut other = Client::connect(b.addr()).await;
    other.subscribe(3, "c").await;
    other.publish("c", "ok").await;
    assert_eq!(other.message().await.payload, Bytes::from("ok"));
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_the_handshake_timeout() {
    let b = start(&["--handshake-timeout", "1"]);
    let mut silent = Client::raw(b.addr()).await;
    let t0 = Instant::now();
    let frames = silent.drain_to_eof().await;
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "dropped too early"
    );
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_error(&frames[0], ErrorCode::Protocol, &["no Hello within 1 s"]);
    assert_eq!(
        metric(
            &b,
            "ordo_protocol_errors_total{reason=\"handshake_timeout\"}"
        ),
        1.0
    );
}

#[test]
fn a_taken_listen_address_fails_start_up_clearly() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = broker()
        .args(["--listen", addr.as_str()])
        .try_start()
        .expect_err("the broker must not start on a taken address");
    assert!(err.contains("cannot listen for clients"), "{err}");
    assert!(err.contains("Address already in use"), "{err}");
}

/// A publish that fits `--max-frame` must not produce a delivery that does
/// not: the delivery adds metadata (and one causal entry), and a subscriber
/// holding the broker to its announced limit would drop the connection. The
/// broker refuses such a publish instead, naming the limit.
#[tokio::test]
async fn a_publish_whose_delivery_would_exceed_max_frame_is_refused() {
    let b = start(&["--max-frame", "64KiB", "--max-payload", "63KiB"]);
    let mut sub = Client::connect(b.addr()).await;
    let max_frame = sub.limits.max_frame as usize;
    let r = sub.declare("c", Ordering::Causal, false).await;
    assert!(matches!(r, Reply::Ok { .. }), "{r:?}");
    sub.subscribe(1, "c").await;
    let mut p = Client::connect(b.addr()).await;
    let payload = Bytes::from(vec![7u8; 63 * 1024]);
    // As many (forged) causal entries as still fit the publish frame.
    let frame = |n: u32| {
        let context = CausalContext::from_entries((0..n).map(|i| {
            (
                ordo_wire::Origin {
                    node: NodeId(10_000 + i),
                    incarnation: ordo_wire::Incarnation(1),
                },
                Seq(0),
            )
        }));
        let mut f = BytesMut::new();
        Request::Publish {
            confirm: Some(1),
            topic: "c".into(),
            context,
            payload: payload.clone(),
        }
        .encode(&mut f);
        f
    };
    let mut n = 0;
    while frame(n + 1).len() <= 4 + max_frame {
        n += 1;
    }
    let f = frame(n);
    assert!(f.len() <= 4 + max_frame);
    p.send_bytes(&f).await;
    let r = p.recv().await.expect("an answer");
    match r {
        Reply::Ok { .. } => {
            // Accepted: then the delivery must fit the announced limit.
            let m = sub.message().await;
            let mut out = BytesMut::new();
            Reply::Message(Box::new(m)).encode(&mut out);
            assert!(
                out.len() <= 4 + max_frame,
                "delivery frame of {} bytes exceeds --max-frame {max_frame}",
                out.len() - 4
            );
        }
        other => assert_error(&other, ErrorCode::PayloadTooLarge, &["--max-frame"]),
    }
    // The connection survives a refusal.
    let r = p.publish_confirmed("c", "small").await;
    assert!(matches!(r, Reply::Ok { .. }), "{r:?}");
}

/// The protocol's edge cases each get a clear answer, and a client that
/// gets one never disturbs a steady subscriber beside it.
#[tokio::test]
async fn protocol_edge_cases_get_clear_answers() {
    let b = start(&["--max-frame", "128KiB", "--max-payload", "127KiB"]);
    let mut steady = Client::connect(b.addr()).await;
    steady.subscribe(1, "steady").await;

    // A Hello with the longest name the protocol carries is fine.
    let mut big = Client::raw(b.addr()).await;
    big.send(&Request::Hello {
        version: PROTOCOL_VERSION,
        token: Some("t".repeat(1000)),
        name: "n".repeat(usize::from(u16::MAX)),
    })
    .await;
    assert!(matches!(big.recv().await, Some(Reply::Welcome { .. })));

    // Hello twice is a protocol error that closes the connection.
    let mut twice = Client::connect(b.addr()).await;
    twice
        .send(&Request::Hello {
            version: PROTOCOL_VERSION,
            token: None,
            name: "again".into(),
        })
        .await;
    let frames = twice.drain_to_eof().await;
    assert_error(&frames[0], ErrorCode::Protocol, &["already sent"]);

    // Invalid patterns are refused, naming why; the connection stays.
    let mut c = Client::connect(b.addr()).await;
    let long = "a".repeat(300);
    for (sid, pattern, why) in [
        (10, "a..b", "empty token"),
        (11, ">.a", "last token"),
        (12, "", "empty"),
        (13, long.as_str(), "longer than 255"),
        (14, "a*.b", "whole token"),
        (15, "a. b", "whitespace"),
    ] {
        let r = c
            .request(|req| Request::Subscribe {
                req,
                sid,
                pattern: pattern.into(),
            })
            .await;
        assert_error(&r, ErrorCode::InvalidName, &[why]);
    }
    // Many tokens within the length limit are fine.
    let many = vec!["*"; 128].join(".");
    assert_eq!(many.len(), 255);
    c.subscribe(16, &many).await;

    // Publishing to a wildcard (or otherwise invalid) topic is refused.
    for topic in ["a.*", "a.>", "", "a..b"] {
        let r = c.publish_confirmed(topic, "x").await;
        assert_error(&r, ErrorCode::InvalidName, &[]);
    }
    // Unsubscribing an unknown sid is a request-level error.
    let r = c
        .request(|req| Request::Unsubscribe { req, sid: 999 })
        .await;
    assert_error(&r, ErrorCode::InvalidName, &["no subscription"]);
    // A frame of exactly --max-frame is read (and its payload refused).
    let max_frame = c.limits.max_frame as usize;
    let mut f = BytesMut::new();
    f.put_u32(max_frame as u32);
    f.put_u8(0x05); // Publish
    f.put_u8(1);
    f.put_u64(77);
    f.put_u16(1);
    f.put_slice(b"p");
    f.put_u32(0);
    let payload = max_frame - (f.len() - 4) - 4;
    f.put_u32(payload as u32);
    f.put_bytes(0, payload);
    assert_eq!(f.len(), 4 + max_frame);
    let probe = Request::decode(&mut f.clone(), max_frame).unwrap();
    assert!(matches!(probe, Some(Request::Publish { .. })), "{probe:?}");
    c.send_bytes(&f).await;
    let r = c.recv().await.unwrap();
    assert_error(&r, ErrorCode::PayloadTooLarge, &["--max-payload"]);
    let r = c.publish_confirmed("p", "still here").await;
    assert!(matches!(r, Reply::Ok { .. }), "{r:?}");

    // A zero-length frame and a reply-kind frame are undecodable.
    for bytes in [
        &[0u8, 0, 0, 0][..],
        &[0, 0, 0, 9, 0x81, 0, 0, 0, 0, 0, 0, 0, 1],
    ] {
        let mut g = Client::connect(b.addr()).await;
        g.send_bytes(bytes).await;
        let frames = g.drain_to_eof().await;
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_error(&frames[0], ErrorCode::Protocol, &["undecodable frame"]);
    }

    // A partial frame that never completes holds only what arrived and
    // does not disturb anyone else.
    let mut slow = Client::connect(b.addr()).await;
    slow.send_bytes(&[0, 0, 0xff, 0xff, 0x05, 1]).await;

    let mut p = Client::connect(b.addr()).await;
    let r = p.publish_confirmed("steady", "after").await;
    assert!(matches!(r, Reply::Ok { .. }), "{r:?}");
    assert_eq!(steady.message().await.payload, Bytes::from("after"));
    drop(slow);
}

/// Slowloris after the handshake: a client that sends part of a frame and
/// then goes silent would pin that buffer for ever; it is dropped once it
/// stays silent mid-frame for the handshake timeout, while a client that is
/// merely idle between whole frames stays connected.
#[tokio::test]
async fn a_client_stalled_in_the_middle_of_a_frame_is_dropped() {
    let b = start(&["--handshake-timeout", "1"]);
    let mut idle = Client::connect(b.addr()).await;
    let mut stalled = Client::connect(b.addr()).await;
    // Announces a 60000-byte frame and sends only its first 1000 bytes.
    let mut partial = BytesMut::new();
    partial.put_u32(60_000);
    partial.put_u8(0x05);
    partial.put_bytes(0, 999);
    stalled.send_bytes(&partial).await;
    let t0 = Instant::now();
    let frames = stalled.drain_to_eof().await;
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "dropped too early"
    );
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_error(
        &frames[0],
        ErrorCode::Protocol,
        &["middle of a frame", "1004 bytes"],
    );
    assert_eq!(
        metric(&b, "ordo_protocol_errors_total{reason=\"stalled_frame\"}"),
        1.0
    );
    // Idle between whole frames for longer than the timeout: still served.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    idle.send(&Request::Ping { nonce: 7 }).await;
    assert_eq!(idle.recv().await, Some(Reply::Pong { nonce: 7 }));
}

/// SIGTERM with a subscriber that never reads and a healthy one that has
/// not read yet: the broker still exits within --shutdown-timeout, and the
/// healthy one gets every accepted message before the shutdown notice.
#[tokio::test]
async fn sigterm_flushes_healthy_subscribers_despite_a_stuck_one() {
    let mut b = start(&["--shutdown-timeout", "3"]);
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(16 * 1024).unwrap();
    let mut stuck = Client::from_stream(sock.connect(b.addr()).await.unwrap());
    stuck
        .send(&Request::Hello {
            version: PROTOCOL_VERSION,
            token: None,
            name: "stuck".into(),
        })
        .await;
    assert!(matches!(stuck.recv().await, Some(Reply::Welcome { .. })));
    stuck.subscribe(1, "load").await;
    let mut healthy = Client::connect(b.addr()).await;
    healthy.subscribe(1, "load").await;
    let mut p = Client::connect(b.addr()).await;
    const N: u64 = 1000;
    for i in 0..N {
        let mut payload = BytesMut::with_capacity(4104);
        payload.put_u64(i);
        payload.put_bytes(b'x', 4096);
        p.publish("load", payload.freeze()).await;
    }
    let r = p.publish_confirmed("load", "last").await;
    assert!(matches!(r, Reply::Ok { .. }), "{r:?}");

    let t0 = Instant::now();
    b.terminate();
    let frames = healthy.drain_to_eof().await;
    let status = b
        .wait_exit(Duration::from_secs(15))
        .expect("broker did not exit after SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(
        t0.elapsed() < Duration::from_secs(3 + 2),
        "shutdown took {:?} with --shutdown-timeout 3",
        t0.elapsed()
    );
    let (last, messages) = frames.split_last().expect("nothing arrived");
    assert_error(last, ErrorCode::ShuttingDown, &["shutting down"]);
    assert_eq!(
        messages.len() as u64,
        N + 1,
        "healthy subscriber lost messages"
    );
    for (i, f) in messages.iter().take(N as usize).enumerate() {
        let Reply::Message(m) = f else {
            panic!("unexpected frame {f:?}")
        };
        assert_eq!(&m.payload[..8], &(i as u64).to_be_bytes());
    }
    drop(stuck);
}

/// A flood of connections far above --max-connections: every one over the
/// limit is told why and closed, the clients inside the limit keep being
/// served, and the slots come back once the flood leaves.
#[tokio::test]
async fn a_connection_flood_is_refused_without_disturbing_clients() {
    const MAX: usize = 20;
    const FLOOD: usize = 2000;
    const WAVE: usize = 250;
    let b = start(&["--max-connections", "20", "--handshake-timeout", "30"]);
    let mut sub = Client::connect(b.addr()).await;
    sub.subscribe(1, "steady").await;
    let mut p = Client::connect(b.addr()).await;
    let addr = b.addr();
    // In waves, all held open: one burst of thousands would only measure the
    // kernel's listen backlog (connections it has not handed to the broker yet).
    let mut refused = 0;
    let mut admitted = Vec::new();
    let mut refused_held = Vec::new();
    for _wave in 0..FLOOD / WAVE {
        let opened: Vec<_> = (0..WAVE)
            .map(|_| tokio::spawn(async move { Client::raw(addr).await }))
            .collect();
        let mut held = Vec::new();
        for o in opened {
            held.push(o.await.unwrap());
        }
        // Meanwhile the admitted clients are served.
        p.publish("steady", "during").await;
        assert_eq!(sub.message().await.payload, Bytes::from("during"));
        let checks: Vec<_> = held
            .into_iter()
            .map(|mut c| {
                tokio::spawn(async move {
                    let got = tokio::time::timeout(Duration::from_secs(5), c.recv()).await;
                    (c, got.ok())
                })
            })
            .collect();
        for check in checks {
            match check.await.unwrap() {
                (c, Some(Some(r))) => {
                    assert_error(&r, ErrorCode::Limit, &["--max-connections"]);
                    refused += 1;
                    refused_held.push(c);
                }
                (_, Some(None)) => panic!("closed without a reason"),
                (c, None) => admitted.push(c), // inside the limit, waiting for Hello
            }
        }
    }
    assert!(admitted.len() <= MAX - 2, "{} admitted", admitted.len());
    assert_eq!(refused + admitted.len(), FLOOD);
    assert!(metric(&b, "ordo_client_connections_refused_total") >= refused as f64);
    drop(admitted);
    // The slots come back.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Client::connect_with_token(b.addr(), None).await {
            Ok(_) => break,
            Err(r) => {
                assert_error(&r, ErrorCode::Limit, &["--max-connections"]);
                assert!(Instant::now() < deadline, "slots never came back");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    p.publish("steady", "after").await;
    assert_eq!(sub.message().await.payload, Bytes::from("after"));
}

/// A client that floods pings and never reads the pongs overflows its own
/// queue: it is a slow consumer like any other (told why, counted), not a
/// silent close.
#[tokio::test]
async fn a_ping_flood_that_never_reads_is_a_counted_slow_consumer() {
    let b = start(&["--client-queue-frames", "100"]);
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut c = Client::from_stream(sock.connect(b.addr()).await.unwrap());
    c.send(&Request::Hello {
        version: PROTOCOL_VERSION,
        token: None,
        name: "pinger".into(),
    })
    .await;
    assert!(matches!(c.recv().await, Some(Reply::Welcome { .. })));
    let mut pings = BytesMut::new();
    for nonce in 0..200_000 {
        Request::Ping { nonce }.encode(&mut pings);
    }
    // The broker may close before it read everything; that is the point.
    let _ = c.stream.write_all(&pings).await;
    let frames = c.drain_to_eof().await;
    let last = frames.last().expect("no frames");
    assert_error(last, ErrorCode::SlowConsumer, &["slow consumer"]);
    assert_eq!(metric(&b, "ordo_slow_consumer_disconnects_total"), 1.0);
}
