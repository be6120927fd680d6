//! The client library against a real `ordo-broker` process: metadata of a
//! delivery, wildcards, confirmed publishes, unsubscribe, topic table and view.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures_util::StreamExt;
use ordo_broker::testkit::BrokerProcess;
use ordo_client::{
    Client, ClientOptions, Error, ErrorCode, Event, Message, Ordering, Subscription,
};

async fn connect(b: &BrokerProcess) -> Client {
    Client::connect(&b.addr().to_string(), ClientOptions::default())
        .await
        .unwrap()
}

async fn next_message(sub: &mut Subscription) -> Message {
    match tokio::time::timeout(Duration::from_secs(30), sub.next()).await {
        Ok(Some(Ok(Event::Message(m)))) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test]
async fn deliveries_carry_their_metadata_through_wildcards() {
    let b = BrokerProcess::start(&[]);
    let subscriber = connect(&b).await;
    let publisher = connect(&b).await;
    let mut one = subscriber.subscribe("orders.*").await.unwrap();
    let mut rest = subscriber.subscribe("orders.>").await.unwrap();

    publisher.publish_confirmed("orders.eu", "a").await.unwrap();
    publisher.publish("orders.eu.fr", "b").await.unwrap();
    publisher.flush().await.unwrap();

    let m = next_message(&mut one).await;
    let info = publisher.server_info();
    assert_eq!((m.topic.as_str(), &m.payload[..]), ("orders.eu", &b"a"[..]));
    assert_eq!(m.publisher, info.client_id);
    assert_eq!(m.origin.node, info.node);
    assert_eq!(m.origin.incarnation, info.incarnation);
    assert_eq!(m.ordering, Ordering::Fifo, "undeclared topics are fifo");
    assert_eq!(m.gseq, None);

    let a = next_message(&mut rest).await;
    let c = next_message(&mut rest).await;
    assert_eq!(&a.payload[..], b"a");
    assert_eq!(&c.payload[..], b"b");
    assert!(c.seq > a.seq, "one origin's sequence grows");
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let b = BrokerProcess::start(&[]);
    let client = connect(&b).await;
    let mut kept = client.subscribe("t").await.unwrap();
    let gone = client.subscribe("t").await.unwrap();
    client.unsubscribe(gone).await.unwrap();
    client.publish("t", "1").await.unwrap();
    client.flush().await.unwrap();
    assert_eq!(&next_message(&mut kept).await.payload[..], b"1");
    assert_eq!(
        client.stats().delivered,
        1,
        "the ended subscription got nothing"
    );
}

#[tokio::test]
async fn topics_views_and_conflicts() {
    let b = BrokerProcess::start(&[]);
    let client = connect(&b).await;
    client.declare("c", Ordering::Causal, true).await.unwrap();
    client.declare("c", Ordering::Causal, true).await.unwrap();
    let err = client
        .declare("c", Ordering::TotalIsis, false)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Refused { code: ErrorCode::Conflict, message }
            if message.contains("causal") && message.contains("total-isis")),
        "{err:?}"
    );
    let topics = client.list_topics().await.unwrap();
    assert!(topics
        .iter()
        .any(|t| t.name == "c" && t.ordering == Ordering::Causal && t.safe));
    let view = client.cluster().await.unwrap();
    assert!(view.members.contains(&view.this));
    assert_eq!(view.this.node, client.server_info().node);
    client.close().await.unwrap();
}

#[tokio::test]
async fn oversized_payload_is_refused_before_sending() {
    let b = BrokerProcess::start(&["--max-payload", "1KiB"]);
    let client = connect(&b).await;
    let err = client.publish("t", vec![0u8; 2048]).await.unwrap_err();
    assert!(matches!(
        err,
        Error::Refused {
            code: ErrorCode::PayloadTooLarge,
            ..
        }
    ));
    // The connection is still good.
    client
        .publish_confirmed("t", vec![0u8; 1024])
        .await
        .unwrap();
}

#[tokio::test]
async fn received_causal_context_is_carried_forward() {
    let b = BrokerProcess::start(&[]);
    let reader = connect(&b).await;
    let writer = connect(&b).await;
    writer
        .declare("chat", Ordering::Causal, false)
        .await
        .unwrap();
    let mut sub = reader.subscribe("chat").await.unwrap();
    writer.publish("chat", "m1").await.unwrap();
    let m1 = next_message(&mut sub).await;
    assert!(!m1.context.is_empty(), "causal deliveries carry a context");
    assert!(m1.context.get(m1.origin) >= m1.seq);
    // What the reader's next publish will carry covers m1.
    let carried = reader.causal_context();
    for &(origin, seq) in m1.context.entries() {
        assert!(carried.get(origin) >= seq);
    }
    assert!(
        writer.causal_context().is_empty(),
        "the writer received nothing"
    );
}

#[tokio::test]
async fn a_slow_consumer_learns_why_it_was_disconnected() {
    let b = BrokerProcess::start(&["--client-queue-bytes", "256KiB"]);
    let options = ClientOptions {
        subscription_capacity: 4,
        ..ClientOptions::default()
    };
    let slow = Client::connect(&b.addr().to_string(), options)
        .await
        .unwrap();
    let mut sub = slow.subscribe("flood").await.unwrap();
    let publisher = connect(&b).await;
    // Far more than the broker queues for one client plus what sockets hold.
    for _ in 0..1000 {
        publisher
            .publish("flood", vec![7u8; 64 * 1024])
            .await
            .unwrap();
    }
    publisher.flush().await.unwrap();
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(30), sub.next()).await {
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => break e,
            other => panic!("expected the stream to fail, got {other:?}"),
        }
    };
    assert!(
        matches!(
            &end,
            Error::Disconnected {
                code: Some(ErrorCode::SlowConsumer),
                reason,
            } if reason.contains("slow consumer")
        ),
        "{end:?}"
    );
    assert!(sub.next().await.is_none());
}
