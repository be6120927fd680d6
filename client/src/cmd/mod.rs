//! The `ordo` subcommands, and what they share: connecting, error words, exit codes.

pub mod bench;
pub mod cluster;
pub mod publish;
pub mod subscribe;
pub mod topic;

use anyhow::Context;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesOrdered, StreamExt};
use ordo_client::{Client, ClientOptions, Error, TlsOptions};

/// Confirmations awaited at once; the next publish waits for the oldest.
const CONFIRM_WINDOW: usize = 1024;

/// Publishes in order to one topic, keeping up to [`CONFIRM_WINDOW`]
/// confirmations in flight (`ordo pub` and `ordo bench` share it).
pub(crate) struct OrderedPublisher {
    pub(crate) client: Client,
    topic: String,
    confirm: bool,
    pending: FuturesOrdered<BoxFuture<'static, Result<(), Error>>>,
    /// Messages handed to the client so far.
    pub(crate) sent: u64,
}

impl OrderedPublisher {
    pub(crate) fn new(client: Client, topic: String, confirm: bool) -> Self {
        OrderedPublisher {
            client,
            topic,
            confirm,
            pending: FuturesOrdered::new(),
            sent: 0,
        }
    }

    pub(crate) async fn send(&mut self, payload: Vec<u8>) -> anyhow::Result<()> {
        if self.confirm {
            if self.pending.len() >= CONFIRM_WINDOW {
                self.confirmed().await?;
            }
            let c = self
                .client
                .publish_with_confirmation(&self.topic, payload)
                .await?;
            self.pending.push_back(Box::pin(c.wait()));
        } else {
            self.client.publish(&self.topic, payload).await?;
        }
        self.sent += 1;
        Ok(())
    }

    /// Whether confirmations are outstanding.
    pub(crate) fn awaiting_confirmation(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Waits for the oldest outstanding confirmation (cancel-safe).
    pub(crate) async fn confirmed(&mut self) -> anyhow::Result<()> {
        if let Some(res) = self.pending.next().await {
            res.with_context(|| format!("publish on {} was not confirmed", self.topic))?;
        }
        Ok(())
    }

    /// Returns once every message was handed to the broker (and confirmed).
    pub(crate) async fn finish(&mut self) -> anyhow::Result<()> {
        while !self.pending.is_empty() {
            self.confirmed().await?;
        }
        self.client
            .flush()
            .await
            .context("the broker did not acknowledge the messages")?;
        Ok(())
    }
}

/// Where and how to connect, from the global flags.
#[derive(Debug)]
pub struct Connection {
    /// `--server` / `ORDO_SERVER`.
    pub server: String,
    /// `--token` / `ORDO_TOKEN`.
    pub token: Option<String>,
    /// `--tls-ca` and friends; `None`: plain TCP.
    pub tls: Option<TlsOptions>,
}

impl Connection {
    /// Connects to the broker named by `--server` / `ORDO_SERVER`.
    pub async fn connect(&self) -> Result<Client, Error> {
        Client::connect(
            &self.server,
            self.options(format!("ordo-cli-{}", std::process::id())),
        )
        .await
    }

    /// Client options with the global flags (token, TLS) and `name`.
    pub fn options(&self, name: String) -> ClientOptions {
        ClientOptions {
            token: self.token.clone(),
            name,
            tls: self.tls.clone(),
            ..ClientOptions::default()
        }
    }
}

/// The exit code and message for an error that ends the command: the
/// client error's code (3..6) if there is one in the chain, else 1, and a
/// hint saying what to do where the error itself does not.
pub fn describe(err: &anyhow::Error) -> (u8, String) {
    let text = format!("{err:#}");
    if let Some(i) = err.downcast_ref::<publish::Interrupted>() {
        return (i.code, text);
    }
    let Some(e) = err.chain().find_map(|c| c.downcast_ref::<Error>()) else {
        return (1, text);
    };
    // The broker's own messages already say what to do; a failed connect
    // has nobody to say it but us.
    let hint = match e {
        Error::Connect { reason, .. } if reason.contains("TLS") => "",
        Error::Connect { .. } => " (is ordo-broker running? set --server or ORDO_SERVER)",
        _ => "",
    };
    (e.exit_code(), format!("{text}{hint}"))
}

/// Writes `text` to stdout. A closed pipe (`| head -1`) means the reader is
/// done, which is success, as for `ordo sub`; `println!` would panic.
pub(crate) fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to standard output")
        }
        _ => Ok(()),
    }
}

/// Writes a line to stderr, as `eprintln!` but without its panic when
/// stderr is closed or full: then nobody is left to tell, so it is dropped.
pub(crate) fn note(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}
