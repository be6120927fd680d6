//! Finding the Prometheus binaries and running `promtool` on generated input.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where an installed tool is: on `PATH` or in the usual system directories.
pub fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/local/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Both tools, or a loud explanation why the caller skips. With
/// `ORDO_PROMETHEUS_REQUIRED` set (CI, which installs them), missing tools
/// fail the test instead.
pub fn prometheus_and_promtool(test: &str) -> Option<(PathBuf, PathBuf)> {
    match (find("prometheus"), find("promtool")) {
        (Some(p), Some(t)) => Some((p, t)),
        _ if std::env::var_os("ORDO_PROMETHEUS_REQUIRED").is_some() => panic!(
            "{test}: `prometheus`/`promtool` not installed but ORDO_PROMETHEUS_REQUIRED is set"
        ),
        _ => {
            eprintln!(
                "\n*** SKIPPED {test}: `prometheus`/`promtool` not installed \
                 (apt-get install -y prometheus; .ci/run does it) ***\n"
            );
            None
        }
    }
}

/// Runs `promtool` with `args`, feeding `stdin`; Err(output) when it fails.
pub fn promtool(promtool: &Path, args: &[&str], stdin: &str) -> Result<String, String> {
    let mut child = Command::new(promtool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", promtool.display()))?;
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.as_bytes())
            .map_err(|e| format!("writing to promtool: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for promtool: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}
