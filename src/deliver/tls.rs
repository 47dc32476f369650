//! TLS for `https://` endpoints: the process-wide rustls client configuration and
//! [`TlsStream`], a client TLS connection over monoio's owned-buffer TCP I/O.
//!
//! Owns:
//! - Trust: the system's roots (`rustls-native-certs`: the OS store, or the file/dir named
//!   by `SSL_CERT_FILE`/`SSL_CERT_DIR`) plus every certificate in `extra_ca_file` (PEM).
//!   A missing, unreadable or invalid `extra_ca_file` fails [`init`] with its name.
//! - Crypto: rustls with the `ring` provider; TLS 1.2 and 1.3; ALPN `http/1.1`.
//! - SNI: the URL's host name. For an IP literal no SNI is sent and the certificate must
//!   name the IP.
//! - Session resumption: rustls' default in-memory client session cache (256 server
//!   names, shared by every worker; TLS 1.3 tickets and TLS 1.2 sessions), kept on, so a
//!   fresh connection to a partner seen before skips the full handshake.
//! - The stream: rustls' `ClientConnection` driven by hand. Ciphertext is read into and
//!   written from owned `Vec`s (what io_uring needs), plaintext is appended straight to
//!   the caller's buffer.
//!
//! It must not pool connections (that is [`super::ConnSlot`]'s job, keyed by scheme, SNI
//! name and address) or decide retries: a failed handshake, including a certificate that
//! does not verify, is an error string the worker records like any network failure.

use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

/// Room for one full TLS record (16 KiB of payload plus header and tag) per socket read.
const CIPHERTEXT_BUF: usize = 18 * 1024;

static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();

/// Why the TLS client configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsInitError {
    #[error("cannot read extra_ca_file {path}: {error}")]
    Read { path: PathBuf, error: io::Error },
    #[error("extra_ca_file {path} is not valid PEM: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("extra_ca_file {path} holds no CERTIFICATE block")]
    NoCertificate { path: PathBuf },
    #[error("extra_ca_file {path}: certificate {index} is not a usable trust anchor: {reason}")]
    BadCertificate {
        path: PathBuf,
        index: usize,
        reason: String,
    },
    #[error("the TLS crypto provider refused the protocol versions: {0}")]
    Provider(rustls::Error),
    #[error("TLS is already initialised")]
    AlreadyInitialised,
}

/// Builds the process-wide TLS client configuration. Called once at start.
pub fn init(extra_ca_file: Option<&Path>) -> anyhow::Result<()> {
    let config = Arc::new(client_config(extra_ca_file)?);
    CONFIG
        .set(config)
        .map_err(|_| TlsInitError::AlreadyInitialised)?;
    Ok(())
}

/// The process-wide configuration; system roots only when [`init`] was never called.
pub fn config() -> &'static Arc<ClientConfig> {
    CONFIG.get_or_init(|| {
        Arc::new(client_config(None).expect("a configuration without extra_ca_file builds"))
    })
}

/// A client configuration trusting the system roots plus `extra_ca_file`.
fn client_config(extra_ca_file: Option<&Path>) -> Result<ClientConfig, TlsInitError> {
    let mut roots = RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    for e in &system.errors {
        tracing::warn!(error = %e, "skipping part of the system trust store");
    }
    let (system_roots, unusable) = roots.add_parsable_certificates(system.certs);
    let extra_roots = match extra_ca_file {
        Some(path) => add_ca_file(&mut roots, path)?,
        None => 0,
    };
    if roots.is_empty() {
        tracing::warn!("no TLS trust roots: every https delivery will fail certificate checks");
    }
    tracing::info!(
        system_roots,
        unusable,
        extra_roots,
        "TLS trust roots loaded"
    );
    with_roots(roots)
}

/// A client configuration trusting exactly `roots`.
fn with_roots(roots: RootCertStore) -> Result<ClientConfig, TlsInitError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsInitError::Provider)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    // `cfg.resumption` stays rustls' default: an in-memory session cache, tickets on.
    Ok(cfg)
}

