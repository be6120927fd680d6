//! TLS for the client listener: loads the PEM files named by `--tls-cert`,
//! `--tls-key` and `--tls-client-ca` into a rustls server configuration
//! (ring provider, TLS 1.2 and 1.3), and the write side of a TLS connection.
//!
//! A TLS connection is served by the same reader and writer as a plain one
//! (connection.rs is generic over the stream), but never by the driver's
//! direct writes (outbox.rs): those write plaintext to the TCP socket, which
//! on a TLS connection would go past the TLS layer. TLS connections take
//! the queued path only; plain TCP keeps its direct writes unchanged.

use std::io::{self, IoSlice};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Buf;
use ordo_wire::client::FrameBuf;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;

/// The PEM files of a TLS client listener, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The broker's certificate chain (`--tls-cert`), leaf first.
    pub cert: PathBuf,
    /// The private key of the leaf certificate (`--tls-key`).
    pub key: PathBuf,
    /// CA certificates that sign client certificates (`--tls-client-ca`);
    /// when set, every client must present a certificate (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// Why the TLS files cannot be used; each message names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// A file is not PEM of the expected kind, or holds none of it.
    #[error("{what} {path} is not usable: {problem}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        problem: String,
    },
    /// rustls refused the combination (a key that does not match the
    /// certificate, an unsupported key type, an unusable CA).
    #[error("{what}: {message}")]
    Rustls { what: &'static str, message: String },
}

/// The rustls server configuration for `files`: TLS 1.2 and 1.3 on the ring
/// provider, client certificates required when `client_ca` is set.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = load_certs("--tls-cert certificate file", &files.cert)?;
    let key = load_key(&files.key)?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Rustls {
            what: "the TLS provider",
            message: e.to_string(),
        })?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let what = "--tls-client-ca file";
            let mut roots = rustls::RootCertStore::empty();
            for cert in load_certs(what, path)? {
                roots.add(cert).map_err(|e| TlsError::Pem {
                    what,
                    path: path.clone(),
                    problem: format!("a certificate in it is not a usable CA: {e}"),
                })?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| TlsError::Rustls {
                        what: "--tls-client-ca",
                        message: e.to_string(),
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Rustls {
            what: "--tls-cert and --tls-key do not make a usable pair",
            message: e.to_string(),
        })?;
    Ok(Arc::new(config))
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate in a PEM file; at least one.
fn load_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            path: path.to_path_buf(),
            problem: format!("bad PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            path: path.to_path_buf(),
            problem: "no CERTIFICATE section found (expected PEM: -----BEGIN CERTIFICATE-----)"
                .into(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let what = "--tls-key private key file";
    let pem = read(what, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        what,
        path: path.to_path_buf(),
        problem: match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                "no PRIVATE KEY section found (expected PEM: -----BEGIN PRIVATE KEY-----)".into()
            }
            e => format!("bad PEM: {e}"),
        },
    })
}

/// The write side of a TLS client connection; the writer owns it alone.
#[derive(Debug)]
pub(crate) struct TlsWriter(pub(crate) WriteHalf<TlsStream<TcpStream>>);

/// How long sending close_notify may take.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Most slices handed to one vectored write.
const MAX_IOV: usize = 64;

impl TlsWriter {
    /// Encrypts and writes all of `out`. Cancel-safe: a write the TLS
    /// layer has not taken leaves its bytes in `out`, and what it took it
    /// sends on the next write or flush.
    pub(crate) async fn write_all(&mut self, out: &mut FrameBuf) -> io::Result<()> {
        while out.has_remaining() {
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            let n = out.chunks_vectored(&mut slices);
            match self.0.write_vectored(&slices[..n]).await? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                k => out.advance(k),
            }
        }
        self.0.flush().await
    }

    /// Sends close_notify and ends our direction of the stream; bounded, as
    /// a peer that stopped reading may never make room for the alert (the
    /// connection is dropped then anyway).
    pub(crate) async fn close(&mut self) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.0.shutdown()).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// A self-signed certificate and its key, as PEM files in `dir`.
    fn pair(dir: &Path) -> (PathBuf, PathBuf) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
        (cert, key)
    }

    #[test]
    fn a_certificate_and_its_key_load() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(dir.path());
        let files = TlsFiles {
            cert: cert.clone(),
            key,
            client_ca: None,
        };
        server_config(&files).unwrap();
        // The same certificate serves as a client CA (mutual TLS).
        let mtls = TlsFiles {
            client_ca: Some(cert),
            ..files
        };
        server_config(&mtls).unwrap();
    }

    /// Handshakes a client limited to `version` with a server of `files`
    /// over an in-memory pipe; the version they agreed on.
    async fn handshake(
        files: &TlsFiles,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> rustls::ProtocolVersion {
        let mut roots = rustls::RootCertStore::empty();
        for c in load_certs("ca", &files.cert).unwrap() {
            roots.add(c).unwrap();
        }
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let (a, b) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config(files).unwrap());
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let (server, client) = tokio::join!(acceptor.accept(a), connector.connect(name, b));
        server.unwrap();
        client.unwrap().get_ref().1.protocol_version().unwrap()
    }

    #[tokio::test]
    async fn tls_1_2_and_1_3_are_both_spoken() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(dir.path());
        let files = TlsFiles {
            cert,
            key,
            client_ca: None,
        };
        assert_eq!(
            handshake(&files, &rustls::version::TLS12).await,
            rustls::ProtocolVersion::TLSv1_2
        );
        assert_eq!(
            handshake(&files, &rustls::version::TLS13).await,
            rustls::ProtocolVersion::TLSv1_3
        );
    }

    #[test]
    fn bad_files_name_the_file_and_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(dir.path());
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not PEM at all\n").unwrap();
        let err = |files: TlsFiles| server_config(&files).unwrap_err().to_string();

        let e = err(TlsFiles {
            cert: dir.path().join("missing.pem"),
            key: key.clone(),
            client_ca: None,
        });
        assert!(
            e.contains("cannot read --tls-cert") && e.contains("missing.pem"),
            "{e}"
        );

        let e = err(TlsFiles {
            cert: garbage.clone(),
            key: key.clone(),
            client_ca: None,
        });
        assert!(e.contains("no CERTIFICATE section"), "{e}");

        // A certificate where the key should be.
        let e = err(TlsFiles {
            cert: cert.clone(),
            key: cert.clone(),
            client_ca: None,
        });
        assert!(e.contains("no PRIVATE KEY section"), "{e}");

        // A key that belongs to another certificate.
        let other = tempfile::tempdir().unwrap();
        let (_, other_key) = pair(other.path());
        let e = err(TlsFiles {
            cert: cert.clone(),
            key: other_key,
            client_ca: None,
        });
        assert!(e.contains("do not make a usable pair"), "{e}");

        let e = err(TlsFiles {
            cert,
            key,
            client_ca: Some(garbage),
        });
        assert!(
            e.contains("--tls-client-ca") && e.contains("no CERTIFICATE"),
            "{e}"
        );
    }
}
