//! Test harness: [`TestServer`] runs the real `ricochet` binary on a temporary data dir
//! and socket; [`TestReceiver`] is a real HTTP/1.1 receiver with a scriptable answer.
//!
//! Waiting is always on an event (a log line, a request arriving, a condition variable),
//! with a deadline only as a failure bound.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_ricochet");

/// A request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("body is JSON")
    }
}

/// What the receiver answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub delay: Duration,
    /// Raw bytes written right after the response, in the same write (a broken
    /// receiver: a second response, or junk).
    pub after: Vec<u8>,
    /// Close the connection instead of answering.
    pub hang_up: bool,
    /// Close the connection right after the answer, without a `Connection: close`.
    pub close: bool,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: vec![],
            body: Vec::new(),
            delay: Duration::ZERO,
            after: Vec::new(),
            hang_up: false,
            close: false,
        }
    }
    /// No answer: the receiver closes the connection once it has read the request.
    pub fn hang_up() -> Reply {
        Reply {
            hang_up: true,
            ..Reply::status(0)
        }
    }
    /// Answers, then closes the connection without having said it would.
    pub fn then_close(mut self) -> Reply {
        self.close = true;
        self
    }
    pub fn then_raw(mut self, b: &[u8]) -> Reply {
        self.after = b.to_vec();
        self
    }
    pub fn body(mut self, b: &str) -> Reply {
        self.body = b.as_bytes().to_vec();
        self
    }
    pub fn header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.into(), v.into()));
        self
    }
    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }
}

/// A door a receiver's script can wait at: [`wait`](Gate::wait) blocks until the test
/// calls [`open`](Gate::open). Holds an attempt in flight while the test acts.
#[derive(Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    pub fn new() -> Gate {
        Gate::default()
    }

    /// Blocks until the gate is open (at most a minute: a test that forgets to open it
    /// fails instead of hanging).
    pub fn wait(&self) {
        let (lock, cv) = &*self.0;
        let g = lock.lock().unwrap();
        let (g, _) = cv
            .wait_timeout_while(g, Duration::from_secs(60), |open| !*open)
            .unwrap();
        assert!(*g, "the gate was never opened");
    }

    pub fn open(&self) {
        let (lock, cv) = &*self.0;
        *lock.lock().unwrap() = true;
        cv.notify_all();
    }
}

type Script = Arc<dyn Fn(&Received, usize) -> Reply + Send + Sync>;

struct RecvState {
    requests: Vec<Received>,
}

/// A real HTTP/1.1 receiver on 127.0.0.1.
pub struct TestReceiver {
    pub addr: SocketAddr,
    state: Arc<(Mutex<RecvState>, Condvar)>,
    script: Arc<Mutex<Script>>,
}

impl TestReceiver {
    /// Answers 200 OK to everything.
    pub fn start() -> TestReceiver {
        Self::with_script(|_, _| Reply::status(200).body("OK"))
    }

    /// `script(request, n)` decides the answer to the n-th request (0-based).
    pub fn with_script(
        script: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static,
    ) -> TestReceiver {
        Self::bind(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(script),
            Duration::ZERO,
        )
    }

    /// Holds every request until the gate it returns is opened, then answers 200: the
    /// attempts stay in flight while the test acts.
    pub fn gated() -> (TestReceiver, Gate) {
        let gate = Gate::new();
        let held = gate.clone();
        let rx = TestReceiver::with_script(move |_, _| {
            held.wait();
            Reply::status(200)
        });
        (rx, gate)
    }

    /// Answers 200 OK, but reads nothing on a new connection until `delay` after
    /// accepting it: a loaded receiver slow to take up new connections.
    pub fn slow_to_start_connections(delay: Duration) -> TestReceiver {
        Self::bind(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(|_: &Received, _: usize| Reply::status(200).body("OK")),
            delay,
        )
    }

