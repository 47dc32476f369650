//! TLS for the sink: a throwaway PKI made at start and rustls driven by hand over the
//! sink's monoio connections.
//!
//! - [`SinkTls::generate`]: a self-signed CA and a leaf for `localhost` and 127.0.0.1
//!   signed by it (ECDSA P-256, rcgen with ring). `run` writes the CA PEM into the run's
//!   temp dir and names it in ricochet's `[server] extra_ca_file`.
//! - [`TlsConn`]: a `rustls::ServerConnection` over a monoio `TcpStream`. Ciphertext is
//!   read into and written from owned `Vec`s (what io_uring wants) and fed through
//!   `read_tls`/`process_new_packets`/`write_tls`; plaintext is appended to the sink's
//!   request buffer. The handshake runs lazily inside the first read. TLS 1.2 and 1.3,
//!   ALPN `http/1.1`, rustls' default server session cache (resumption by session id).
//! - [`client_config`]: a client trusting only a given CA (tests and `fake-ricochet`).

use std::io::{self, BufRead, Write};
use std::sync::Arc;

use anyhow::{Context, Result};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig, ServerConnection};

use crate::sink::SinkStream;

/// One full TLS record (16 KiB plus header and tag) per socket read.
const CIPHERTEXT_BUF: usize = 18 * 1024;

/// The sink's certificate material.
#[derive(Clone)]
pub struct SinkTls {
    pub server: Arc<ServerConfig>,
    /// The CA certificate (PEM) a client must trust.
    pub ca_pem: String,
}

impl std::fmt::Debug for SinkTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SinkTls { localhost, 127.0.0.1 }")
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl SinkTls {
    /// A fresh CA and a `localhost`/127.0.0.1 leaf, and a server config serving it.
    pub fn generate() -> Result<SinkTls> {
        let ca_key = rcgen::KeyPair::generate().context("generating the CA key")?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ricochet-load sink CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = params.self_signed(&ca_key).context("self-signing the CA")?;
        let key = rcgen::KeyPair::generate().context("generating the sink key")?;
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = params
            .signed_by(&key, &ca, &ca_key)
            .context("signing the sink certificate")?;
        let chain = vec![leaf.der().clone(), ca.der().clone()];
        let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .context("the sink's TLS certificate")?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(SinkTls {
            server: Arc::new(cfg),
            ca_pem: ca.pem(),
        })
    }
}

/// A client trusting exactly the certificates in `ca_pem`.
pub fn client_config(ca_pem: &[u8]) -> Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(cert.context("CA PEM")?)
            .context("CA certificate")?;
    }
    if roots.is_empty() {
        anyhow::bail!("no CERTIFICATE in the CA PEM");
    }
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// A server-side TLS connection on a monoio TCP stream.
pub struct TlsConn {
    tcp: TcpStream,
    tls: ServerConnection,
    /// Ciphertext read from the socket; `rpos..` not yet handed to rustls.
    rbuf: Vec<u8>,
    rpos: usize,
    /// Ciphertext on its way out.
    wbuf: Vec<u8>,
    /// The socket reached end of file (rustls has been told).
    eof: bool,
    /// Called once when the handshake completes.
    on_handshake: Option<Box<dyn FnOnce()>>,
    /// rustls rejected what the peer sent (bad handshake, bad record, alert).
    pub failed: bool,
}

impl TlsConn {
    pub fn new(
        tcp: TcpStream,
        config: Arc<ServerConfig>,
        on_handshake: Box<dyn FnOnce()>,
    ) -> io::Result<TlsConn> {
        let tls = ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(TlsConn {
            tcp,
            tls,
            rbuf: Vec::with_capacity(CIPHERTEXT_BUF),
            rpos: 0,
            wbuf: Vec::with_capacity(4 << 10),
            eof: false,
            on_handshake: Some(on_handshake),
            failed: false,
        })
    }

    /// Hands rustls buffered ciphertext, or else one socket read's worth, and processes
    /// it. `Ok(false)` at end of file.
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
                self.process().await?;
                return Ok(false);
            }
        }
        let mut rd = &self.rbuf[self.rpos..];
        let n = self.tls.read_tls(&mut rd)?;
        self.rpos += n;
        self.process().await?;
        Ok(true)
    }

    async fn process(&mut self) -> io::Result<()> {
        match self.tls.process_new_packets() {
            Ok(_) => {
                if !self.tls.is_handshaking() {
                    if let Some(f) = self.on_handshake.take() {
                        f();
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.failed = true;
                // rustls queued an alert saying why; send it if the socket lets us.
                let _ = self.flush().await;
                Err(io::Error::new(io::ErrorKind::InvalidData, e))
            }
        }
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

    async fn read_plain(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
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
                // Handshake flights, session tickets, key update answers.
                self.flush().await?;
            }
            self.feed().await?;
        }
    }
}

impl SinkStream for TlsConn {
    async fn recv_append(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let res = self.read_plain(&mut buf).await;
        (res, buf)
    }

    async fn send_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
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

    fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    async fn close(&mut self) {
        self.tls.send_close_notify();
        let _ = self.flush().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_chain_verifies_for_localhost_and_the_ip() {
        let t = SinkTls::generate().unwrap();
        let client = Arc::new(client_config(t.ca_pem.as_bytes()).unwrap());
        for name in ["localhost", "127.0.0.1"] {
            let mut c = rustls::ClientConnection::new(
                client.clone(),
                rustls::pki_types::ServerName::try_from(name).unwrap(),
            )
            .unwrap();
            let mut s = ServerConnection::new(t.server.clone()).unwrap();
            // Shuttle records in memory until both sides are done.
            for _ in 0..10 {
                let mut b = Vec::new();
                while c.wants_write() {
                    c.write_tls(&mut b).unwrap();
                }
                s.read_tls(&mut &b[..]).unwrap();
                s.process_new_packets().unwrap();
                let mut b = Vec::new();
                while s.wants_write() {
                    s.write_tls(&mut b).unwrap();
                }
                c.read_tls(&mut &b[..]).unwrap();
                c.process_new_packets().unwrap();
            }
            assert!(!c.is_handshaking() && !s.is_handshaking(), "{name}");
            assert_eq!(c.alpn_protocol(), Some(&b"http/1.1"[..]));
        }
        assert!(client_config(b"nothing").is_err());
    }
}
