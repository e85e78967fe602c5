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

/// Python's `h2` (hyper-h2) with its default validation, as a server: it
/// refuses a request whose `Host` and `:authority` disagree (RFC 9113
/// §8.3.1) by closing the connection; otherwise it answers 200 with the
/// authority and host it saw. `serve_h2(sock)` serves one connection;
/// `listen(serve)` prints the port it listens on (127.0.0.1) and runs `serve`
/// per connection. Scripts append their own `listen(...)` call.
pub const STRICT_H2: &str = r#"
import socket, sys, threading
import h2.config, h2.connection, h2.events, h2.exceptions

def serve_h2(sock):
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    try:
        while True:
            data = sock.recv(65535)
            if not data:
                return
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    headers = dict((k.decode(), v.decode()) for k, v in event.headers)
                    body = ("authority=%s host=%s" % (headers.get(":authority"), headers.get("host"))).encode()
                    conn.send_headers(event.stream_id, [(":status", "200"), ("content-length", str(len(body)))])
                    conn.send_data(event.stream_id, body, end_stream=True)
            sock.sendall(conn.data_to_send())
    except h2.exceptions.ProtocolError as e:
        print("refused:", e, file=sys.stderr, flush=True)
        sock.sendall(conn.data_to_send())
    finally:
        sock.close()

def listen(serve):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    print(listener.getsockname()[1], flush=True)
    while True:
        s, _ = listener.accept()
        threading.Thread(target=serve, args=(s,), daemon=True).start()
"#;
