//! HTTPS delivery (SPEC §2 `extra_ca_file`, §4): trust from `extra_ca_file`, SNI, ALPN,
//! keep-alive and session resumption, and a certificate failure retried with its reason.
//!
//! The PKI is made here with rcgen; the receiver is rustls' `ServerConnection` over std
//! sockets, one thread per connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{HandshakeKind, ServerConfig, ServerConnection, StreamOwned};

use crate::harness::*;

/// A CA and a server certificate for `localhost` and 127.0.0.1 that it signed.
struct Pki {
    ca_pem: String,
    leaf: CertificateDer<'static>,
    leaf_key: Vec<u8>,
}

fn pki(ca_name: &str) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = params.signed_by(&key, &ca, &ca_key).unwrap();
    Pki {
        ca_pem: ca.pem(),
        leaf: leaf.der().clone(),
        leaf_key: key.serialize_der(),
    }
}

/// A TLS server configuration with `pki`'s server certificate, offering HTTP/1.1 by ALPN.
fn server_config(pki: &Pki) -> Arc<ServerConfig> {
    let key = PrivateKeyDer::Pkcs8(pki.leaf_key.clone().into());
    let mut cfg =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![pki.leaf.clone()], key)
            .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// A request the TLS receiver got, with what it saw of the connection.
#[derive(Debug, Clone)]
struct Got {
    webhook_id: String,
    /// 1-based number of the TCP connection it came on.
    conn: usize,
    resumed: bool,
    sni: Option<String>,
    alpn: Option<Vec<u8>>,
}

#[derive(Default)]
struct State {
    connections: usize,
    requests: Vec<Got>,
}

/// How a [`TlsReceiver`] ends its connections.
#[derive(Clone, Copy)]
enum Closing {
    /// Never: every connection is kept alive.
    Never,
    /// The answer to the very first request carries `Connection: close`, and the
    /// connection is closed after it.
    First,
    /// Every answer ends the TLS session: a close_notify in the same TCP write, no
    /// `Connection: close`, and the TCP connection stays open, still read (a TLS 1.3
    /// half close, RFC 8446 §6.1).
    HalfCloseEach,
}

/// An HTTPS/1.1 receiver answering 200, closing as `closing` says.
struct TlsReceiver {
    addr: SocketAddr,
    state: Arc<(Mutex<State>, Condvar)>,
}

impl TlsReceiver {
    fn start(pki: &Pki, closing: Closing) -> TlsReceiver {
        let cfg = server_config(pki);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let st = state.clone();
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { return };
                let conn_no = {
                    let mut g = st.0.lock().unwrap();
                    g.connections += 1;
                    g.connections
                };
                let (cfg, st) = (cfg.clone(), st.clone());
                std::thread::spawn(move || {
                    let conn = ServerConnection::new(cfg).unwrap();
                    serve_conn(StreamOwned::new(conn, tcp), conn_no, closing, st);
                });
            }
        });
        TlsReceiver { addr, state }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    fn connections(&self) -> usize {
        self.state.0.lock().unwrap().connections
    }

    fn requests(&self) -> Vec<Got> {
        self.state.0.lock().unwrap().requests.clone()
    }

    /// Waits for `n` requests; panics after `timeout`.
    fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Got> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.state;
        let mut g = lock.lock().unwrap();
        while g.requests.len() < n {
            let now = Instant::now();
            assert!(
                now < deadline,
                "tls receiver: timed out waiting for {n} requests; got {}",
                g.requests.len()
            );
            g = cv.wait_timeout(g, deadline - now).unwrap().0;
        }
        g.requests.clone()
    }
}

fn serve_conn(
    mut s: StreamOwned<ServerConnection, TcpStream>,
    conn_no: usize,
    closing: Closing,
    state: Arc<(Mutex<State>, Condvar)>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let (head_len, id, body_len) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut hs);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let value = |name: &str| {
                        req.headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case(name))
                            .map(|h| String::from_utf8_lossy(h.value).into_owned())
                    };
                    let len = value("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0usize);
                    break (n, value("webhook-id").unwrap_or_default(), len);
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return,
            }
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return, // the client closed (or failed the handshake)
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        while buf.len() < head_len + body_len {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_len + body_len);
        let got = Got {
            webhook_id: id,
            conn: conn_no,
            resumed: s.conn.handshake_kind() == Some(HandshakeKind::Resumed),
            sni: s.conn.server_name().map(str::to_string),
            alpn: s.conn.alpn_protocol().map(<[u8]>::to_vec),
        };
        let first = {
            let (lock, cv) = &*state;
            let mut g = lock.lock().unwrap();
            g.requests.push(got);
            cv.notify_all();
            g.requests.len() == 1
        };
        let close = matches!(closing, Closing::First) && first;
        let answer: &[u8] = if close {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK"
        };
        if let Closing::HalfCloseEach = closing {
            let _ = s.conn.writer().write_all(answer);
            s.conn.send_close_notify();
            let mut out = Vec::new();
            while s.conn.wants_write() {
                if s.conn.write_tls(&mut out).is_err() {
                    return;
                }
            }
            if s.sock.write_all(&out).is_err() {
                return;
            }
            continue;
        }
        if s.write_all(answer).and_then(|()| s.flush()).is_err() {
            return;
        }
        if close {
            s.conn.send_close_notify();
            let _ = s.flush();
            return;
        }
    }
}