    fn bind(addr: SocketAddr, script: Script, first_read_delay: Duration) -> TestReceiver {
        let listener = TcpListener::bind(addr).expect("bind receiver");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new((
            Mutex::new(RecvState {
                requests: Vec::new(),
            }),
            Condvar::new(),
        ));
        let script = Arc::new(Mutex::new(script));
        let (st, sc) = (state.clone(), script.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (st, sc) = (st.clone(), sc.clone());
                std::thread::spawn(move || {
                    // The receiver's slowness is the behaviour under test.
                    std::thread::sleep(first_read_delay);
                    serve_conn(conn, st, sc)
                });
            }
        });
        TestReceiver {
            addr,
            state,
            script,
        }
    }

    pub fn set_script(&self, script: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static) {
        *self.script.lock().unwrap() = Arc::new(script);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn requests(&self) -> Vec<Received> {
        self.state.0.lock().unwrap().requests.clone()
    }

    pub fn count(&self) -> usize {
        self.state.0.lock().unwrap().requests.len()
    }

    /// Waits until `pred` holds over the requests so far; panics after `timeout`.
    pub fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.state;
        let mut g = lock.lock().unwrap();
        loop {
            if pred(&g.requests) {
                return g.requests.clone();
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "receiver: timed out waiting for {what}; got {} requests",
                    g.requests.len()
                );
            }
            g = cv.wait_timeout(g, deadline - now).unwrap().0;
        }
    }

    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        self.wait_until(timeout, &format!("{n} requests"), |r| r.len() >= n)
    }

    /// Distinct `webhook-id`s received.
    pub fn ids(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for r in self.requests() {
            if let Some(id) = r.header("webhook-id") {
                *m.entry(id.to_string()).or_insert(0) += 1;
            }
        }
        m
    }
}

fn serve_conn(
    mut conn: TcpStream,
    state: Arc<(Mutex<RecvState>, Condvar)>,
    script: Arc<Mutex<Script>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // Parse a request head.
        let (head_len, method, path, headers) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut hs);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let headers = owned_headers(req.headers);
                    break (
                        n,
                        req.method.unwrap().to_string(),
                        req.path.unwrap().to_string(),
                        headers,
                    );
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return,
            }
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_len + len {
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[head_len..head_len + len].to_vec();
        buf.drain(..head_len + len);
        let req = Received {
            method,
            path,
            headers,
            body,
            at: Instant::now(),
        };
        let n = {
            let (lock, cv) = &*state;
            let mut g = lock.lock().unwrap();
            g.requests.push(req.clone());
            cv.notify_all();
            g.requests.len() - 1
        };
        let s = script.lock().unwrap().clone();
        let reply = s(&req, n);
        if reply.hang_up {
            return;
        }
        if !reply.delay.is_zero() {
            std::thread::sleep(reply.delay); // the receiver being slow is the behaviour under test
        }
        let mut out = format!(
            "HTTP/1.1 {} X\r\nContent-Length: {}\r\n",
            reply.status,
            reply.body.len()
        );
        for (k, v) in &reply.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&reply.body);
        bytes.extend_from_slice(&reply.after);
        if conn.write_all(&bytes).is_err() || reply.close {
            return;
        }
    }
}

/// A running `ricochet serve`.
pub struct TestServer {
    pub dir: Arc<tempfile::TempDir>,
    pub socket: PathBuf,
    pub admin: SocketAddr,
    pub tcp: Option<SocketAddr>,
    pub config_path: PathBuf,
    /// The server's "ricochet ready" log line (what it listens on, its driver).
    pub ready: String,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
}

/// Workers each test server runs: 2, the machine's cores; `RICOCHET_TEST_WORKERS=N` runs
/// the suite with another count, for sharding that only one count would show (one worker
/// owning every endpoint, or more workers than cores). A test's own `--workers` wins.
fn test_workers() -> usize {
    std::env::var("RICOCHET_TEST_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

/// Raises this test process's soft open-file limit to its hard one, once (as `serve`
/// does for itself): tests that run side by side hold hundreds of sockets each
/// (receivers holding delivery connections, producers' connections), over a usual soft
/// limit of 1,024.
fn raise_open_files_limit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = ricochet::fdlimit::init();
    });
}

