//! `ordo`: the command-line tool for Ordo (DESIGN.md "Command-line contract").
//!
//! Exit codes: 0 success, 2 usage (clap; unusable TLS files too), 3 cannot
//! connect (a failed TLS handshake too), 4 refused by the
//! broker (also a `--confirm` publish the group could not confirm: the
//! broker answers `unavailable`), 5 disconnected, 6 timeout, 130 / 143 `ordo pub` stopped by
//! SIGINT / SIGTERM (after flushing what it had read), 1 anything else.
//! Nothing here panics on a closed stdout or stderr.

mod cmd;

/// mimalloc rather than glibc's malloc: `ordo bench` allocates per delivered
/// message on several threads at once.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Publish, subscribe and inspect an Ordo cluster.
#[derive(Debug, Parser)]
#[command(name = "ordo", version, propagate_version = true)]
struct Cli {
    /// The broker to talk to (host:port).
    #[arg(
        long,
        global = true,
        env = "ORDO_SERVER",
        default_value = "127.0.0.1:7411"
    )]
    server: String,

    /// Token the broker requires, if any.
    #[arg(long, global = true, env = "ORDO_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// Connect with TLS, trusting the CA certificate(s) in this PEM file (the broker runs with --tls-cert).
    #[arg(long, global = true, env = "ORDO_TLS_CA", value_name = "FILE")]
    tls_ca: Option<PathBuf>,

    /// Client certificate (PEM) for a broker that requires one (--tls-client-ca); needs --tls-key.
    #[arg(
        long,
        global = true,
        env = "ORDO_TLS_CLIENT_CERT",
        value_name = "FILE",
        requires_all = ["tls_key", "tls_ca"]
    )]
    tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert.
    #[arg(
        long,
        global = true,
        env = "ORDO_TLS_CLIENT_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,

    /// Name the broker's certificate must carry [default: the host part of --server].
    #[arg(
        long,
        global = true,
        env = "ORDO_TLS_SERVER_NAME",
        value_name = "NAME",
        requires = "tls_ca"
    )]
    tls_server_name: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Declare and list topics.
    #[command(subcommand)]
    Topic(cmd::topic::TopicCommand),
    // Help text avoids the literal placeholder: clap renders it as a line break.
    /// Publish messages: MESSAGE --count N times (n in curly braces becomes 1..N), or one per stdin line.
    Pub(cmd::publish::PubArgs),
    /// Subscribe to a pattern and print messages as they arrive.
    Sub(cmd::subscribe::SubArgs),
    /// Show the current view: id, members, coordinator, sequencer.
    Cluster(cmd::cluster::ClusterArgs),
    /// Load generator: publishers and subscribers over --servers, rates, latency percentiles, loss/order checks.
    Bench(cmd::bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            cmd::note(format_args!("ordo: cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let tls = cli.tls_ca.map(|ca_file| ordo_client::TlsOptions {
        ca_file,
        client_cert: cli.tls_cert.zip(cli.tls_key),
        server_name: cli.tls_server_name,
    });
    let conn = cmd::Connection {
        server: cli.server,
        token: cli.token,
        tls,
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Topic(c) => cmd::topic::run(&conn, c).await,
            Command::Pub(a) => cmd::publish::run(&conn, a).await,
            Command::Sub(a) => cmd::subscribe::run(&conn, a).await,
            Command::Cluster(a) => cmd::cluster::run(&conn, a).await,
            Command::Bench(a) => cmd::bench::run(&conn, a).await,
        }
    });
    // A stdin reader may still be blocked in read(); do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let (code, text) = cmd::describe(&e);
            cmd::note(format_args!("ordo: {text}"));
            ExitCode::from(code)
        }
    }
}