fn write_ca(dir: &Path, pki: &Pki) -> String {
    let path = dir.join("ca.pem");
    std::fs::write(&path, &pki.ca_pem).unwrap();
    format!("extra_ca_file = {:?}", path)
}

#[test]
fn https_with_extra_ca_keep_alive_resumption_and_an_untrusted_partner() {
    let trusted = pki("ricochet test ca");
    let stranger = pki("stranger ca");
    let ca_dir = tempfile::tempdir().unwrap();
    let rx = TlsReceiver::start(&trusted, Closing::First);
    let bad = TlsReceiver::start(&stranger, Closing::Never);
    let eps = [
        endpoint("secure", r#"["t"]"#, &rx.url("/hook"), "max_in_flight = 1"),
        endpoint(
            "stranger",
            r#"["u"]"#,
            &bad.url("/hook"),
            r#"retry = ["500ms"]"#,
        ),
    ]
    .join("\n");
    let srv =
        TestServer::start_with(ServerOpts::new(&eps).server(&write_ca(ca_dir.path(), &trusted)));
    let mut c = srv.connect();

    // First delivery: a full handshake; the receiver closes the connection after it.
    assert_eq!(c.send(&event("t", "tls-0", "{}")), "ok tls-0 1");
    srv.wait_event("tls-0", Duration::from_secs(15), |v| {
        states(v) == ["delivered"]
    });
    // The rest share one new connection, which resumes the first session.
    for i in 1..10 {
        let id = format!("tls-{i}");
        assert_eq!(c.send(&event("t", &id, r#"{"n":1}"#)), format!("ok {id} 1"));
    }
    let got = rx.wait_for(10, Duration::from_secs(20));
    let mut ids: Vec<&str> = got.iter().map(|g| g.webhook_id.as_str()).collect();
    ids.sort_unstable();
    let mut want: Vec<String> = (0..10).map(|i| format!("tls-{i}")).collect();
    want.sort_unstable();
    assert_eq!(ids, want);
    assert_eq!(
        rx.connections(),
        2,
        "one connection closed by the receiver, one kept alive for nine requests: {got:?}"
    );
    for g in &got {
        assert_eq!(g.sni.as_deref(), Some("localhost"), "{g:?}");
        assert_eq!(g.alpn.as_deref(), Some(&b"http/1.1"[..]), "{g:?}");
        assert_eq!(
            g.resumed,
            g.conn == 2,
            "resumed exactly on the second connection: {g:?}"
        );
    }
    srv.wait_event("tls-9", Duration::from_secs(10), |v| {
        states(v) == ["delivered"]
    });

    // A certificate from a CA nobody trusts: a failure with its reason, retried, then failed.
    assert_eq!(c.send(&event("u", "tls-bad", "{}")), "ok tls-bad 1");
    let v = srv.wait_event("tls-bad", Duration::from_secs(15), |v| {
        states(v) == ["failed"]
    });
    let attempts = v["deliveries"][0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{v:#}");
    for a in attempts {
        let err = a["error"].as_str().unwrap_or_default();
        assert_eq!(
            err,
            "tls handshake with localhost: invalid peer certificate: UnknownIssuer (no \
             trusted root issued it: for a private CA, add it to extra_ca_file)",
            "{v:#}"
        );
    }
    assert!(
        bad.requests().is_empty(),
        "no request crosses a failed handshake"
    );
    assert_eq!(bad.connections(), 2);
}

/// A receiver that ends the TLS session with each answer (a close_notify in the answer's
/// TCP write, no `Connection: close`) and leaves the TCP connection open, still reading.
/// Nothing was left in the socket to see, so the connection was kept and the next
/// request written on it: the receiver read it, while the client, which ignores what
/// follows a close_notify, met the end of the stream unanswered and sent the request
/// again on a new connection. Each request after the first reached the receiver twice.
#[test]
fn a_session_the_receiver_ended_with_its_answer_is_not_reused() {
    let trusted = pki("ricochet test ca");
    let ca_dir = tempfile::tempdir().unwrap();
    let rx = TlsReceiver::start(&trusted, Closing::HalfCloseEach);
    let opts = ServerOpts::new(&endpoint(
        "half",
        r#"["t"]"#,
        &rx.url("/hook"),
        "max_in_flight = 1",
    ))
    .server(&write_ca(ca_dir.path(), &trusted));
    let srv = TestServer::start_with(opts);
    let mut c = srv.connect();
    for i in 0..3 {
        let id = format!("half-{i}");
        assert_eq!(c.send(&event("t", &id, "{}")), format!("ok {id} 1"));
        srv.wait_event(&id, Duration::from_secs(15), |v| states(v) == ["delivered"]);
    }
    // Each request is recorded before it is answered, so all of them are in by now.
    let got = rx.requests();
    let seen: Vec<(&str, usize)> = got
        .iter()
        .map(|g| (g.webhook_id.as_str(), g.conn))
        .collect();
    assert_eq!(
        seen,
        [("half-0", 1), ("half-1", 2), ("half-2", 3)],
        "{got:?}"
    );
}

#[test]
fn an_unusable_extra_ca_file_stops_the_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad_ca = dir.path().join("not-a-ca.pem");
    std::fs::write(&bad_ca, "this is not PEM\n").unwrap();
    for (ca, expect) in [
        (bad_ca.clone(), "holds no CERTIFICATE"),
        (dir.path().join("missing.pem"), "cannot read"),
    ] {
        let config = dir.path().join("ricochet.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\ndata_dir = {:?}\nsocket = {:?}\nadmin = \"127.0.0.1:0\"\nextra_ca_file = {:?}\n",
                dir.path().join("data"),
                dir.path().join("ricochet.sock"),
                ca
            ),
        )
        .unwrap();
        let out = Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .output()
            .expect("run ricochet");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started with {ca:?}: {stderr}");
        assert!(
            stderr.contains(&ca.display().to_string()) && stderr.contains(expect),
            "{stderr}"
        );
        // Located in the file, as `check` says it.
        let at = format!("{}:5:17: server: field `extra_ca_file`", config.display());
        assert!(stderr.contains(&at), "{stderr}");
    }
}

/// Reads one request (head and `Content-Length` body) from `s` into `buf`, dropping it;
/// false at the end of the connection.
fn read_request(s: &mut impl Read, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut hs);
        if let Ok(httparse::Status::Complete(n)) = req.parse(buf) {
            let len: usize = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                .unwrap_or(0);
            if buf.len() >= n + len {
                buf.drain(..n + len);
                return true;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A receiver that answers its second request twice, both answers in one TCP write of
/// two TLS records, the first just short of 4 KiB. rustls takes ciphertext 4 KiB at a
/// time, so once the first answer was decrypted and parsed the second's record was
/// still in the connection's read buffer, not counted as bytes after the response: the
/// connection was kept, and the next request, sent at once, read the stray answer as
/// its own (recorded `200`, `STRAY`, delivered, whatever the receiver answered it).
/// Plain HTTP saw such bytes already; over TLS they now count too.
#[test]
fn a_second_answer_in_the_same_tls_read_is_never_the_next_requests_answer() {
    let pki = pki("ricochet test ca");
    let cfg = server_config(&pki);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for (conn_no, tcp) in listener.incoming().enumerate() {
            let Ok(tcp) = tcp else { return };
            let cfg = cfg.clone();
            std::thread::spawn(move || {
                let mut s = StreamOwned::new(ServerConnection::new(cfg).unwrap(), tcp);
                let mut buf = Vec::new();
                let mut served = 0;
                while read_request(&mut s, &mut buf) {
                    served += 1;
                    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK";
                    if conn_no > 0 || served != 2 {
                        // (A third request on the first connection reads the stray.)
                        if s.write_all(ok).and_then(|()| s.flush()).is_err() {
                            return;
                        }
                        continue;
                    }
                    // A record of 3,963 bytes (3,941 of plaintext), then one of 1,062.
                    let body = "x".repeat(3900);
                    let first = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let stray = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nSTRAY{}",
                        " ".repeat(995)
                    );
                    s.conn.writer().write_all(first.as_bytes()).unwrap();
                    s.conn.writer().write_all(stray.as_bytes()).unwrap();
                    let mut out = Vec::new();
                    while s.conn.wants_write() {
                        s.conn.write_tls(&mut out).unwrap();
                    }
                    if s.sock.write_all(&out).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let ca_dir = tempfile::tempdir().unwrap();
    let url = format!("https://localhost:{}/twice", addr.port());
    let opts = ServerOpts::new(&endpoint(
        "twice",
        r#"["t"]"#,
        &url,
        "max_in_flight = 1\nretry = \"none\"",
    ))
    .server(&write_ca(ca_dir.path(), &pki));
    let srv = TestServer::start_with(opts);
    let mut c = srv.connect();
    // The first request takes the handshake and its session tickets out of the way.
    assert_eq!(c.send(&event("t", "tw-1", "{}")), "ok tw-1 1");
    srv.wait_event("tw-1", Duration::from_secs(15), |v| {
        states(v) == ["delivered"]
    });
    // The third goes right behind the second, on the kept connection if it is kept.
    assert_eq!(c.send(&event("t", "tw-2", "{}")), "ok tw-2 1");
    assert_eq!(c.send(&event("t", "tw-3", "{}")), "ok tw-3 1");
    for (id, excerpt) in [("tw-2", "xxxx"), ("tw-3", "OK")] {
        let v = srv.wait_event(id, Duration::from_secs(15), |v| {
            states(v) == ["delivered"] || states(v) == ["failed"]
        });
        let a = &v["deliveries"][0]["attempts"][0];
        assert_eq!(a["status_code"], 200, "{id}: {a}");
        let got = a["response_excerpt"].as_str().unwrap_or_default();
        assert!(got.starts_with(excerpt), "{id}: {a}");
    }
}