/// Options for starting a server.
#[derive(Clone)]
pub struct ServerOpts {
    pub endpoints: String,
    pub server_extra: String,
    pub tcp: bool,
    /// Limit on the size of any file the server writes (to simulate a full disk).
    pub file_size_limit: Option<u64>,
    /// RLIMIT_NOFILE for the server, soft and hard.
    pub open_files_limit: Option<u64>,
    /// The umask the server starts with.
    pub umask: Option<libc::mode_t>,
    /// `RICOCHET_LOG` (default `info`).
    pub log_filter: Option<String>,
    /// Start with SIGHUP ignored, as `nohup` does.
    pub nohup: bool,
    /// Command-line arguments after `serve --config FILE`.
    pub args: Vec<String>,
    /// Stop reading the server's stderr once it is ready, closing the pipe (a log
    /// reader gone).
    pub close_stderr: bool,
    /// Extra environment variables for the server.
    pub env: Vec<(String, String)>,
}

impl ServerOpts {
    pub fn new(endpoints: &str) -> ServerOpts {
        ServerOpts {
            endpoints: endpoints.to_string(),
            server_extra: String::new(),
            tcp: false,
            file_size_limit: None,
            open_files_limit: None,
            umask: None,
            log_filter: None,
            nohup: false,
            args: Vec::new(),
            close_stderr: false,
            env: Vec::new(),
        }
    }
    pub fn arg(mut self, a: impl Into<String>) -> ServerOpts {
        self.args.push(a.into());
        self
    }
    pub fn server(mut self, extra: &str) -> ServerOpts {
        self.server_extra.push_str(extra);
        self.server_extra.push('\n');
        self
    }
}

impl TestServer {
    pub fn start(endpoints: &str) -> TestServer {
        Self::start_with(ServerOpts::new(endpoints))
    }

    pub fn start_with(opts: ServerOpts) -> TestServer {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        Self::start_in(dir, &opts)
    }

