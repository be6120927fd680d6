//! A minimal blocking HTTP GET for the test: enough for Prometheus' API and
//! the brokers' `/metrics` and `/healthz`, without an HTTP client dependency.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// GETs `path` (with its query string, already encoded) from `addr`:
/// (status, body). HTTP/1.0, so the server closes the connection after a
/// plain (never chunked) body and reading to the end is the whole answer.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw);
    let bad =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{what}: {raw}"));
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    Ok((status, body.to_string()))
}

/// Percent-encodes a query-string value (RFC 3986 unreserved characters stay).
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[test]
fn encode_escapes_promql() {
    assert_eq!(
        encode(r#"rate(x{instance=~".*"}[30s])"#),
        "rate%28x%7Binstance%3D~%22.%2A%22%7D%5B30s%5D%29"
    );
}
