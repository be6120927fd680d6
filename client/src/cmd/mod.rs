//! The `ordo` subcommands, and what they share: connecting, error words, exit codes.

pub mod bench;
pub mod cluster;
pub mod publish;
pub mod subscribe;
pub mod topic;

use ordo_client::{Client, ClientOptions, Error};

/// Where and how to connect, from the global flags.
#[derive(Debug)]
pub struct Connection {
    /// `--server` / `ORDO_SERVER`.
    pub server: String,
    /// `--token` / `ORDO_TOKEN`.
    pub token: Option<String>,
}

impl Connection {
    /// Connects to the broker named by `--server` / `ORDO_SERVER`.
    pub async fn connect(&self) -> Result<Client, Error> {
        let options = ClientOptions {
            token: self.token.clone(),
            name: format!("ordo-cli-{}", std::process::id()),
            ..ClientOptions::default()
        };
        Client::connect(&self.server, options).await
    }
}

/// The exit code and message for an error that ends the command: the
/// client error's code (3..6) if there is one in the chain, else 1, and a
/// hint saying what to do where the error itself does not.
pub fn describe(err: &anyhow::Error) -> (u8, String) {
    let text = format!("{err:#}");
    let Some(e) = err.chain().find_map(|c| c.downcast_ref::<Error>()) else {
        return (1, text);
    };
    // The broker's own messages already say what to do; a failed connect
    // has nobody to say it but us.
    let hint = match e {
        Error::Connect { .. } => " (is ordo-broker running? set --server or ORDO_SERVER)",
        _ => "",
    };
    (e.exit_code(), format!("{text}{hint}"))
}