    /// Starts a server on an existing data dir (for restarts).
    pub fn start_in(dir: Arc<tempfile::TempDir>, opts: &ServerOpts) -> TestServer {
        raise_open_files_limit();
        let socket = dir.path().join("ricochet.sock");
        let config_path = dir.path().join("ricochet.toml");
        let mut cfg = format!(
            "[server]\ndata_dir = {:?}\nsocket = {:?}\nadmin = \"127.0.0.1:0\"\nworkers = {}\n{}",
            dir.path().join("data"),
            socket,
            test_workers(),
            opts.server_extra
        );
        if !opts.server_extra.contains("allow_private_networks") {
            // Test receivers live on loopback.
            cfg.push_str("allow_private_networks = true\n");
        }
        if opts.tcp {
            cfg.push_str("listen = \"127.0.0.1:0\"\n");
        }
        cfg.push('\n');
        cfg.push_str(&opts.endpoints);
        std::fs::write(&config_path, cfg).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .args(&opts.args)
            .env("RICOCHET_LOG", opts.log_filter.as_deref().unwrap_or("info"))
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let limits = [
            (libc::RLIMIT_FSIZE, opts.file_size_limit),
            (libc::RLIMIT_NOFILE, opts.open_files_limit),
        ];
        let (umask, nohup) = (opts.umask, opts.nohup);
        {
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    // Past RLIMIT_FSIZE a write fails with EFBIG instead of a signal.
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    if let Some(mask) = umask {
                        libc::umask(mask);
                    }
                    // Set either way: a test runner started under `nohup` would
                    // otherwise pass its ignored SIGHUP on to every server.
                    let hup = if nohup { libc::SIG_IGN } else { libc::SIG_DFL };
                    libc::signal(libc::SIGHUP, hup);
                    for (resource, limit) in limits {
                        let Some(limit) = limit else { continue };
                        let r = libc::rlimit {
                            rlim_cur: limit,
                            rlim_max: limit,
                        };
                        if libc::setrlimit(resource, &r) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("start ricochet");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        let close_stderr = opts.close_stderr;
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("RICOCHET_TEST_LOG").is_some() {
                    eprintln!("[ricochet] {line}");
                }
                let ready = line.contains("ricochet ready");
                if ready {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line.clone());
                    }
                }
                log2.lock().unwrap().push(line);
                if ready && close_stderr {
                    break;
                }
            }
        });
        let ready = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) => l,
            Err(_) => panic!(
                "ricochet did not become ready; log:\n{}",
                log.lock().unwrap().join("\n")
            ),
        };
        let field = |name: &str| -> Option<String> {
            let start = ready.find(&format!("{name}="))? + name.len() + 1;
            let rest = &ready[start..];
            Some(rest.split_whitespace().next()?.to_string())
        };
        let admin: SocketAddr = field("admin").unwrap().parse().unwrap();
        // `off` without a TCP listener.
        let tcp = field("tcp").and_then(|t| t.parse().ok());
        // A `--socket` flag wins over the file.
        let socket = field("socket").map(PathBuf::from).unwrap_or(socket);
        TestServer {
            dir,
            socket,
            admin,
            tcp,
            config_path,
            ready,
            child: Some(child),
            log,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGKILL);
            }
            let _ = c.wait();
        }
    }

    /// kill -9, handing back the data dir for a start in it ([`Self::start_in`]).
    pub fn kill9_for_restart(mut self) -> Arc<tempfile::TempDir> {
        self.kill9();
        Arc::clone(&self.dir)
    }

    /// SIGTERM and wait for exit; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        self.terminate();
        self.wait_exit()
    }

    /// The server's open descriptors (`/proc/<pid>/fd`).
    pub fn open_fds(&self) -> usize {
        let pid = self.child.as_ref().expect("running").id();
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("the server's descriptors")
            .count()
    }

    /// SIGTERM, without waiting for the exit.
    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: a signal to our own child.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// Waits for the server to exit; returns the exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        c.wait().ok().and_then(|s| s.code())
    }

    /// Writes `lines` in one go (from a thread: the socket cannot hold them all) while
    /// reading every answer; returns how many were `ok`.
    pub fn pipeline(&self, lines: Vec<u8>) -> usize {
        let mut w = std::os::unix::net::UnixStream::connect(&self.socket).unwrap();
        let r = w.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            w.write_all(&lines).unwrap();
            w.shutdown(std::net::Shutdown::Write).unwrap();
        });
        let oks = BufReader::new(r)
            .lines()
            .map(|l| l.unwrap())
            .filter(|l| l.starts_with("ok "))
            .count();
        writer.join().unwrap();
        oks
    }

    pub fn connect(&self) -> Conn {
        Conn::unix(&self.socket)
    }

    /// GET on the admin API; (status, JSON body).
    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        http_get(self.admin, path)
    }

    /// POST on the admin API; (status, JSON body).
    pub fn post(&self, path: &str) -> (u16, serde_json::Value) {
        http_call(self.admin, "POST", path)
    }

    /// `GET /metrics`, parsed strictly.
    pub fn metrics(&self) -> ricochet::metrics::Exposition {
        let text = {
            let mut s = TcpStream::connect(self.admin).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            let (head, body) = out.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            body.to_string()
        };
        ricochet::metrics::parse(&text).unwrap_or_else(|e| panic!("/metrics: {e}\n{text}"))
    }

    /// Polls `/metrics` until the unlabelled sample `name` satisfies `pred` (metrics have
    /// no push notification); panics after `timeout`. Returns the value.
    pub fn wait_metric(&self, name: &str, timeout: Duration, pred: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.metrics().value(name, &[]);
            match v {
                Some(v) if pred(v) => return v,
                _ if Instant::now() >= deadline => panic!("{name} is {v:?} after {timeout:?}"),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Waits until no delivery is pending (within `timeout`), then asserts none is
    /// paused either: everything accepted has reached an end.
    pub fn wait_nothing_pending(&self, timeout: Duration) {
        self.wait_metric("ricochet_deliveries_pending", timeout, |v| v == 0.0);
        assert_eq!(
            self.metrics().value("ricochet_deliveries_paused", &[]),
            Some(0.0)
        );
    }

    /// Polls the server's log (collected as it writes it) until a line contains `text`;
    /// panics after `timeout`.
    pub fn wait_log(&self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(text) {
            assert!(
                Instant::now() < deadline,
                "no {text:?} in the log after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `GET /v1/events/{id}`, asserting it exists.
    pub fn event(&self, id: &str) -> serde_json::Value {
        let (status, v) = self.get(&format!("/v1/events/{id}"));
        assert_eq!(status, 200, "GET /v1/events/{id}: {v}");
        v
    }

    /// Polls the log until `pred` holds for the event (the log is written asynchronously).
    pub fn wait_event(
        &self,
        id: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        self.poll(&format!("/v1/events/{id}"), timeout, pred)
    }

    /// Polls `GET /v1/endpoints/{name}` until `pred` holds (a disable decided by a
    /// worker reaches the store just after the outcome that caused it).
    pub fn wait_endpoint(
        &self,
        name: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        self.poll(&format!("/v1/endpoints/{name}"), timeout, pred)
    }

    /// Polls `GET path` (which must answer 200) until `pred` holds for its JSON.
    fn poll(
        &self,
        path: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, v) = self.get(path);
            assert_eq!(status, 200, "GET {path}: {v}");
            if pred(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "GET {path} never reached the expected state: {v:#}"
            );
            std::thread::sleep(Duration::from_millis(20)); // polling a remote API: no event to await
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn http_get(addr: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    http_call(addr, "GET", path)
}

pub fn http_call(addr: SocketAddr, method: &str, path: &str) -> (u16, serde_json::Value) {
    http_json(addr, method, path, "", None)
}

/// An ingest connection speaking the line protocol.
pub struct Conn {
    pub w: Box<dyn Write + Send>,
    pub r: BufReader<Box<dyn Read + Send>>,
}

impl Conn {
    pub fn unix(path: &Path) -> Conn {
        let s = UnixStream::connect(path).expect("connect socket");
        let r = s.try_clone().unwrap();
        Conn {
            w: Box::new(s),
            r: BufReader::new(Box::new(r)),
        }
    }

    pub fn tcp(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).expect("connect tcp");
        let r = s.try_clone().unwrap();
        Conn {
            w: Box::new(s),
            r: BufReader::new(Box::new(r)),
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).unwrap();
    }

    pub fn ack(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).unwrap();
        assert!(!l.is_empty(), "connection closed before an answer");
        l.trim_end_matches('\n').to_string()
    }

    /// Sends one line and reads its answer.
    pub fn send(&mut self, line: &str) -> String {
        self.send_raw(line.as_bytes());
        self.send_raw(b"\n");
        self.ack()
    }

    /// Fills a server started with `file_size_limit`: events of `etype` (routed to no
    /// endpoint: each answered `ok <id> 0`) with 200 KB of data, until one is answered
    /// `err unavailable`.
    pub fn fill_store(&mut self, etype: &str) {
        let pad = "z".repeat(200_000);
        for i in 0..200 {
            let id = format!("fill-{i}");
            let a = self.send(&event(etype, &id, &format!(r#"{{"p":"{pad}"}}"#)));
            if a.starts_with("err unavailable") {
                return;
            }
            assert_eq!(a, format!("ok {id} 0"));
        }
        panic!("the disk never filled up");
    }

    /// Sends events `{prefix}-0` .. `{prefix}-{n-1}` of type `etype` with empty data,
    /// each answered `ok <id> 1` (one subscribed endpoint).
    pub fn send_each_ok(&mut self, etype: &str, prefix: &str, n: usize) {
        for i in 0..n {
            let id = format!("{prefix}-{i}");
            assert_eq!(self.send(&event(etype, &id, "{}")), format!("ok {id} 1"));
        }
    }
}

/// The state of each delivery in a `GET /v1/events/{id}` answer.
pub fn states(v: &serde_json::Value) -> Vec<String> {
    v["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["state"].as_str().unwrap().to_string())
        .collect()
}

/// Each delivery in a `GET /v1/events/{id}` answer by its endpoint's name, as `f` reads
/// it.
pub fn by_endpoint<T>(
    v: &serde_json::Value,
    f: impl Fn(&serde_json::Value) -> T,
) -> std::collections::HashMap<String, T> {
    v["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["endpoint"].as_str().unwrap().to_string(), f(d)))
        .collect()
}

/// Header pairs of a parsed head as owned strings.
pub fn owned_headers(hs: &[httparse::Header]) -> Vec<(String, String)> {
    hs.iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

/// A JSON endpoint definition.
pub fn ep(name: &str, events: &[&str], url: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut v = serde_json::json!({ "name": name, "events": events, "url": url });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

/// An event line.
pub fn event(etype: &str, id: &str, data: &str) -> String {
    format!(r#"{{"type":"{etype}","id":"{id}","data":{data}}}"#)
}

/// `n` event lines of type `etype` with ids `<prefix>-0` …, each with `{}` as data, for
/// [`TestServer::pipeline`].
pub fn event_lines(etype: &str, prefix: &str, n: usize) -> Vec<u8> {
    let mut lines = Vec::new();
    for i in 0..n {
        lines.extend_from_slice(event(etype, &format!("{prefix}-{i}"), "{}").as_bytes());
        lines.push(b'\n');
    }
    lines
}

/// The wall clock in Unix milliseconds (what an event's `time` is written in).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A `[[endpoint]]` table.
pub fn endpoint(name: &str, events: &str, url: &str, extra: &str) -> String {
    format!("[[endpoint]]\nname = \"{name}\"\nevents = {events}\nurl = \"{url}\"\n{extra}\n")
}

/// A call on the admin API with a body (sent as given, so malformed JSON can be sent too)
/// and an optional bearer token; (status, JSON body, `Null` if the body is not JSON).
pub fn http_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    let (status, body) = http_raw(addr, method, path, body, token);
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// [`http_json`] with the answer's body as text, exactly as sent.
pub fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body.as_bytes());
    s.write_all(&req).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n").expect("response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

impl TestServer {
    /// An admin API call with a JSON body (`Null` sends none); (status, JSON body).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        http_json(self.admin, method, path, &body, None)
    }
}

/// An event line with an account.
pub fn event_for(etype: &str, id: &str, account: &str, data: &str) -> String {
    format!(r#"{{"type":"{etype}","id":"{id}","account":"{account}","data":{data}}}"#)
}

/// Sends every line over one socket connection, pipelined (a writer thread writes while
/// this thread reads the acks); returns the acks in order.
pub fn send_pipelined(srv: &TestServer, lines: Vec<String>) -> Vec<String> {
    let w = std::os::unix::net::UnixStream::connect(&srv.socket).unwrap();
    let r = std::io::BufReader::new(w.try_clone().unwrap());
    let n = lines.len();
    let writer = std::thread::spawn(move || {
        let mut w = std::io::BufWriter::new(w);
        for l in lines {
            std::io::Write::write_all(&mut w, l.as_bytes()).unwrap();
            std::io::Write::write_all(&mut w, b"\n").unwrap();
        }
        std::io::Write::flush(&mut w).unwrap();
        w
    });
    let acks: Vec<String> = std::io::BufRead::lines(r)
        .take(n)
        .map(|l| l.unwrap())
        .collect();
    drop(writer.join().unwrap());
    assert_eq!(acks.len(), n, "connection closed early");
    acks
}

/// Runs the binary in a scratch directory (nothing it might create lands in the repo);
/// panics if it has not exited within `limit`.
pub fn run(args: &[&str], limit: Duration) -> std::process::Output {
    run_with_input(args, None, limit)
}

/// [`run`], with `input` on its standard input.
pub fn run_with_input(
    args: &[&str],
    input: Option<&[u8]>,
    limit: Duration,
) -> std::process::Output {
    let cwd = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(cwd.path())
        .env("RICOCHET_LOG", "warn")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ricochet");
    if let Some(input) = input {
        // Dropped after the write: the end of input.
        let mut stdin = child.stdin.take().expect("piped stdin");
        std::io::Write::write_all(&mut stdin, input).expect("write stdin");
    }
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait for ricochet"),
        Err(_) => {
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            panic!("ricochet {args:?} still running after {limit:?}");
        }
    }
}