/// Reads the PEM file at `path` as [`init`] would; returns how many certificates it
/// holds.
pub fn check_ca_file(path: &Path) -> Result<usize, TlsInitError> {
    add_ca_file(&mut RootCertStore::empty(), path)
}

/// Adds every certificate in the PEM file at `path`; returns how many.
fn add_ca_file(roots: &mut RootCertStore, path: &Path) -> Result<usize, TlsInitError> {
    let pem = std::fs::read(path).map_err(|error| TlsInitError::Read {
        path: path.to_owned(),
        error,
    })?;
    add_ca_pem(roots, &pem).map_err(|e| match e {
        CaPemError::Pem(reason) => TlsInitError::Pem {
            path: path.to_owned(),
            reason,
        },
        CaPemError::Empty => TlsInitError::NoCertificate {
            path: path.to_owned(),
        },
        CaPemError::Bad { index, reason } => TlsInitError::BadCertificate {
            path: path.to_owned(),
            index,
            reason,
        },
    })
}

#[derive(Debug, PartialEq, Eq)]
enum CaPemError {
    Pem(String),
    Empty,
    /// `index` counts from 1.
    Bad {
        index: usize,
        reason: String,
    },
}

fn add_ca_pem(roots: &mut RootCertStore, pem: &[u8]) -> Result<usize, CaPemError> {
    // A UTF-8 byte order mark, as some Windows editors save a file, hides the first
    // `-----BEGIN` line from the PEM reader (OpenSSL reads past it).
    let pem = pem.strip_prefix(b"\xef\xbb\xbf").unwrap_or(pem);
    let mut n = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| CaPemError::Pem(e.to_string()))?;
        n += 1;
        roots.add(cert).map_err(|e| CaPemError::Bad {
            index: n,
            reason: e.to_string(),
        })?;
    }
    if n == 0 {
        return Err(CaPemError::Empty);
    }
    Ok(n)
}

/// A client TLS connection on a TCP stream.
pub struct TlsStream {
    tcp: TcpStream,
    tls: ClientConnection,
    /// Ciphertext read from the socket; `rpos..` is not yet handed to rustls.
    rbuf: Vec<u8>,
    rpos: usize,
    /// Ciphertext on its way to the socket.
    wbuf: Vec<u8>,
    /// The socket reached end of file (rustls has been told).
    eof: bool,
    /// The server sent close_notify: it sends nothing more on this session. In TLS 1.3
    /// it may still read (a half close, RFC 8446 §6.1), so a request written now could
    /// be taken while its answer, if any, is ignored: the connection is done.
    peer_closed: bool,
}

/// A plain-words hint after a TLS error whose own text is terse: a handshake's, or a
/// read's (a TLS 1.3 receiver refuses the client's certificate after the handshake).
pub(super) fn hint(e: &io::Error) -> &'static str {
    use rustls::{AlertDescription, CertificateError, Error};
    match e.get_ref().and_then(|e| e.downcast_ref::<Error>()) {
        Some(Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
            " (no trusted root issued it: for a private CA, add it to extra_ca_file)"
        }
        // webpki's name for a certificate with `CA:TRUE` presented as the server's own,
        // as `openssl req -x509` makes by default.
        Some(Error::InvalidCertificate(CertificateError::Other(o)))
            if o.to_string().contains("CaUsedAsEndEntity") =>
        {
            " (the server presents a CA certificate as its own: it needs a leaf certificate \
             (CA:FALSE) issued by a CA, and that CA in extra_ca_file, or a self-signed \
             leaf in extra_ca_file itself)"
        }
        Some(Error::AlertReceived(AlertDescription::CertificateRequired)) => {
            " (the receiver wants a client certificate, mutual TLS, which ricochet does not \
             send)"
        }
        Some(Error::AlertReceived(
            AlertDescription::HandshakeFailure
            | AlertDescription::ProtocolVersion
            | AlertDescription::InsufficientSecurity,
        )) => {
            " (the receiver refused the handshake: it may speak only TLS versions or cipher \
             suites ricochet does not, which are TLS 1.2 and 1.3 with forward-secret suites, \
             or want a client certificate)"
        }
        // What came back is no TLS record: a plain-HTTP answer, say.
        Some(Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)) => {
            " (the receiver does not speak TLS on this port: plain HTTP? check the URL's \
             scheme and port)"
        }
        _ => "",
    }
}

