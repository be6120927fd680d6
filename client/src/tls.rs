//! TLS for the client: which CA to trust, an optional client certificate
//! (mutual TLS), the name to check the broker's certificate against, and
//! the handshake (rustls with the ring provider, TLS 1.2 and 1.3).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls;

use crate::error::Error;

/// How to speak TLS to the broker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file of the CA certificate(s) that signed the broker's certificate.
    pub ca_file: PathBuf,
    /// PEM certificate chain and private key to present to a broker that
    /// requires client certificates (`--tls-client-ca` on the broker).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// The name the broker's certificate must carry; by default the host
    /// part of the address connected to (a DNS name or an IP address).
    pub server_name: Option<String>,
}

impl TlsOptions {
    /// Trust the CA certificate(s) in `ca_file`, no client certificate.
    pub fn new(ca_file: impl Into<PathBuf>) -> Self {
        TlsOptions {
            ca_file: ca_file.into(),
            ..TlsOptions::default()
        }
    }

    /// The rustls configuration these options describe (reads the files).
    pub fn client_config(&self) -> Result<rustls::ClientConfig, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in load_certs("--tls-ca", &self.ca_file)? {
            roots
                .add(cert)
                .map_err(|e| config_error("--tls-ca", &self.ca_file, e))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| Error::TlsConfig(format!("the TLS provider: {e}")))?
            .with_root_certificates(roots);
        match &self.client_cert {
            None => Ok(builder.with_no_client_auth()),
            Some((cert, key)) => {
                let chain = load_certs("--tls-cert", cert)?;
                let key_der = load_key(key)?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    Error::TlsConfig(format!(
                        "--tls-cert {} and --tls-key {} do not make a usable pair: {e}",
                        cert.display(),
                        key.display()
                    ))
                })
            }
        }
    }

    /// The name to verify the broker's certificate against, for `addr`.
    pub(crate) fn server_name(&self, addr: &str) -> Result<ServerName<'static>, Error> {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => host_of(addr).to_string(),
        };
        ServerName::try_from(name.clone()).map_err(|_| {
            Error::TlsConfig(format!(
                "{name:?} is not a DNS name or IP address to check the broker's certificate against; \
                 give one with --tls-server-name"
            ))
        })
    }
}

/// The host part of `host:port`, `[v6]:port` or a bare host.
fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            return &rest[..end];
        }
    }
    match addr.rsplit_once(':') {
        // A bare IPv6 address has more colons; leave it whole.
        Some((host, _)) if !host.contains(':') => host,
        _ => addr,
    }
}

fn config_error(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::TlsConfig(format!("{what} file {} is not usable: {e}", path.display()))
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| {
        Error::TlsConfig(format!(
            "cannot read {what} file {}: {}",
            path.display(),
            crate::error::describe_io(&e)
        ))
    })
}

fn load_certs(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config_error(what, path, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(config_error(
            what,
            path,
            "no CERTIFICATE section found (expected PEM: -----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let pem = read("--tls-key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => config_error(
            "--tls-key",
            path,
            "no PRIVATE KEY section found (expected PEM: -----BEGIN PRIVATE KEY-----)",
        ),
        e => config_error("--tls-key", path, format!("bad PEM: {e}")),
    })
}

/// Whether an I/O error carries a TLS failure (rustls reports through io::Error).
pub(crate) fn is_tls_error(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
}

/// A failed handshake, in words that name the likely causes.
pub(crate) fn handshake_failed(addr: &str, e: &io::Error) -> Error {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let hint = match tls {
        Some(rustls::Error::InvalidCertificate(_)) => {
            "the broker's certificate is not trusted: is --tls-ca the CA that signed it, and does it name \
             this host (or --tls-server-name)?"
        }
        Some(rustls::Error::AlertReceived(_)) => {
            "the broker refused the handshake: does it require a client certificate (--tls-cert/--tls-key), \
             or is ours not signed by the CA it trusts?"
        }
        Some(
            rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::PeerSentOversizedRecord,
        )
        | None => {
            "the broker may not speak TLS: connect without --tls-ca / ORDO_TLS_CA, or check its --tls-cert"
        }
        Some(_) => "check the broker's TLS settings (--tls-cert, --tls-client-ca) against ours",
    };
    let reason = match tls {
        Some(t) => format!("TLS handshake failed: {t}; {hint}"),
        None => format!(
            "TLS handshake failed: {}; {hint}",
            crate::error::describe_io(e)
        ),
    };
    Error::Connect {
        addr: addr.to_string(),
        reason,
        cause: None,
    }
}

/// Whether bytes a plain connection received look like the start of a TLS
/// record (handshake or alert, versions 3.x): a broker that wants TLS.
pub(crate) fn looks_like_tls(buf: &[u8]) -> bool {
    matches!(buf, [0x15 | 0x16, 0x03, 0x00..=0x04, ..])
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_is_the_host_of_the_address_unless_overridden() {
        assert_eq!(host_of("localhost:7411"), "localhost");
        assert_eq!(host_of("127.0.0.1:7411"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7411"), "::1");
        assert_eq!(host_of("broker.example"), "broker.example");
        let o = TlsOptions::new("ca.pem");
        assert_eq!(
            o.server_name("127.0.0.1:7411").unwrap(),
            ServerName::try_from("127.0.0.1").unwrap()
        );
        let o = TlsOptions {
            server_name: Some("broker.internal".into()),
            ..o
        };
        assert_eq!(
            o.server_name("127.0.0.1:7411").unwrap(),
            ServerName::try_from("broker.internal").unwrap()
        );
        let bad = TlsOptions {
            server_name: Some("not a name".into()),
            ..o
        };
        assert!(matches!(
            bad.server_name("x:1"),
            Err(Error::TlsConfig(m)) if m.contains("--tls-server-name")
        ));
    }

    #[test]
    fn files_are_checked_with_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let ca = dir.path().join("ca.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&ca, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
        TlsOptions::new(&ca).client_config().unwrap();
        let mtls = TlsOptions {
            client_cert: Some((ca.clone(), key.clone())),
            ..TlsOptions::new(&ca)
        };
        mtls.client_config().unwrap();

        let err = |o: TlsOptions| match o.client_config() {
            Err(e) => {
                assert_eq!(e.exit_code(), 2, "{e}");
                e.to_string()
            }
            Ok(_) => panic!("{o:?} accepted"),
        };
        let e = err(TlsOptions::new(dir.path().join("missing.pem")));
        assert!(
            e.contains("cannot read --tls-ca") && e.contains("missing.pem"),
            "{e}"
        );
        let e = err(TlsOptions::new(&key));
        assert!(e.contains("no CERTIFICATE section"), "{e}");
        let e = err(TlsOptions {
            client_cert: Some((ca.clone(), ca.clone())),
            ..TlsOptions::new(&ca)
        });
        assert!(e.contains("no PRIVATE KEY section"), "{e}");
    }

    #[test]
    fn tls_records_are_recognised() {
        // An alert and a handshake record, TLS 1.2 framing.
        assert!(looks_like_tls(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32]));
        assert!(looks_like_tls(&[0x16, 0x03, 0x01, 0x00, 0x10]));
        // An Ordo frame starts with a small big-endian length.
        assert!(!looks_like_tls(&[0x00, 0x00, 0x00, 0x20, 0x01]));
        assert!(!looks_like_tls(&[0x15]));
    }
}
