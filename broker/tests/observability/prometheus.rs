//! A real Prometheus server for the test: generated config, temporary
//! storage, a free loopback port, killed by PID when dropped.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::http;

/// One sample of an instant query: its labels and value (NaN included).
#[derive(Debug, Clone)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A running Prometheus scraping fixed targets every second.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    /// Storage and config; removed when dropped (after the process is gone).
    _dir: tempfile::TempDir,
    started: Instant,
}

/// A port nobody listens on right now (the OS picks it; the tiny race until
/// the user binds it is acceptable in a test).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Prometheus {
    /// Starts `binary` scraping `targets` (host:port of `/metrics`) under job
    /// `ordo` every second, and waits until it is ready.
    pub fn start(binary: &Path, targets: &[SocketAddr], patience: Duration) -> Prometheus {
        let dir = tempfile::Builder::new()
            .prefix("ordo-obs-prometheus")
            .tempdir()
            .expect("temp dir for Prometheus");
        let list = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: ordo\n    static_configs:\n      - targets: [{list}]\n"
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let prom = Prometheus {
            child,
            addr,
            _dir: dir,
            started: Instant::now(),
        };
        prom.wait_for("Prometheus ready", patience, || {
            matches!(http::get(prom.addr, "/-/ready"), Ok((200, _)))
        });
        prom
    }

    /// How long it has been running (rate windows must not reach before it).
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }

    /// Its log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Evaluates `expr` now through `/api/v1/query`: the samples, or the
    /// error Prometheus gave.
    pub fn query(&self, expr: &str) -> Result<Vec<Sample>, String> {
        let path = format!("/api/v1/query?query={}", http::encode(expr));
        let (status, body) = http::get(self.addr, &path).map_err(|e| format!("HTTP: {e}"))?;
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| format!("HTTP {status}, not JSON ({e}): {body}"))?;
        if v["status"] != "success" {
            return Err(format!("HTTP {status}: {} {}", v["errorType"], v["error"]));
        }
        let value = |pair: &Value| -> f64 {
            pair[1]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(f64::NAN)
        };
        let data = &v["data"];
        match data["resultType"].as_str() {
            Some("vector") => Ok(data["result"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| Sample {
                    labels: s["metric"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                        .collect(),
                    value: value(&s["value"]),
                })
                .collect()),
            Some("scalar") => Ok(vec![Sample {
                labels: BTreeMap::new(),
                value: value(&data["result"]),
            }]),
            other => Err(format!("unexpected result type {other:?}: {body}")),
        }
    }

    /// The single value of a scalar-like expression, if there is one.
    pub fn value(&self, expr: &str) -> Option<f64> {
        match self.query(expr) {
            Ok(s) if s.len() == 1 => Some(s[0].value),
            _ => None,
        }
    }

    /// Polls `done` until it holds, or panics after `patience` naming `what`.
    pub fn wait_for(&self, what: &str, patience: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + patience;
        while !done() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; Prometheus log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // Child::kill signals exactly this PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
