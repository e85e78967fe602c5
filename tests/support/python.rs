//! Python scripts as real clients and servers (grpcio, websockets, h2): a
//! script run from a temporary file, its stdout read line by line (bounded)
//! and its stdin written; killed when dropped. A test first checks the
//! modules it needs with `tools::require_python`.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// How long a script may take to print a line (python and grpcio start
/// slowly on a loaded machine).
const LINE_WAIT: Duration = Duration::from_secs(30);

/// A running python script; killed when dropped.
pub struct Py {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    _dir: tempfile::TempDir,
}

impl Py {
    /// Runs `script` with `args` (stderr goes to the test's).
    pub async fn run(script: &str, args: &[&str]) -> Py {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("script.py");
        std::fs::write(&path, script).expect("write script");
        let mut child = Command::new("python3")
            .arg(&path)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("run python3 (the test requires it first)");
        let stdout = child.stdout.take().expect("stdout");
        Py {
            child,
            lines: BufReader::new(stdout).lines(),
            _dir: dir,
        }
    }

    /// Starts a server script that prints the port it listens on (on
    /// 127.0.0.1) as its first line.
    pub async fn server(script: &str, args: &[&str]) -> (Py, SocketAddr) {
        let mut py = Py::run(script, args).await;
        let line = py.line().await;
        let port: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("the python server printed no port ({e}): {line:?}"));
        (py, SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// The next stdout line (bounded wait).
    pub async fn line(&mut self) -> String {
        match tokio::time::timeout(LINE_WAIT, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            other => panic!("python script gave no line: {other:?}"),
        }
    }

    /// The next stdout line, parsed as JSON.
    pub async fn json(&mut self) -> Value {
        let line = self.line().await;
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// Writes `line` and a newline to the script's stdin.
    pub async fn send_line(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write stdin");
        stdin.flush().await.expect("flush stdin");
    }
}
