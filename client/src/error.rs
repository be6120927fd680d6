//! The one error type of the client library, shaped after the CLI's exit codes.

use std::io;
use std::sync::Arc;

use ordo_wire::client::ErrorCode;

/// Why a client operation failed.
///
/// Each variant matches one exit code of the `ordo` command-line contract
/// (see [`Error::exit_code`]). The type is `Clone` because one connection
/// failure is reported to every request and subscription that was waiting.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The TCP connection to the broker could not be opened.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The address as the caller gave it.
        addr: String,
        /// What the operating system said, in words ("connection refused").
        reason: String,
        /// The underlying error, if there was one (not chained as a
        /// `source`: `reason` already says it in words).
        cause: Option<Arc<io::Error>>,
    },
    /// The broker answered a request (or the session) with an error.
    #[error("refused by the broker ({}): {message}", code.as_str())]
    Refused {
        /// The broker's error code.
        code: ErrorCode,
        /// The broker's explanation.
        message: String,
    },
    /// The connection ended while it was in use.
    #[error("disconnected from the broker: {reason}")]
    Disconnected {
        /// The broker's error code, when the broker said why before closing.
        code: Option<ErrorCode>,
        /// The broker's reason, or what happened to the socket.
        reason: String,
    },
    /// An operation did not complete in time.
    #[error("timed out {what}")]
    Timeout {
        /// What was being waited for ("waiting for the broker's welcome").
        what: String,
    },
    /// The broker sent bytes this client cannot make sense of.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection was closed by this client ([`crate::Client::close`]).
    #[error("the connection was closed by this client")]
    Closed,
    /// The TLS settings cannot be used (an unreadable or invalid PEM file,
    /// a bad server name); nothing was sent.
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
}

impl Error {
    /// The `ordo` CLI exit code for this error: 2 unusable TLS settings (a
    /// usage error), 3 cannot connect (a failed TLS handshake too), 4 refused,
    /// 5 disconnected, 6 timeout, 1 anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Connect { .. } => 3,
            Error::Refused { .. } => 4,
            Error::Disconnected { .. } => 5,
            Error::Timeout { .. } => 6,
            Error::TlsConfig(_) => 2,
            Error::Protocol(_) | Error::Closed => 1,
        }
    }

    /// A connection-level failure for `addr` from an I/O error.
    pub(crate) fn connect(addr: &str, err: io::Error) -> Error {
        Error::Connect {
            addr: addr.to_string(),
            reason: describe_io(&err),
            cause: Some(Arc::new(err)),
        }
    }

    /// The connection broke on an I/O error.
    pub(crate) fn io(err: &io::Error) -> Error {
        Error::Disconnected {
            code: None,
            reason: describe_io(err),
        }
    }

    /// The error a broker's connection-level `Error { req: 0 }` turns into
    /// once the connection has ended: shutdown and slow-consumer are
    /// disconnects, anything else is a refusal of what the client did.
    pub(crate) fn from_connection_error(code: ErrorCode, message: String) -> Error {
        match code {
            ErrorCode::SlowConsumer
            | ErrorCode::ShuttingDown
            | ErrorCode::Internal
            | ErrorCode::Protocol
            | ErrorCode::FrameTooLarge => Error::Disconnected {
                code: Some(code),
                reason: message,
            },
            _ => Error::Refused { code, message },
        }
    }
}

/// Describes an I/O error in lower-case words without the OS error number,
/// so messages read "connection refused" rather than
/// "Connection refused (os error 111)".
pub(crate) fn describe_io(err: &io::Error) -> String {
    let words = match err.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused",
        io::ErrorKind::ConnectionReset => "connection reset by the broker",
        io::ErrorKind::ConnectionAborted => "connection aborted",
        io::ErrorKind::BrokenPipe => "connection closed by the broker (broken pipe)",
        io::ErrorKind::TimedOut => "timed out",
        io::ErrorKind::AddrNotAvailable => "address not available",
        io::ErrorKind::UnexpectedEof => "the broker closed the connection",
        _ => return err.to_string(),
    };
    words.to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_contract() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        let e = Error::connect("127.0.0.1:7411", refused);
        assert_eq!(e.exit_code(), 3);
        assert_eq!(
            e.to_string(),
            "cannot connect to 127.0.0.1:7411: connection refused"
        );
        let conflict = Error::Refused {
            code: ErrorCode::Conflict,
            message: "topic t is fifo, not causal".into(),
        };
        assert_eq!(conflict.exit_code(), 4);
        assert_eq!(
            Error::from_connection_error(ErrorCode::SlowConsumer, "slow".into()).exit_code(),
            5
        );
        assert_eq!(
            Error::from_connection_error(ErrorCode::PayloadTooLarge, "big".into()).exit_code(),
            4
        );
        assert_eq!(Error::Timeout { what: "x".into() }.exit_code(), 6);
    }
}
