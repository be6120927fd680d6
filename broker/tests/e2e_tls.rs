//! End-to-end tests of TLS on the client listener, with real broker
//! processes and certificates made in the test (rcgen, in a tempdir):
//! pub/sub over TLS across a cluster, mutual TLS, a plaintext client
//! against a TLS listener (and the reverse), a wrong CA, and the
//! configuration errors that stop the broker with exit code 2.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{broker, metric};
use futures_util::StreamExt;
use ordo_broker::testkit::{BrokerProcess, ClusterSpec, TestTls};
use ordo_client::{Client, ClientOptions, Error, Event, Ordering, TlsOptions};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// PEM files of one test PKI: a CA, a broker certificate for `localhost`
/// and 127.0.0.1 signed by it, and a client certificate signed by it.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        let (ca, ca_key) = new_ca("Ordo test CA");
        write("ca.pem", ca.pem());
        let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose, prefix: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params
                .distinguished_name
                .push(DnType::CommonName, format!("ordo {prefix}"));
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
            write(&format!("{prefix}.pem"), cert.pem());
            write(&format!("{prefix}-key.pem"), key.serialize_pem());
        };
        leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            "broker",
        );
        leaf(
            vec!["client.test".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
            "client",
        );
        // Another CA, that signed nothing here.
        let (other, _) = new_ca("Some other CA");
        write("other-ca.pem", other.pem());
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// The broker flags for a TLS listener (with mutual TLS when `mtls`).
    fn broker_args(&self, mtls: bool) -> Vec<String> {
        let mut args = vec![
            "--tls-cert".into(),
            self.arg("broker.pem"),
            "--tls-key".into(),
            self.arg("broker-key.pem"),
        ];
        if mtls {
            args.extend(["--tls-client-ca".into(), self.arg("ca.pem")]);
        }
        args
    }

    /// How the testkit's probes reach a broker of this PKI.
    fn probe(&self, mtls: bool) -> TestTls {
        TestTls {
            ca: self.path("ca.pem"),
            client: mtls.then(|| (self.path("client.pem"), self.path("client-key.pem"))),
            server_name: None,
        }
    }

    /// Client options trusting this PKI's CA (with its client certificate when `mtls`).
    fn client(&self, mtls: bool) -> ClientOptions {
        ClientOptions {
            tls: Some(TlsOptions {
                ca_file: self.path("ca.pem"),
                client_cert: mtls.then(|| (self.path("client.pem"), self.path("client-key.pem"))),
                server_name: None,
            }),
            request_timeout: Duration::from_secs(10),
            ..ClientOptions::default()
        }
    }
}

fn new_ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).unwrap();
    (cert, key)
}