impl TlsStream {
    /// Runs the handshake with `host` (SNI and certificate name) on `tcp`. The error is
    /// the reason an attempt records, e.g.
    /// `tls handshake with partner.example: invalid peer certificate: UnknownIssuer`.
    pub async fn connect(
        config: Arc<ClientConfig>,
        tcp: TcpStream,
        host: &str,
    ) -> Result<TlsStream, String> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| format!("tls: {host:?} is not a valid server name: {e}"))?;
        let tls = ClientConnection::new(config, name)
            .map_err(|e| format!("tls setup for {host}: {e}"))?;
        let mut s = TlsStream {
            tcp,
            tls,
            rbuf: Vec::with_capacity(CIPHERTEXT_BUF),
            rpos: 0,
            wbuf: Vec::with_capacity(4 * 1024),
            eof: false,
            peer_closed: false,
        };
        match s.handshake().await {
            Ok(()) => Ok(s),
            Err(e) => {
                // Tell the server why (rustls queued an alert), as far as the socket allows.
                let _ = s.flush().await;
                Err(format!("tls handshake with {host}: {e}{}", hint(&e)))
            }
        }
    }

    /// The protocol the server chose by ALPN.
    #[cfg(test)]
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.tls.alpn_protocol()
    }

    /// The TCP stream under the session.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Whether the server sent more than the session has consumed, or ended it:
    /// ciphertext read but not yet handed to rustls, the socket's end, or a close_notify
    /// (which may come with a response's last record and no TCP close behind it, so
    /// nothing is left in the socket to see).
    pub fn has_unread(&self) -> bool {
        self.rpos < self.rbuf.len() || self.eof || self.peer_closed
    }

    async fn handshake(&mut self) -> io::Result<()> {
        while self.tls.is_handshaking() {
            if self.tls.wants_write() {
                self.flush().await?;
                continue;
            }
            if !self.feed().await? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed during the handshake",
                ));
            }
        }
        // The client's last flight (if any) leaves with the first request.
        Ok(())
    }

    /// Encrypts and sends all of `buf`. `buf` is handed back.
    pub async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let mut off = 0;
        loop {
            // rustls takes what fits under its buffer limit; the flush makes room.
            match self.tls.writer().write(&buf[off..]) {
                Ok(n) => off += n,
                Err(e) => return (Err(e), buf),
            }
            if let Err(e) = self.flush().await {
                return (Err(e), buf);
            }
            if off == buf.len() {
                return (Ok(()), buf);
            }
        }
    }

    /// Appends the plaintext available next to `buf`, reading the socket when none is.
    /// `Ok(0)` is end of stream: a close_notify, or the peer closing TCP without one
    /// (common among HTTPS servers; the HTTP framing decides whether the response was
    /// complete).
    pub async fn read_append(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        loop {
            let mut total = 0;
            let mut reader = self.tls.reader();
            loop {
                match reader.fill_buf() {
                    Ok([]) => return Ok(total),
                    Ok(chunk) => {
                        let n = chunk.len();
                        buf.extend_from_slice(chunk);
                        reader.consume(n);
                        total += n;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(total),
                    Err(e) => return Err(e),
                }
            }
            if total > 0 {
                return Ok(total);
            }
            if self.eof {
                return Ok(0);
            }
            if self.tls.wants_write() {
                self.flush().await?; // e.g. a key update answer
            }
            self.feed().await?;
        }
    }

    /// Hands rustls buffered ciphertext, or else one socket read's worth, and processes
    /// it. `Ok(false)` when the socket is at end of file.
    async fn feed(&mut self) -> io::Result<bool> {
        if self.rpos == self.rbuf.len() {
            if self.eof {
                return Ok(false);
            }
            let mut b = std::mem::take(&mut self.rbuf);
            b.clear();
            if b.capacity() < CIPHERTEXT_BUF {
                b.reserve(CIPHERTEXT_BUF);
            }
            let (res, b) = self.tcp.read(b).await;
            self.rbuf = b;
            self.rpos = 0;
            if res? == 0 {
                self.eof = true;
                self.tls.read_tls(&mut &[][..])?;
                self.process()?;
                return Ok(false);
            }
        }
        let mut rd = &self.rbuf[self.rpos..];
        let n = self.tls.read_tls(&mut rd)?;
        self.rpos += n;
        self.process()?;
        Ok(true)
    }

    fn process(&mut self) -> io::Result<()> {
        let state = self
            .tls
            .process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        self.peer_closed |= state.peer_has_closed();
        Ok(())
    }

    /// Sends every TLS record rustls has queued.
    async fn flush(&mut self) -> io::Result<()> {
        let mut b = std::mem::take(&mut self.wbuf);
        b.clear();
        while self.tls.wants_write() {
            if let Err(e) = self.tls.write_tls(&mut b) {
                self.wbuf = b;
                return Err(e);
            }
        }
        if b.is_empty() {
            self.wbuf = b;
            return Ok(());
        }
        let (res, b) = self.tcp.write_all(b).await;
        self.wbuf = b;
        res.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem(name: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn ca_pem_adds_every_certificate() {
        let pem = format!("{}\n{}", ca_pem("one"), ca_pem("two"));
        let mut roots = RootCertStore::empty();
        assert_eq!(add_ca_pem(&mut roots, pem.as_bytes()), Ok(2));
        assert_eq!(roots.len(), 2);
    }

    #[test]
    fn ca_pem_saved_with_a_byte_order_mark_is_read() {
        let pem = format!("\u{feff}{}", ca_pem("one"));
        let mut roots = RootCertStore::empty();
        assert_eq!(add_ca_pem(&mut roots, pem.as_bytes()), Ok(1));
        assert_eq!(roots.len(), 1);
    }

    #[test]
    fn ca_pem_without_certificates_is_an_error() {
        let mut roots = RootCertStore::empty();
        assert_eq!(add_ca_pem(&mut roots, b""), Err(CaPemError::Empty));
        assert_eq!(
            add_ca_pem(&mut roots, b"just some text\n"),
            Err(CaPemError::Empty)
        );
    }

    #[test]
    fn ca_pem_with_a_broken_block_is_an_error() {
        let mut roots = RootCertStore::empty();
        let broken = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            add_ca_pem(&mut roots, broken),
            Err(CaPemError::Pem(_))
        ));
        let not_der = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            add_ca_pem(&mut roots, not_der),
            Err(CaPemError::Bad { index: 1, .. })
        ));
    }

    /// A CA named `ca_name` and a leaf for `localhost` and 127.0.0.1 that it signed.
    struct Pki {
        ca: rcgen::Certificate,
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
        let ca = params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        let leaf = params.signed_by(&key, &ca, &ca_key).unwrap();
        Pki {
            ca,
            leaf: leaf.der().clone(),
            leaf_key: key.serialize_der(),
        }
    }

    type ServerStream = rustls::StreamOwned<rustls::ServerConnection, std::net::TcpStream>;

    /// A one-connection TLS server on 127.0.0.1 running `serve` in a thread.
    fn server(
        pki: &Pki,
        serve: impl FnOnce(ServerStream) + Send + 'static,
    ) -> std::net::SocketAddr {
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(pki.leaf_key.clone().into());
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![pki.leaf.clone()], key)
        .unwrap();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let cfg = Arc::new(cfg);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let conn = rustls::ServerConnection::new(cfg).unwrap();
            serve(rustls::StreamOwned::new(conn, tcp));
        });
        addr
    }

    fn trusting(ca: &rcgen::Certificate) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        Arc::new(with_roots(roots).unwrap())
    }

    fn block_on<F: std::future::Future>(fut: F) -> F::Output {
        let driver = crate::runtime::choose(crate::config::Driver::Auto).unwrap();
        crate::runtime::block_on(driver, fut).unwrap()
    }

    #[test]
    fn large_request_and_response_round_trip() {
        const N: usize = 300_000; // over rustls' buffer limits and many records
        let pki = pki("test ca");
        let addr = server(&pki, |mut s| {
            let mut got = vec![0u8; N];
            std::io::Read::read_exact(&mut s, &mut got).unwrap();
            got.reverse();
            s.write_all(&got).unwrap();
            s.conn.send_close_notify();
            s.flush().unwrap();
        });
        let config = trusting(&pki.ca);
        let (sent, got, alpn) = block_on(async move {
            let tcp = TcpStream::connect_addr(addr).await.unwrap();
            let mut s = TlsStream::connect(config, tcp, "localhost").await.unwrap();
            let alpn = s.alpn_protocol().map(<[u8]>::to_vec);
            let req: Vec<u8> = (0..N).map(|i| (i % 251) as u8).collect();
            let (res, req) = s.write_all(req).await;
            res.unwrap();
            let mut got = Vec::new();
            while s.read_append(&mut got).await.unwrap() > 0 {}
            (req, got, alpn)
        });
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        assert_eq!(got.len(), N);
        assert!(got.iter().rev().eq(sent.iter()));
    }

    #[test]
    fn close_without_close_notify_reads_as_end() {
        let pki = pki("test ca");
        let addr = server(&pki, |mut s| {
            let mut ping = [0u8; 4];
            std::io::Read::read_exact(&mut s, &mut ping).unwrap();
            s.write_all(b"pong").unwrap();
            s.flush().unwrap();
            // Dropped: TCP FIN, no close_notify.
        });
        let config = trusting(&pki.ca);
        let got = block_on(async move {
            let tcp = TcpStream::connect_addr(addr).await.unwrap();
            let mut s = TlsStream::connect(config, tcp, "127.0.0.1").await.unwrap();
            s.write_all(b"ping".to_vec()).await.0.unwrap();
            let mut got = Vec::new();
            while s.read_append(&mut got).await.unwrap() > 0 {}
            got
        });
        assert_eq!(got, b"pong");
    }

    /// A close_notify with the answer's last record and the TCP connection left open (a
    /// half close): nothing is left in the socket to see, yet the session is over, so the
    /// connection is not reused (a request written on it could be read by the server,
    /// then never answered, and sent again on a new connection).
    #[test]
    fn a_close_notify_with_the_answer_ends_the_session_though_tcp_stays_open() {
        let pki = pki("test ca");
        let addr = server(&pki, |mut s| {
            let mut ping = [0u8; 4];
            std::io::Read::read_exact(&mut s, &mut ping).unwrap();
            // The answer and the close_notify in one TCP write.
            s.conn.writer().write_all(b"pong").unwrap();
            s.conn.send_close_notify();
            let mut out = Vec::new();
            while s.conn.wants_write() {
                s.conn.write_tls(&mut out).unwrap();
            }
            s.sock.write_all(&out).unwrap();
            // The TCP connection stays open until the client goes.
            let _ = std::io::Read::read(&mut s.sock, &mut [0u8; 1]);
        });
        let config = trusting(&pki.ca);
        let (got, ended) = block_on(async move {
            let tcp = TcpStream::connect_addr(addr).await.unwrap();
            let mut s = TlsStream::connect(config, tcp, "localhost").await.unwrap();
            s.write_all(b"ping".to_vec()).await.0.unwrap();
            let mut got = Vec::new();
            while got.len() < 4 {
                assert!(s.read_append(&mut got).await.unwrap() > 0, "{got:?}");
            }
            (got, s.has_unread())
        });
        assert_eq!(got, b"pong");
        assert!(ended, "the session ended with the answer");
    }

    /// The error of a handshake with `host` against a server presenting `served`'s
    /// leaf, trusting `trusted` only.
    fn handshake_error(served: &Pki, trusted: &rcgen::Certificate, host: &'static str) -> String {
        let addr = server(served, |mut s| {
            let _ = std::io::Read::read(&mut s, &mut [0u8; 1]);
        });
        let config = trusting(trusted);
        block_on(async move {
            let tcp = TcpStream::connect_addr(addr).await.unwrap();
            TlsStream::connect(config, tcp, host).await.err()
        })
        .expect("the handshake fails")
    }

    #[test]
    fn untrusted_certificate_fails_the_handshake_with_its_reason() {
        let pki_a = pki("partner ca");
        let other = pki("our ca");
        assert_eq!(
            handshake_error(&pki_a, &other.ca, "localhost"),
            "tls handshake with localhost: invalid peer certificate: UnknownIssuer (no \
             trusted root issued it: for a private CA, add it to extra_ca_file)"
        );
    }

    /// What `openssl req -x509` makes by default: a self-signed certificate with
    /// `CA:TRUE`, served as the server's own. Trusted or not, webpki refuses it; the
    /// error says what to do.
    #[test]
    fn a_ca_certificate_served_as_the_server_s_own_is_explained() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let pki = Pki {
            leaf: ca.der().clone(),
            leaf_key: key.serialize_der(),
            ca,
        };
        let err = handshake_error(&pki, &pki.ca, "localhost");
        assert!(err.contains("CaUsedAsEndEntity"), "{err}");
        assert!(err.ends_with("it needs a leaf certificate (CA:FALSE) issued by a CA, and that CA in extra_ca_file, or a self-signed leaf in extra_ca_file itself)"), "{err}");
    }

    /// An `https://` URL to a plain-HTTP port: the answer is no TLS record, and the error
    /// says what that likely means.
    #[test]
    fn a_plain_http_answer_to_the_handshake_is_explained() {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        });
        let config = trusting(&pki("test ca").ca);
        let err = block_on(async move {
            let tcp = TcpStream::connect_addr(addr).await.unwrap();
            TlsStream::connect(config, tcp, "localhost").await.err()
        })
        .expect("the handshake fails");
        assert!(err.contains("InvalidContentType"), "{err}");
        assert!(
            err.ends_with("plain HTTP? check the URL's scheme and port)"),
            "{err}"
        );
    }

    /// A receiver that answers the ClientHello with a fatal alert: the error says what
    /// the terse alert names likely mean.
    #[test]
    fn refusing_alerts_are_explained() {
        use std::io::Read;
        for (alert, name, says) in [
            (
                40u8,
                "HandshakeFailure",
                "TLS 1.2 and 1.3 with forward-secret suites",
            ),
            (
                70,
                "ProtocolVersion",
                "TLS 1.2 and 1.3 with forward-secret suites",
            ),
            (
                116,
                "CertificateRequired",
                "wants a client certificate, mutual TLS",
            ),
        ] {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            std::thread::spawn(move || {
                let (mut s, _) = l.accept().unwrap();
                let _ = s.read(&mut [0u8; 4096]);
                let _ = s.write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, alert]);
                let _ = s.read(&mut [0u8; 64]);
            });
            let config = trusting(&pki("test ca").ca);
            let err = block_on(async move {
                let tcp = TcpStream::connect_addr(addr).await.unwrap();
                TlsStream::connect(config, tcp, "localhost").await.err()
            })
            .expect("the handshake fails");
            assert!(
                err.contains(&format!("received fatal alert: {name} (")),
                "{err}"
            );
            assert!(err.contains(says), "{err}");
        }
    }

    #[test]
    fn wrong_name_fails_the_handshake_with_its_reason() {
        let pki = pki("test ca");
        let err = handshake_error(&pki, &pki.ca, "partner.example");
        assert!(
            err.starts_with("tls handshake with partner.example: invalid peer certificate: certificate not valid for name"),
            "{err}"
        );
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = client_config(Some(&missing)).unwrap_err().to_string();
        assert!(e.contains("missing.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = client_config(Some(&empty)).unwrap_err().to_string();
        assert!(
            e.contains("empty.pem") && e.contains("no CERTIFICATE"),
            "{e}"
        );
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, ca_pem("test ca")).unwrap();
        let cfg = client_config(Some(&good)).unwrap();
        assert_eq!(cfg.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }
}