/// A TLS broker of a fresh cluster of its own.
fn tls_broker(pki: &Pki, mtls: bool, extra: &[&str]) -> BrokerProcess {
    broker()
        .args(pki.broker_args(mtls))
        .args(extra.iter().copied())
        .tls(pki.probe(mtls))
        .start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_sub_over_tls_across_a_three_broker_cluster() {
    let pki = Pki::new();
    let cluster = ClusterSpec::new();
    let brokers: Vec<BrokerProcess> = (1..=3)
        .map(|id| {
            broker()
                .cluster(&cluster)
                .args(["--node-id".to_string(), id.to_string()])
                .args(pki.broker_args(false))
                .tls(pki.probe(false))
                .start()
        })
        .collect();
    for b in &brokers {
        b.wait_for_members(3, Duration::from_secs(20)).unwrap();
    }
    // A subscriber on every broker, by IP address (the certificate names
    // 127.0.0.1 too) and, for one, by name.
    let mut subs = Vec::new();
    for (i, b) in brokers.iter().enumerate() {
        let addr = if i == 2 {
            format!("localhost:{}", b.addr().port())
        } else {
            b.addr().to_string()
        };
        let c = Client::connect(&addr, pki.client(false)).await.unwrap();
        let s = c.subscribe("tls.>").await.unwrap();
        subs.push((c, s));
    }
    let publisher = Client::connect(&brokers[0].addr().to_string(), pki.client(false))
        .await
        .unwrap();
    publisher
        .declare("tls.fifo", Ordering::Fifo, false)
        .await
        .unwrap();
    const N: u32 = 300;
    for i in 0..N {
        // A payload larger than one TLS record now and then.
        let payload = if i % 50 == 0 {
            vec![i as u8; 40_000]
        } else {
            i.to_be_bytes().to_vec()
        };
        publisher.publish("tls.fifo", payload).await.unwrap();
    }
    publisher.flush().await.unwrap();
    for (n, (_c, s)) in subs.iter_mut().enumerate() {
        for i in 0..N {
            let event = tokio::time::timeout(common::WAIT, s.next())
                .await
                .unwrap_or_else(|_| panic!("subscriber {n} got {i} of {N} messages"))
                .unwrap()
                .unwrap();
            let Event::Message(m) = event else {
                panic!("{event:?}")
            };
            if i % 50 == 0 {
                assert_eq!(m.payload.len(), 40_000);
                assert!(m.payload.iter().all(|b| *b == i as u8));
            } else {
                assert_eq!(
                    &m.payload[..],
                    &i.to_be_bytes(),
                    "subscriber {n}, message {i}"
                );
            }
        }
    }
    for b in &brokers {
        assert_eq!(metric(b, "ordo_tls_handshake_failures_total"), 0.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_client_without_a_certificate() {
    let pki = Pki::new();
    let b = tls_broker(&pki, true, &[]);
    let addr = b.addr().to_string();
    let err = Client::connect(&addr, pki.client(false))
        .await
        .expect_err("a client without a certificate was let in");
    let text = err.to_string();
    assert_eq!(err.exit_code(), 3, "{text}");
    assert!(text.contains("TLS handshake failed"), "{text}");
    // With the certificate it works, and the auth token still applies on top.
    let c = Client::connect(&addr, pki.client(true)).await.unwrap();
    c.cluster().await.unwrap();
    wait_metric_at_least(&b, "ordo_tls_handshake_failures_total", 1.0).await;

    let b = tls_broker(&pki, true, &["--auth-token", "s3cret"]);
    let err = Client::connect(&b.addr().to_string(), pki.client(true))
        .await
        .expect_err("no token");
    assert!(matches!(err, Error::Refused { .. }), "{err}");
    let with_token = ClientOptions {
        token: Some("s3cret".into()),
        ..pki.client(true)
    };
    Client::connect(&b.addr().to_string(), with_token)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_client_is_told_tls_may_be_the_cause_and_others_are_served() {
    let pki = Pki::new();
    let b = tls_broker(&pki, false, &["--handshake-timeout", "3"]);
    let addr = b.addr().to_string();
    let tls_client = Client::connect(&addr, pki.client(false)).await.unwrap();
    let mut sub = tls_client.subscribe("t").await.unwrap();

    let started = Instant::now();
    let err = Client::connect(&addr, ClientOptions::default())
        .await
        .expect_err("a plaintext client got in");
    let text = err.to_string();
    assert!(text.contains("TLS"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );

    // A client that connects and says nothing holds no one up, and is
    // dropped at the handshake timeout.
    let silent = tokio::net::TcpStream::connect(b.addr()).await.unwrap();
    tls_client
        .publish_confirmed("t", "still served")
        .await
        .unwrap();
    let event = tokio::time::timeout(common::WAIT, sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(event, Event::Message(m) if &m.payload[..] == b"still served"));
    wait_metric_at_least(&b, "ordo_tls_handshake_failures_total", 2.0).await;
    drop(silent);

    // The reverse: a TLS client against a plaintext broker.
    let plain = BrokerProcess::builder()
        .binary(env!("CARGO_BIN_EXE_ordo-broker"))
        .start();
    let started = Instant::now();
    let err = Client::connect(&plain.addr().to_string(), pki.client(false))
        .await
        .expect_err("TLS against a plaintext broker");
    let text = err.to_string();
    assert!(text.contains("may not speak TLS"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trusting_another_ca_fails_with_a_clear_error() {
    let pki = Pki::new();
    let b = tls_broker(&pki, false, &[]);
    let mut options = pki.client(false);
    if let Some(tls) = &mut options.tls {
        tls.ca_file = pki.path("other-ca.pem");
    }
    let err = Client::connect(&b.addr().to_string(), options)
        .await
        .expect_err("an untrusted broker certificate was accepted");
    let text = err.to_string();
    assert_eq!(err.exit_code(), 3, "{text}");
    assert!(text.contains("not trusted"), "{text}");
    // A name the certificate does not carry fails the same way.
    let mut options = pki.client(false);
    if let Some(tls) = &mut options.tls {
        tls.server_name = Some("elsewhere.test".into());
    }
    let err = Client::connect(&b.addr().to_string(), options)
        .await
        .expect_err("a certificate for another name was accepted");
    assert!(err.to_string().contains("not trusted"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_the_connection_limit_is_told_why_over_tls() {
    let pki = Pki::new();
    let b = tls_broker(&pki, false, &["--max-connections", "1"]);
    let addr = b.addr().to_string();
    // The testkit's readiness probe may still hold the one slot briefly.
    let deadline = Instant::now() + common::WAIT;
    let first = loop {
        match Client::connect(&addr, pki.client(false)).await {
            Ok(c) => break c,
            Err(e) => assert!(Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let err = Client::connect(&addr, pki.client(false))
        .await
        .expect_err("a second connection got in");
    assert!(err.to_string().contains("connection limit"), "{err}");
    first.cluster().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_over_tls_gets_a_clean_prefix_and_the_reason() {
    let pki = Pki::new();
    let b = tls_broker(&pki, false, &["--client-queue-bytes", "256KiB"]);
    let addr = b.addr().to_string();
    // The slow client buffers little and never reads its subscription, so
    // it stops reading the socket and the broker's queue for it fills.
    let slow = Client::connect(
        &addr,
        ClientOptions {
            subscription_capacity: 8,
            subscription_bytes: 64 * 1024,
            ..pki.client(false)
        },
    )
    .await
    .unwrap();
    let mut slow_sub = slow.subscribe("load").await.unwrap();
    let fast = Client::connect(&addr, pki.client(false)).await.unwrap();
    let mut fast_sub = fast.subscribe("load").await.unwrap();
    let publisher = Client::connect(&addr, pki.client(false)).await.unwrap();

    const N: u64 = 10_000;
    const BATCH: u64 = 32;
    let body = vec![b'x'; 4096];
    let mut next = 0;
    while next < N {
        for i in next..next + BATCH {
            let mut payload = i.to_be_bytes().to_vec();
            payload.extend_from_slice(&body);
            publisher.publish("load", payload).await.unwrap();
        }
        for i in next..next + BATCH {
            let event = tokio::time::timeout(common::WAIT, fast_sub.next())
                .await
                .expect("the fast subscriber stalled")
                .unwrap()
                .unwrap();
            let Event::Message(m) = event else {
                panic!("{event:?}")
            };
            assert_eq!(&m.payload[..8], &i.to_be_bytes(), "fast subscriber at {i}");
        }
        next += BATCH;
    }
    wait_metric_at_least(&b, "ordo_slow_consumer_disconnects_total", 1.0).await;

    // Now the slow one reads: a gap-free prefix, then the broker's reason
    // (so the TLS stream stayed well-formed up to the end).
    let mut got = 0u64;
    let reason = loop {
        match tokio::time::timeout(common::WAIT, slow_sub.next())
            .await
            .expect("the slow subscription neither delivered nor ended")
        {
            Some(Ok(Event::Message(m))) => {
                assert_eq!(&m.payload[..8], &got.to_be_bytes(), "gap at {got}");
                got += 1;
            }
            Some(Ok(other)) => panic!("{other:?}"),
            Some(Err(e)) => break e.to_string(),
            None => panic!("ended without a reason after {got} messages"),
        }
    };
    assert!(got < N, "the slow consumer was never cut off");
    assert!(reason.contains("slow consumer"), "{reason}");
    // The others are still served.
    publisher.publish_confirmed("load", "after").await.unwrap();
}

#[test]
fn the_cli_speaks_tls_for_every_command() {
    let pki = Pki::new();
    let b = tls_broker(&pki, true, &[]);
    let server = b.addr().to_string();
    let tls = [
        "--tls-ca",
        &pki.arg("ca.pem"),
        "--tls-cert",
        &pki.arg("client.pem"),
        "--tls-key",
        &pki.arg("client-key.pem"),
    ]
    .map(String::from);
    let ordo = |args: &[&str], with_tls: bool| -> (Option<i32>, String) {
        let cli = ordo_broker::testkit::ordo_cli_binary().unwrap_or_else(|e| panic!("{e}"));
        let mut cmd = std::process::Command::new(cli);
        for (k, _) in std::env::vars() {
            if k.starts_with("ORDO_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(["--server", &server]);
        if with_tls {
            cmd.args(&tls);
        }
        let out = cmd
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    for args in [
        &["cluster"][..],
        &["topic", "create", "cli.t", "--ordering", "fifo"],
        &["topic", "list"],
        &["pub", "cli.t", "hello", "--confirm"],
        &[
            "bench",
            "--pub",
            "1",
            "--sub",
            "1",
            "--msgs",
            "2000",
            "--topic",
            "cli.bench",
        ],
    ] {
        let (code, text) = ordo(args, true);
        assert_eq!(code, Some(0), "ordo {args:?} over TLS: {text}");
    }
    // ordo sub over TLS receives what ordo pub over TLS sends.
    let cli = ordo_broker::testkit::ordo_cli_binary().unwrap();
    let mut sub = std::process::Command::new(cli)
        .args(["--server", &server])
        .args(&tls)
        .args(["sub", "cli.s", "--count", "1", "--timeout", "20"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead;
        let mut stderr = std::io::BufReader::new(sub.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        assert!(line.contains("subscribed"), "{line}");
    }
    let (code, text) = ordo(&["pub", "cli.s", "over tls"], true);
    assert_eq!(code, Some(0), "{text}");
    let out = sub.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "over tls");

    // Without TLS: a connect error that names TLS as the likely cause.
    let (code, text) = ordo(&["cluster"], false);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("TLS"), "{text}");
    // An unreadable CA file is a usage error.
    let (code, text) = ordo(&["--tls-ca", "/nonexistent/ca.pem", "cluster"], false);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("cannot read --tls-ca"), "{text}");
}

#[test]
fn a_client_stuck_in_the_tls_handshake_does_not_hold_up_shutdown() {
    let pki = Pki::new();
    // A handshake timeout far beyond the shutdown timeout.
    let mut b = tls_broker(
        &pki,
        false,
        &["--handshake-timeout", "60", "--shutdown-timeout", "5"],
    );
    let _silent = std::net::TcpStream::connect(b.addr()).unwrap();
    // Let the broker accept it and start the handshake.
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    b.terminate();
    let status = b.wait_exit(Duration::from_secs(10)).expect("no exit");
    assert!(status.success(), "{status:?}: {}", b.stderr());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "shutdown took {:?}: {}",
        started.elapsed(),
        b.stderr()
    );
    assert!(!b.stderr().contains("shutdown timed out"), "{}", b.stderr());
}

#[test]
fn tls_configuration_errors_exit_2_with_a_clear_message() {
    let pki = Pki::new();
    let garbage = pki.path("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--tls-cert".into(), pki.arg("broker.pem")],
            "give --tls-key",
        ),
        (
            vec!["--tls-key".into(), pki.arg("broker-key.pem")],
            "give --tls-cert",
        ),
        (
            vec![
                "--tls-cert".into(),
                garbage.display().to_string(),
                "--tls-key".into(),
                pki.arg("broker-key.pem"),
            ],
            "no CERTIFICATE section",
        ),
        (
            vec![
                "--tls-cert".into(),
                pki.arg("broker.pem"),
                "--tls-key".into(),
                pki.arg("missing.pem"),
            ],
            "cannot read --tls-key",
        ),
        (
            vec![
                "--tls-cert".into(),
                pki.arg("broker.pem"),
                "--tls-key".into(),
                pki.arg("client-key.pem"),
            ],
            "do not make a usable pair",
        ),
    ];
    for (args, hint) in cases {
        let out = run_broker(&args, pki.dir.path());
        assert_eq!(out.0, Some(2), "{args:?}: {}", out.1);
        assert!(out.1.contains(hint), "{args:?}: {}", out.1);
    }
}

/// Runs the broker to its exit (it must fail at start): (exit code, stderr).
fn run_broker(args: &[String], dir: &Path) -> (Option<i32>, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ordo-broker"));
    for (k, _) in std::env::vars() {
        if k.starts_with("ORDO_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .args(["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until a broker's counter reaches `at_least`.
async fn wait_metric_at_least(b: &BrokerProcess, name: &str, at_least: f64) {
    let deadline = Instant::now() + common::WAIT;
    loop {
        let v = metric(b, name);
        if v >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} is {v}, wanted {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
