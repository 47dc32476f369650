//! HTTP/1.1 wire format for outgoing postbacks: the request-head writer, the
//! `http://` / `https://` URL parser that feeds it, and an incremental response parser.
//!
//! Owns: the exact bytes ricochet writes for a request head, the decision where a response
//! ends (status line and headers via `httparse`; body framed by `Content-Length`,
//! `Transfer-Encoding: chunked` or connection close; `1xx` skipped; no body for `HEAD`,
//! `204` and `304`, and no reuse after a `204` or `304` that announces one), whether the
//! connection may be reused, `Retry-After`, and the body excerpt (the first
//! `excerpt_limit` decoded bytes; the rest is counted and dropped).
//!
//! Must not: do I/O, look at the clock, allocate per request once its buffers have grown
//! (the writer appends to the caller's buffer; the parser keeps its head and excerpt
//! buffers across [`ResponseParser::reset`]), add headers the caller did not ask for,
//! follow redirects or judge outcomes (a `3xx` or `5xx` is a response like any other).
//! Resolving hosts, pooling, TLS and the SSRF guard live elsewhere in `deliver`.

use std::mem::MaybeUninit;
use std::net::Ipv6Addr;
use std::time::{Duration, SystemTime};

use rustls::pki_types::ServerName;

/// Largest response head (status line + headers + blank line) accepted, in bytes.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Response headers read into a stack array; a head with more is parsed again into a
/// heap one (its size limit bounds how many it can have).
const MAX_HEADERS: usize = 64;
/// Longest chunk-size line (digits + extensions) accepted, in bytes.
const MAX_CHUNK_LINE: u32 = 4 * 1024;

// ---------------------------------------------------------------------------------------
// Request head writer
// ---------------------------------------------------------------------------------------

/// Appends a request head to `buf`:
/// `METHOD target HTTP/1.1\r\nHost: host\r\n`, each `(name, value)` as `name: value\r\n`,
/// `Content-Length: n\r\n` when `body_len` is `Some`, then `\r\n`.
///
/// Writes nothing else: no implicit headers. `host` is the `Host` header value, port
/// included when it is not the scheme's default ([`Target::host_header`]).
///
/// The caller validates `method`, `target` and header names once (config load checks
/// header names, [`parse_url`] the target); a debug build asserts that the method and
/// header names are tokens ([`is_token`]). Header values usually come from templates,
/// so a CR, LF or NUL in a value is written as a space: no data can split the request
/// (RFC 9110 §5.5).
/// An empty `target` is written as `/`.
pub fn write_request_head(
    buf: &mut Vec<u8>,
    method: &str,
    target: &[u8],
    host: &[u8],
    headers: &[(&[u8], &[u8])],
    body_len: Option<usize>,
) {
    let mut need = method.len() + target.len() + host.len() + 64;
    for (name, value) in headers {
        need += name.len() + value.len() + 4;
    }
    buf.reserve(need);
    write_request_head_iter(buf, method, target, host, headers.iter().copied(), body_len);
}

/// [`write_request_head`] taking the header pairs from an iterator, so a caller can
/// chain fixed and rendered headers without building a slice first. Reserves nothing up
/// front; a reused `buf` has grown to size after the first few requests.
pub fn write_request_head_iter<'h, I>(
    buf: &mut Vec<u8>,
    method: &str,
    target: &[u8],
    host: &[u8],
    headers: I,
    body_len: Option<usize>,
) where
    I: IntoIterator<Item = (&'h [u8], &'h [u8])>,
{
    debug_assert!(is_token(method.as_bytes()), "invalid method {method:?}");
    debug_assert!(
        !target.iter().any(|&b| b <= b' ' || b == 0x7f),
        "request target contains whitespace or control bytes"
    );
    buf.extend_from_slice(method.as_bytes());
    buf.push(b' ');
    if target.is_empty() {
        buf.push(b'/');
    } else {
        buf.extend_from_slice(target);
    }
    buf.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    push_field_value(buf, host);
    buf.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        debug_assert!(is_token(name), "invalid header name {name:?}");
        buf.extend_from_slice(name);
        buf.extend_from_slice(b": ");
        push_field_value(buf, value);
        buf.extend_from_slice(b"\r\n");
    }
    if let Some(n) = body_len {
        buf.extend_from_slice(b"Content-Length: ");
        buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    buf.extend_from_slice(b"\r\n");
}

/// Whether `s` is an HTTP token (RFC 9110 §5.6.2): a valid method or header name. What
/// the writer's debug assertions check; config load checks header names against the
/// same bytes (`config::endpoint`).
fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

#[inline]
fn push_field_value(buf: &mut Vec<u8>, value: &[u8]) {
    // One branch-free pass (vectorizes): any byte <= CR may be NUL, LF or CR.
    if value.iter().fold(false, |seen, &b| seen | (b <= b'\r')) {
        buf.extend(value.iter().map(|&b| match b {
            b'\r' | b'\n' | 0 => b' ',
            other => other,
        }));
    } else {
        buf.extend_from_slice(value);
    }
}

// ---------------------------------------------------------------------------------------
// URL
// ---------------------------------------------------------------------------------------

/// URL scheme of a delivery target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `http://`, port 80 by default.
    Http,
    /// `https://`, port 443 by default.
    Https,
}

impl Scheme {
    /// The port used when the URL names none.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    /// `"http"` or `"https"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// A parsed `http://` or `https://` URL, ready for connecting and for
/// [`write_request_head`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// Scheme.
    pub scheme: Scheme,
    /// Host name or IP literal, lower-cased; an IPv6 literal without brackets.
    pub host: String,
    /// Port, the scheme's default when the URL names none.
    pub port: u16,
    /// `Host` header value: `host`, `[v6]`, plus `:port` when the port is not the default.
    pub host_header: String,
    /// Request target: path and query, `/` when the URL has no path; fragment dropped;
    /// non-ASCII bytes percent-encoded.
    pub path_and_query: String,
    /// `host` as an address when it is an IP literal: nothing to resolve.
    pub ip: Option<std::net::IpAddr>,
}

/// Why [`parse_url`] refused a URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Scheme other than `http` or `https` (or none).
    #[error("unsupported scheme (only http:// and https://)")]
    UnsupportedScheme,
    /// Nothing between `//` and the path.
    #[error("missing host")]
    MissingHost,
    /// `user:password@` in the authority.
    #[error("credentials in the URL are not supported")]
    UserInfo,
    /// Host with characters outside `[A-Za-z0-9.-_]`, or a malformed IPv6 literal.
    #[error("invalid host")]
    InvalidHost,
    /// A host name with non-ASCII characters (an internationalized one).
    #[error(
        "invalid host: write an internationalized host name in its ASCII form (IDNA, `xn--…`)"
    )]
    NonAsciiHost,
    /// Port that is not a number in 1..=65535.
    #[error("invalid port")]
    InvalidPort,
    /// Whitespace or a control character.
    #[error("whitespace or control character at byte {position}")]
    InvalidChar {
        /// Byte offset in the URL.
        position: usize,
    },
    /// A `.` or `..` path segment (also as `%2E`): receivers resolve it to another path,
    /// so a value rendered into the path could point the request elsewhere.
    #[error("the path has a `.` or `..` segment")]
    DotSegment,
    /// An `https://` host that is neither an IP address nor a DNS name TLS can check a
    /// certificate against (`134744072`, `127.1`: the resolver reads them as addresses,
    /// rustls has no server name for them), so every handshake would fail.
    #[error(
        "invalid host for https: not a DNS name TLS can check the certificate against \
         (write an address as 1.2.3.4 or [::1])"
    )]
    NoServerName,
}

/// Whether `path` (up to its query) has a segment that is `.` or `..`
/// ([`is_dot_segment`]). A rendered URL's path must have none ([`UrlError::DotSegment`]);
/// a static one is the operator's own and is sent as written.
pub fn has_dot_segment(path: &[u8]) -> bool {
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    path.split(|&b| b == b'/').any(is_dot_segment)
}

/// Whether a path segment is `.` or `..`, each dot written plain or as `%2E`, also with
/// `;parameters` after it: RFC 3986 resolves only the bare ones, but common receivers
/// (Tomcat, Jetty, Spring) drop a segment's parameters before they resolve it.
pub fn is_dot_segment(seg: &[u8]) -> bool {
    let seg = seg.split(|&b| b == b';').next().unwrap_or_default();
    let (mut dots, mut i) = (0, 0);
    while i < seg.len() {
        match seg[i..] {
            [b'.', ..] => i += 1,
            [b'%', b'2', e, ..] if e | 0x20 == b'e' => i += 3,
            _ => return false,
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

/// `%XX` escapes decoded (as far as they make UTF-8; anything else is kept as written).
/// `+` is left alone: a query's callers turn it into a space first.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // Two hex digits: `from_str_radix` alone also takes a sign (`%+1` was byte 1).
        if b[i] == b'%' && i + 2 < b.len() && b[i + 1..i + 3].iter().all(u8::is_ascii_hexdigit) {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses an absolute `http://` or `https://` URL (scheme case-insensitive).
///
/// Refuses other schemes, a missing host, userinfo, a bad port, and whitespace or
/// control characters anywhere. Drops the fragment. Accepts IPv6 literals in brackets
/// (`http://[::1]:8080/`); `host` holds the address without them. An empty port
/// (`http://h:/`) means the default.
pub fn parse_url(url: &[u8]) -> Result<Target, UrlError> {
    if let Some(position) = url.iter().position(|&b| b <= b' ' || b == 0x7f) {
        return Err(UrlError::InvalidChar { position });
    }
    let (scheme, rest) = if starts_with_ignore_case(url, b"http://") {
        (Scheme::Http, &url[7..])
    } else if starts_with_ignore_case(url, b"https://") {
        (Scheme::Https, &url[8..])
    } else {
        return Err(UrlError::UnsupportedScheme);
    };
    let auth_end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let authority = &rest[..auth_end];
    let mut tail = &rest[auth_end..];
    if let Some(hash) = tail.iter().position(|&b| b == b'#') {
        tail = &tail[..hash];
    }
    if authority.contains(&b'@') {
        return Err(UrlError::UserInfo);
    }
    if authority.is_empty() {
        return Err(UrlError::MissingHost);
    }

    let (host, port, v6) = if authority[0] == b'[' {
        let close = authority
            .iter()
            .position(|&b| b == b']')
            .ok_or(UrlError::InvalidHost)?;
        let inner = &authority[1..close];
        let text = std::str::from_utf8(inner).map_err(|_| UrlError::InvalidHost)?;
        text.parse::<Ipv6Addr>()
            .map_err(|_| UrlError::InvalidHost)?;
        let port = match &authority[close + 1..] {
            [] => None,
            [b':', port @ ..] => Some(port),
            _ => return Err(UrlError::InvalidHost),
        };
        (inner, port, true)
    } else {
        match authority.iter().position(|&b| b == b':') {
            Some(i) => (&authority[..i], Some(&authority[i + 1..]), false),
            None => (authority, None, false),
        }
    };
    if host.is_empty() {
        return Err(UrlError::MissingHost);
    }
    if !v6
        && !host
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        if !host.is_ascii() && std::str::from_utf8(host).is_ok() {
            return Err(UrlError::NonAsciiHost);
        }
        return Err(UrlError::InvalidHost);
    }
    let port = match port {
        None | Some([]) => scheme.default_port(),
        Some(digits) => parse_port(digits)?,
    };

    // Every byte is ASCII here except in the path; the host checks above made sure.
    let mut host = String::from_utf8_lossy(host).to_ascii_lowercase();
    // `127.0.0.1.` is the address, as browsers read it (a name would go to DNS): the
    // dot goes, so `Host` and the TLS server name are the address's.
    let ip = host.strip_suffix('.').and_then(|h| h.parse().ok());
    if ip.is_some() {
        host.pop();
    }
    let ip = ip.or_else(|| host.parse().ok());
    // The TLS connect names the server by the same test: a host it cannot name is
    // refused here, so a static URL is refused with its endpoint and a rendered one
    // fails its delivery at once rather than at every retry's handshake.
    if scheme == Scheme::Https && ip.is_none() && ServerName::try_from(host.as_str()).is_err() {
        return Err(UrlError::NoServerName);
    }
    let mut host_header = String::with_capacity(host.len() + 8);
    if v6 {
        host_header.push('[');
        host_header.push_str(&host);
        host_header.push(']');
    } else {
        host_header.push_str(&host);
    }
    if port != scheme.default_port() {
        host_header.push(':');
        host_header.push_str(itoa::Buffer::new().format(port));
    }

    let mut path_and_query = String::with_capacity(tail.len() + 1);
    if tail.first() != Some(&b'/') {
        path_and_query.push('/');
    }
    for &b in tail {
        // Non-ASCII, and the ASCII a request target may not hold (RFC 3986 §3.3–3.4)
        // that a template's literal text can: percent-encoded, as browsers do.
        if b.is_ascii()
            && !matches!(
                b,
                b'"' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}'
            )
        {
            path_and_query.push(b as char);
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            path_and_query.push('%');
            path_and_query.push(HEX[usize::from(b >> 4)] as char);
            path_and_query.push(HEX[usize::from(b & 15)] as char);
        }
    }

    Ok(Target {
        ip,
        scheme,
        host,
        port,
        host_header,
        path_and_query,
    })
}

/// A port's digits (RFC 3986 allows leading zeros, and browsers and curl read `:08080`
/// as 8080; `Host` then carries the number).
pub(crate) fn parse_port(digits: &[u8]) -> Result<u16, UrlError> {
    let first = digits
        .iter()
        .position(|&d| d != b'0')
        .unwrap_or(digits.len());
    let digits = &digits[first.min(digits.len().saturating_sub(1))..];
    if digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(UrlError::InvalidPort);
    }
    let n = digits
        .iter()
        .fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
    match u16::try_from(n) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(UrlError::InvalidPort),
    }
}

fn starts_with_ignore_case(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

// ---------------------------------------------------------------------------------------
// Response parser
// ---------------------------------------------------------------------------------------

/// Whether [`ResponseParser::feed`] finished a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The response is not complete; every input byte was consumed. Read more (or call
    /// [`ResponseParser::eof`] when the peer closed).
    NeedMore,
    /// The response is complete; bytes after it were left unconsumed.
    Done,
}

/// A parsed `Retry-After` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAfter {
    /// `Retry-After: <seconds>`.
    Delay(Duration),
    /// `Retry-After: <HTTP-date>`.
    At(SystemTime),
}

impl RetryAfter {
    /// How long to wait from `now`; zero for a date already past.
    #[cfg(test)]
    pub fn delay_from(self, now: SystemTime) -> Duration {
        match self {
            RetryAfter::Delay(d) => d,
            RetryAfter::At(at) => at.duration_since(now).unwrap_or(Duration::ZERO),
        }
    }
}

/// Why a response could not be parsed. The connection is unusable after any of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The status line or a header is malformed.
    #[error("malformed response head: {0}")]
    Head(httparse::Error),
    /// The head is longer than [`MAX_HEAD_BYTES`].
    #[error("response head longer than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    /// `Content-Length` is not a number, or several disagree.
    #[error("invalid Content-Length")]
    InvalidContentLength,
    /// Malformed chunked framing: size line, chunk terminator, trailers or a line too long.
    #[error("invalid chunked body")]
    InvalidChunk,
    /// `101 Switching Protocols`, which ricochet never asks for.
    #[error("unexpected 101 Switching Protocols")]
    UnexpectedUpgrade,
    /// The peer closed the connection before sending any byte of a response (on a reused
    /// keep-alive connection the request may be retried on a fresh one).
    #[error("connection closed before a response")]
    ClosedBeforeResponse,
    /// The peer closed the connection in the middle of a response.
    #[error("connection closed mid-response")]
    Truncated,
    /// A status code outside 100–599 (RFC 9110 §15: it has no class to act on).
    #[error("invalid status code {0:03}")]
    InvalidStatus(u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    /// `Content-Length` body; bytes still to come (never 0).
    Length(u64),
    /// Chunked body; see `ResponseParser::chunk`.
    Chunked,
    /// Body delimited by connection close.
    Close,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading hex digits of a chunk size.
    Size { size: u64, digits: u32 },
    /// After the digits: whitespace and `;extensions` up to CR LF. `len` counts the line;
    /// `ext` is whether a `;` was seen.
    SizeTail { size: u64, len: u32, ext: bool },
    /// CR ending a chunk-size line: LF must follow.
    SizeLf { size: u64 },
    /// Chunk data bytes still to come (never 0).
    Data(u64),
    /// After chunk data: CRLF (or a bare LF).
    DataEnd { seen_cr: bool },
    /// At the start of a trailer line or of the final empty line.
    TrailerStart,
    /// Inside a trailer field line, skipped up to LF.
    TrailerLine,
    /// CR at the start of a line: the final LF must follow.
    TrailerEnd,
}

/// Incremental HTTP/1.1 response parser, reused for every response on a keep-alive
/// connection.
///
/// Feed it whatever the socket returned; it never needs the whole response at once and
/// gives the same result for any split of the input. A head that spans reads is gathered
/// in an internal buffer that keeps its capacity across [`reset`](Self::reset).
#[derive(Debug)]
pub struct ResponseParser {
    excerpt_limit: usize,
    state: State,
    chunk: Chunk,
    /// Partial head gathered across reads; empty when the head came in one piece.
    head_buf: Vec<u8>,
    /// Bytes of blank lines dropped before this head (they count toward its limit).
    blank: usize,
    /// Trailer bytes seen so far (bounded by `MAX_HEAD_BYTES`).
    trailer_len: usize,
    received_any: bool,
    status: u16,
    keep_alive: bool,
    retry_after: Option<RetryAfter>,
    excerpt: Vec<u8>,
    body_len: u64,
}

/// Where a response stood, its head read and its body not ended
/// ([`ResponseParser::in_body`]); shown as `in the body of a 200 response (2 of its 100
/// bytes read)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InBody {
    pub status: u16,
    /// Body bytes read.
    pub read: u64,
    /// The body's length, when a `Content-Length` gave it.
    pub total: Option<u64>,
}

impl std::fmt::Display for InBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let InBody { status, read, .. } = self;
        match self.total {
            Some(total) => write!(
                f,
                "in the body of a {status} response ({read} of its {total} bytes read)"
            ),
            None => write!(f, "in the body of a {status} response ({read} bytes read)"),
        }
    }
}

/// Framing and connection facts read from one response head.
struct HeadInfo {
    content_length: Option<u64>,
    /// `Some(true)` when `Transfer-Encoding` ends in `chunked`, `Some(false)` when it is
    /// present without that.
    chunked: Option<bool>,
    close: bool,
    keep_alive_token: bool,
    retry_after: Option<RetryAfter>,
}

impl ResponseParser {
    /// A parser keeping the first `excerpt_limit` bytes of each decoded body
    /// (ricochet passes 64 KiB).
    pub fn new(excerpt_limit: usize) -> Self {
        ResponseParser {
            excerpt_limit,
            state: State::Head,
            chunk: Chunk::TrailerStart,
            head_buf: Vec::new(),
            blank: 0,
            trailer_len: 0,
            received_any: false,
            status: 0,
            keep_alive: false,
            retry_after: None,
            excerpt: Vec::new(),
            body_len: 0,
        }
    }

    /// A response whose head came and whose body has not ended. For an attempt that
    /// timed out there (a `Content-Length` counted in characters, say), so its error
    /// says what arrived rather than only that time ran out.
    pub fn in_body(&self) -> Option<InBody> {
        let total = match self.state {
            State::Length(left) => Some(self.body_len + left),
            State::Chunked | State::Close => None,
            State::Head | State::Done => return None,
        };
        Some(InBody {
            status: self.status,
            read: self.body_len,
            total,
        })
    }

    /// Prepares for the next response; keeps the buffers' capacity.
    pub fn reset(&mut self) {
        self.state = State::Head;
        self.chunk = Chunk::TrailerStart;
        self.head_buf.clear();
        self.blank = 0;
        self.trailer_len = 0;
        self.received_any = false;
        self.status = 0;
        self.keep_alive = false;
        self.retry_after = None;
        self.excerpt.clear();
        self.body_len = 0;
    }

    /// Feeds bytes read from the socket. Returns how many bytes were consumed and whether
    /// the response is complete.
    ///
    /// With [`Progress::NeedMore`] every byte was consumed. With [`Progress::Done`] bytes
    /// after the response are left unconsumed (the start of a pipelined response or
    /// junk; the caller keeps or drops them). `request_was_head` is whether the request
    /// was a `HEAD` (its response has no body). After `Done`, feeding consumes nothing
    /// until [`reset`](Self::reset). After an error the state is unspecified: drop the
    /// connection.
    pub fn feed(
        &mut self,
        input: &[u8],
        request_was_head: bool,
    ) -> Result<(usize, Progress), ParseError> {
        let mut pos = 0;
        loop {
            match self.state {
                State::Done => return Ok((pos, Progress::Done)),
                State::Head => {
                    if pos == input.len() {
                        return Ok((pos, Progress::NeedMore));
                    }
                    self.received_any = true;
                    match self.parse_head(&input[pos..], request_was_head)? {
                        Some(n) => pos += n,
                        None => return Ok((input.len(), Progress::NeedMore)),
                    }
                }
                State::Length(remaining) => {
                    let rest = &input[pos..];
                    let take = rest
                        .len()
                        .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    self.push_body(&rest[..take]);
                    pos += take;
                    let remaining = remaining - take as u64;
                    if remaining == 0 {
                        self.state = State::Done;
                    } else {
                        self.state = State::Length(remaining);
                        return Ok((pos, Progress::NeedMore));
                    }
                }
                State::Chunked => {
                    pos = self.feed_chunked(input, pos)?;
                    if self.state != State::Done {
                        return Ok((pos, Progress::NeedMore));
                    }
                }
                State::Close => {
                    self.push_body(&input[pos..]);
                    return Ok((input.len(), Progress::NeedMore));
                }
            }
        }
    }

    /// The peer closed the connection. Completes a close-delimited body; otherwise the
    /// response was cut short ([`ParseError::Truncated`]) or never started
    /// ([`ParseError::ClosedBeforeResponse`]).
    pub fn eof(&mut self) -> Result<Progress, ParseError> {
        match self.state {
            State::Done => Ok(Progress::Done),
            State::Close => {
                self.state = State::Done;
                Ok(Progress::Done)
            }
            State::Head if !self.received_any => Err(ParseError::ClosedBeforeResponse),
            _ => Err(ParseError::Truncated),
        }
    }

    /// Whether the current response is complete.
    #[cfg(test)]
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Status code of the final (non-`1xx`) response; 0 before its head is parsed.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The response's `Retry-After` (the first valid one), if any.
    pub fn retry_after(&self) -> Option<RetryAfter> {
        self.retry_after
    }

    /// Whether the connection may carry another request after this response:
    /// HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`;
    /// never after a close-delimited body, a response with both `Transfer-Encoding`
    /// and `Content-Length`, or a `204` or `304` that announces a body it may not have
    /// (a `Content-Length` above 0 or a `Transfer-Encoding`). Meaningful once the
    /// response is done.
    pub fn keep_alive(&self) -> bool {
        self.keep_alive
    }

    /// The first `excerpt_limit` bytes of the decoded body.
    pub fn body_excerpt(&self) -> &[u8] {
        &self.excerpt
    }

    /// Decoded body length seen so far (all of it, not only the excerpt).
    #[cfg(test)]
    pub fn body_len(&self) -> u64 {
        self.body_len
    }

    fn push_body(&mut self, data: &[u8]) {
        self.body_len += data.len() as u64;
        let room = self.excerpt_limit - self.excerpt.len();
        if room > 0 {
            self.excerpt
                .extend_from_slice(&data[..data.len().min(room)]);
        }
    }

    /// Parses a head from `data` (continuing a buffered partial head if there is one).
    /// `Some(n)`: the head ended after `n` bytes of `data`; the state moved on (to `Head`
    /// again after a `1xx`). `None`: all of `data` was buffered.
    fn parse_head(
        &mut self,
        data: &[u8],
        request_was_head: bool,
    ) -> Result<Option<usize>, ParseError> {
        if self.head_buf.is_empty() {
            // Fast path: the whole head is in this read; parse it in place.
            return match parse_head_in(data)? {
                Some((n, _)) if n > MAX_HEAD_BYTES => Err(ParseError::HeadTooLarge),
                Some((n, (code, minor, info))) => {
                    self.on_head(code, minor, info, request_was_head)?;
                    Ok(Some(n))
                }
                None if data.len() >= MAX_HEAD_BYTES => Err(ParseError::HeadTooLarge),
                None => {
                    self.head_buf.extend_from_slice(data);
                    self.drop_blank_lines().map(|()| None)
                }
            };
        }

        // Slow path: append to the buffered part; parse only once a blank line can have
        // arrived, so a head dribbled byte by byte costs linear, not quadratic, time.
        let old = self.head_buf.len();
        let take = data.len().min(MAX_HEAD_BYTES - old);
        self.head_buf.extend_from_slice(&data[..take]);
        self.drop_blank_lines()?;
        if self.head_buf.is_empty() {
            return Ok(None);
        }
        if !has_blank_line(&self.head_buf[old.saturating_sub(2)..]) {
            return if self.head_buf.len() >= MAX_HEAD_BYTES {
                Err(ParseError::HeadTooLarge)
            } else {
                Ok(None)
            };
        }
        match parse_head_in(&self.head_buf)? {
            Some((n, (code, minor, info))) => {
                self.head_buf.clear();
                self.on_head(code, minor, info, request_was_head)?;
                Ok(Some(n - old))
            }
            None if self.head_buf.len() >= MAX_HEAD_BYTES => Err(ParseError::HeadTooLarge),
            None => Ok(None),
        }
    }

    /// While the buffered head holds nothing but blank lines (which may precede a head,
    /// and which httparse skips), drops them: a receiver dribbling them a byte at a time
    /// would otherwise make every byte re-parse all the ones before it. They still count
    /// toward the head's limit.
    fn drop_blank_lines(&mut self) -> Result<(), ParseError> {
        if self.head_buf.iter().all(|&b| b == b'\r' || b == b'\n') {
            self.blank += self.head_buf.len();
            self.head_buf.clear();
            if self.blank >= MAX_HEAD_BYTES {
                return Err(ParseError::HeadTooLarge);
            }
        }
        Ok(())
    }

    /// Applies a parsed head: skips `1xx`, records status and headers, picks the framing.
    fn on_head(
        &mut self,
        code: u16,
        minor: u8,
        info: HeadInfo,
        request_was_head: bool,
    ) -> Result<(), ParseError> {
        self.blank = 0;
        if !(100..600).contains(&code) {
            return Err(ParseError::InvalidStatus(code));
        }
        if code == 101 {
            return Err(ParseError::UnexpectedUpgrade);
        }
        if (100..200).contains(&code) {
            // Informational (100 Continue, 103 Early Hints): the real response follows.
            self.state = State::Head;
            return Ok(());
        }
        self.status = code;
        self.retry_after = info.retry_after;
        self.keep_alive = if minor >= 1 {
            !info.close
        } else {
            // HTTP/1.0 with Transfer-Encoding: faulty framing (RFC 9112 §6.1), close after.
            info.keep_alive_token && !info.close && info.chunked.is_none()
        };
        self.state = if request_was_head || code == 204 || code == 304 {
            // No body, whatever the head says (RFC 9112 §6.3). But a `204` may not
            // announce one (RFC 9110 §8.6, RFC 9112 §6.1), and a `304` answers only a
            // conditional GET, which ricochet never sends: one that announces a body
            // anyway may well send it, in a later read than its head, where the next
            // request on the connection would read it as its answer (its own answer
            // recorded as a malformed one). Not reused.
            let announced = info.chunked.is_some() || info.content_length.is_some_and(|n| n > 0);
            if announced && !request_was_head {
                self.keep_alive = false;
            }
            State::Done
        } else {
            match (info.chunked, info.content_length) {
                (Some(chunked), cl) => {
                    if cl.is_some() {
                        // Both framings: a smuggling smell. Trust TE, then close.
                        self.keep_alive = false;
                    }
                    if chunked {
                        self.chunk = Chunk::Size { size: 0, digits: 0 };
                        State::Chunked
                    } else {
                        State::Close
                    }
                }
                (None, Some(0)) => State::Done,
                (None, Some(n)) => State::Length(n),
                (None, None) => State::Close,
            }
        };
        if self.state == State::Close {
            self.keep_alive = false;
        }
        Ok(())
    }

    /// Runs the chunked decoder from `input[pos..]`; returns the new position. Stops at
    /// the end of the input or when the body (with trailers) is complete.
    fn feed_chunked(&mut self, input: &[u8], mut pos: usize) -> Result<usize, ParseError> {
        while pos < input.len() && self.state == State::Chunked {
            if let Chunk::Data(remaining) = self.chunk {
                let rest = &input[pos..];
                let take = rest
                    .len()
                    .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                let remaining = remaining - take as u64;
                self.chunk = if remaining == 0 {
                    Chunk::DataEnd { seen_cr: false }
                } else {
                    Chunk::Data(remaining)
                };
                self.push_body(&rest[..take]);
                pos += take;
            } else {
                self.chunk_byte(input[pos])?;
                pos += 1;
            }
        }
        Ok(pos)
    }

    /// Advances the chunk framing by one byte (any state but `Data`).
    fn chunk_byte(&mut self, b: u8) -> Result<(), ParseError> {
        self.chunk = match self.chunk {
            Chunk::Size { size, digits } => match hex_value(b) {
                Some(v) => {
                    // Leading zeros are allowed, but not endlessly.
                    if size >> 60 != 0 || digits >= MAX_CHUNK_LINE {
                        return Err(ParseError::InvalidChunk);
                    }
                    Chunk::Size {
                        size: size << 4 | u64::from(v),
                        digits: digits + 1,
                    }
                }
                None if digits == 0 => return Err(ParseError::InvalidChunk),
                None => return self.size_tail(size, digits, b),
            },
            Chunk::SizeTail { size, len, .. } => return self.size_tail(size, len, b),
            Chunk::SizeLf { size } => match b {
                b'\n' => Self::after_size_line(size),
                _ => return Err(ParseError::InvalidChunk),
            },
            Chunk::DataEnd { seen_cr } => match b {
                b'\r' if !seen_cr => Chunk::DataEnd { seen_cr: true },
                b'\n' => Chunk::Size { size: 0, digits: 0 },
                _ => return Err(ParseError::InvalidChunk),
            },
            Chunk::TrailerStart => match b {
                b'\r' => Chunk::TrailerEnd,
                b'\n' => {
                    self.state = State::Done;
                    Chunk::TrailerStart
                }
                _ => {
                    self.count_trailer()?;
                    Chunk::TrailerLine
                }
            },
            Chunk::TrailerLine => {
                self.count_trailer()?;
                if b == b'\n' {
                    Chunk::TrailerStart
                } else {
                    Chunk::TrailerLine
                }
            }
            Chunk::TrailerEnd => match b {
                b'\n' => {
                    self.state = State::Done;
                    Chunk::TrailerStart
                }
                _ => return Err(ParseError::InvalidChunk),
            },
            Chunk::Data(_) => unreachable!("chunk data is consumed in bulk"),
        };
        Ok(())
    }

    /// A byte of a chunk-size line after its digits (`len` bytes into the line).
    fn size_tail(&mut self, size: u64, len: u32, b: u8) -> Result<(), ParseError> {
        if len >= MAX_CHUNK_LINE {
            return Err(ParseError::InvalidChunk);
        }
        let ext = matches!(self.chunk, Chunk::SizeTail { ext: true, .. });
        let len = len + 1;
        self.chunk = match b {
            b'\n' => Self::after_size_line(size),
            b'\r' => Chunk::SizeLf { size },
            b' ' | b'\t' => Chunk::SizeTail { size, len, ext },
            b';' => Chunk::SizeTail {
                size,
                len,
                ext: true,
            },
            // Extension names, values and quoted strings, once a `;` opened them.
            0x21..=0x7e | 0x80..=0xff if ext => Chunk::SizeTail { size, len, ext },
            _ => return Err(ParseError::InvalidChunk),
        };
        Ok(())
    }

    fn after_size_line(size: u64) -> Chunk {
        if size == 0 {
            Chunk::TrailerStart
        } else {
            Chunk::Data(size)
        }
    }

    fn count_trailer(&mut self) -> Result<(), ParseError> {
        self.trailer_len += 1;
        if self.trailer_len > MAX_HEAD_BYTES {
            return Err(ParseError::InvalidChunk);
        }
        Ok(())
    }
}

/// Whether `bytes` contains the end of a head (`\n\n` or `\n\r\n`).
fn has_blank_line(bytes: &[u8]) -> bool {
    bytes.windows(2).enumerate().any(|(i, w)| {
        w[0] == b'\n' && (w[1] == b'\n' || (w[1] == b'\r' && bytes.get(i + 2) == Some(&b'\n')))
    })
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A parsed response head: its length, and its status code, minor version and what
/// [`read_head`] reads of its headers.
type ParsedHead = (usize, (u16, u8, HeadInfo));

/// Parses the response head at the start of `buf` and reads what matters of it, with
/// its length; `Ok(None)` while it is incomplete.
fn parse_head_in(buf: &[u8]) -> Result<Option<ParsedHead>, ParseError> {
    // Uninitialized: httparse fills only what it parses (no 2 KiB memset per response).
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    match parse_head_with(buf, &mut headers) {
        Err(ParseError::Head(httparse::Error::TooManyHeaders)) => {
            // Rare (behind some proxies): one slot per line of the head, on the heap.
            let head = &buf[..buf.len().min(MAX_HEAD_BYTES)];
            let lines = memchr::memchr_iter(b'\n', head).count();
            let mut many = Vec::new();
            many.resize_with(lines + 1, MaybeUninit::uninit);
            match parse_head_with(buf, &mut many) {
                // More header lines than the head's size limit has room for.
                Err(ParseError::Head(httparse::Error::TooManyHeaders)) => {
                    Err(ParseError::HeadTooLarge)
                }
                r => r,
            }
        }
        r => r,
    }
}

fn parse_head_with<'b>(
    buf: &'b [u8],
    headers: &mut [MaybeUninit<httparse::Header<'b>>],
) -> Result<Option<ParsedHead>, ParseError> {
    let mut config = httparse::ParserConfig::default();
    config
        .allow_spaces_after_header_name_in_responses(true)
        .allow_obsolete_multiline_headers_in_responses(true);
    let mut resp = httparse::Response::new(&mut []);
    match config.parse_response_with_uninit_headers(&mut resp, buf, headers) {
        Ok(httparse::Status::Complete(n)) => read_head(&resp).map(|h| Some((n, h))),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(ParseError::Head(e)),
    }
}

/// Status code, minor version and the headers ricochet cares about.
fn read_head(resp: &httparse::Response<'_, '_>) -> Result<(u16, u8, HeadInfo), ParseError> {
    let code = resp.code.ok_or(ParseError::Head(httparse::Error::Status))?;
    let minor = resp
        .version
        .ok_or(ParseError::Head(httparse::Error::Version))?;
    let mut info = HeadInfo {
        content_length: None,
        chunked: None,
        close: false,
        keep_alive_token: false,
        retry_after: None,
    };
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            for part in h.value.split(|&b| b == b',') {
                let n = parse_decimal(trim(part)).ok_or(ParseError::InvalidContentLength)?;
                match info.content_length {
                    Some(prev) if prev != n => return Err(ParseError::InvalidContentLength),
                    _ => info.content_length = Some(n),
                }
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let last = h
                .value
                .split(|&b| b == b',')
                .map(trim)
                .rfind(|t| !t.is_empty());
            // Only the last coding decides (codings apply in order); an empty field
            // names none and changes nothing.
            if let Some(last) = last {
                info.chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|&b| b == b',').map(trim) {
                if token.eq_ignore_ascii_case(b"close") {
                    info.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    info.keep_alive_token = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"retry-after") && info.retry_after.is_none() {
            info.retry_after = parse_retry_after(h.value);
        }
    }
    Ok((code, minor, info))
}

/// Trims whitespace, CR and LF included: a folded field (obs-fold, which responses may
/// still carry) keeps its line break inside the value, and it counts as a space.
fn trim(s: &[u8]) -> &[u8] {
    let ws = |b: u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let start = s.iter().position(|&b| !ws(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|&b| !ws(b)).map_or(start, |i| i + 1);
    &s[start..end]
}

/// A non-empty run of ASCII digits as u64 (no sign, no overflow).
fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// `Retry-After: <delay-seconds> | <HTTP-date>` (RFC 9110 §10.2.3). Huge second counts
/// saturate; anything unparseable is ignored.
fn parse_retry_after(value: &[u8]) -> Option<RetryAfter> {
    let v = trim(value);
    if !v.is_empty() && v.iter().all(u8::is_ascii_digit) {
        let secs = parse_decimal(v).unwrap_or(u64::MAX);
        return Some(RetryAfter::Delay(Duration::from_secs(secs)));
    }
    let secs = parse_http_date(v)?;
    Some(RetryAfter::At(
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
    ))
}

/// Parses an HTTP-date (RFC 9110 §5.6.7) to Unix seconds: IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`), and the obsolete RFC 850
/// (`Sunday, 06-Nov-94 08:49:37 GMT`) and asctime (`Sun Nov  6 08:49:37 1994`) forms.
/// The weekday is not checked against the date. Dates before 1970 give `None`.
fn parse_http_date(s: &[u8]) -> Option<u64> {
    let mut c = Cursor(s);
    let weekday_len = c.take_while(|b| b.is_ascii_alphabetic());
    if weekday_len < 3 {
        return None;
    }
    let (year, month, day, hms);
    if c.eat(b',') {
        c.expect(b' ')?;
        let d = c.digits(2)?;
        if c.eat(b' ') {
            // IMF-fixdate: DD Mon YYYY HH:MM:SS GMT
            let m = c.month()?;
            c.expect(b' ')?;
            year = c.digits(4)?;
            month = m;
        } else {
            // RFC 850: DD-Mon-YY HH:MM:SS GMT
            c.expect(b'-')?;
            let m = c.month()?;
            c.expect(b'-')?;
            let yy = c.digits(2)?;
            year = if yy < 70 { 2000 + yy } else { 1900 + yy };
            month = m;
        }
        day = d;
        c.expect(b' ')?;
        hms = c.time()?;
        c.expect(b' ')?;
        c.literal(b"GMT")?;
    } else {
        // asctime: Mon DD HH:MM:SS YYYY, DD space-padded
        c.expect(b' ')?;
        month = c.month()?;
        c.expect(b' ')?;
        day = if c.eat(b' ') {
            c.digits(1)?
        } else {
            c.digits(2)?
        };
        c.expect(b' ')?;
        hms = c.time()?;
        c.expect(b' ')?;
        year = c.digits(4)?;
    }
    if !c.0.is_empty() || year < 1970 || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let (h, m, sec) = hms;
    if h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + h * 3600 + m * 60 + sec)
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> usize {
        let n = self.0.iter().take_while(|&&b| f(b)).count();
        self.0 = &self.0[n..];
        n
    }
    fn eat(&mut self, b: u8) -> bool {
        if self.0.first() == Some(&b) {
            self.0 = &self.0[1..];
            true
        } else {
            false
        }
    }
    fn expect(&mut self, b: u8) -> Option<()> {
        self.eat(b).then_some(())
    }
    fn literal(&mut self, lit: &[u8]) -> Option<()> {
        let rest = self.0.strip_prefix(lit)?;
        self.0 = rest;
        Some(())
    }
    fn digits(&mut self, n: usize) -> Option<u64> {
        let d = self.0.get(..n)?;
        let v = parse_decimal(d)?;
        self.0 = &self.0[n..];
        Some(v)
    }
    fn month(&mut self) -> Option<u64> {
        const MONTHS: [&[u8; 3]; 12] = [
            b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
            b"Dec",
        ];
        let m = self.0.get(..3)?;
        let i = MONTHS.iter().position(|name| name[..] == *m)?;
        self.0 = &self.0[3..];
        Some(i as u64 + 1)
    }
    fn time(&mut self) -> Option<(u64, u64, u64)> {
        let h = self.digits(2)?;
        self.expect(b':')?;
        let m = self.digits(2)?;
        self.expect(b':')?;
        let s = self.digits(2)?;
        Some((h, m, s))
    }
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (year >= 1970).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    // Howard Hinnant's algorithm, shifted so March is month 0 and all terms stay positive.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(
        method: &str,
        target: &[u8],
        host: &[u8],
        headers: &[(&[u8], &[u8])],
        len: Option<usize>,
    ) -> String {
        let mut buf = Vec::new();
        write_request_head(&mut buf, method, target, host, headers, len);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn writes_exact_head() {
        let h = head(
            "POST",
            b"/pb?x=1",
            b"example.com:8080",
            &[(b"Content-Type", b"application/json"), (b"X-A", b"b")],
            Some(42),
        );
        assert_eq!(
            h,
            "POST /pb?x=1 HTTP/1.1\r\nHost: example.com:8080\r\nContent-Type: application/json\r\n\
             X-A: b\r\nContent-Length: 42\r\n\r\n"
        );
        assert_eq!(
            head("GET", b"/", b"h", &[], None),
            "GET / HTTP/1.1\r\nHost: h\r\n\r\n"
        );
        assert_eq!(
            head("POST", b"", b"h", &[], Some(0)),
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn header_values_cannot_split_the_request() {
        let h = head(
            "GET",
            b"/",
            b"h",
            &[(b"X-Evil", b"a\r\nInjected: 1\0")],
            None,
        );
        assert_eq!(
            h,
            "GET / HTTP/1.1\r\nHost: h\r\nX-Evil: a  Injected: 1 \r\n\r\n"
        );
    }

    #[test]
    fn iter_variant_appends_and_matches_slice_variant() {
        let hs: [(&[u8], &[u8]); 2] = [(b"A", b"1"), (b"B", b"2")];
        let mut a = b"prefix".to_vec();
        write_request_head_iter(&mut a, "PUT", b"/x", b"h", hs.iter().copied(), Some(7));
        let mut b = b"prefix".to_vec();
        write_request_head(&mut b, "PUT", b"/x", b"h", &hs, Some(7));
        assert_eq!(a, b);
        assert!(a.starts_with(b"prefixPUT /x HTTP/1.1\r\n"));
    }

    #[test]
    fn tokens() {
        assert!(is_token(b"X-Partner"));
        assert!(is_token(b"webhook-id"));
        assert!(!is_token(b""));
        assert!(!is_token(b"Bad Name"));
        assert!(!is_token(b"a:b"));
    }

    #[test]
    fn an_internationalized_host_is_refused_with_a_hint() {
        let e = parse_url("http://bücher.example/pb".as_bytes()).unwrap_err();
        assert_eq!(e, UrlError::NonAsciiHost);
        assert!(e.to_string().contains("xn--"), "{e}");
        assert!(parse_url(b"http://xn--bcher-kva.example/pb").is_ok());
        assert_eq!(
            parse_url(b"http://a b/").unwrap_err(),
            UrlError::InvalidChar { position: 8 }
        );
    }

    #[test]
    fn characters_a_request_target_may_not_hold_are_encoded() {
        let t = parse_url(b"http://h/a\"b<c>d\\e^f`g{1}|h/caf\xc3\xa9?q=\"x\"<y>&z=%41").unwrap();
        assert_eq!(
            t.path_and_query,
            "/a%22b%3Cc%3Ed%5Ce%5Ef%60g%7B1%7D%7Ch/caf%C3%A9?q=%22x%22%3Cy%3E&z=%41"
        );
    }

    #[test]
    fn an_address_with_a_trailing_dot_is_the_address() {
        let t = parse_url(b"http://127.0.0.1.:8080/x").unwrap();
        assert_eq!(t.ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(
            (t.host.as_str(), t.host_header.as_str()),
            ("127.0.0.1", "127.0.0.1:8080")
        );
        assert_eq!(parse_url(b"http://example.com./").unwrap().ip, None);
    }

    #[test]
    fn dot_segments_in_the_path_are_found() {
        for url in [
            "http://h/users/../hook",
            "http://h/users/./hook",
            "http://h/a/..",
            "http://h/a/%2E%2e/b?x=1",
            "http://h/a/.%2E",
            "http://h/..?q",
            "http://h/p/..;v=1/q",
            "http://h/p/.;x",
        ] {
            let t = parse_url(url.as_bytes()).unwrap();
            assert!(has_dot_segment(t.path_and_query.as_bytes()), "{url}");
        }
        for url in [
            "http://h/a/.../b",
            "http://h/a/..b/c",
            "http://h/v1.2/x",
            "http://h/a?x=../..",
            "http://h/a#../..",
            "http://h/%2E%2Ex",
            "http://h/p/;..",
            "http://h/p/..x;y",
        ] {
            let t = parse_url(url.as_bytes()).unwrap();
            assert!(!has_dot_segment(t.path_and_query.as_bytes()), "{url}");
        }
    }

    #[test]
    fn parses_urls() {
        let t = parse_url(b"https://Partner.Example/pb?oid=1&st=2#frag").unwrap();
        assert_eq!(t.scheme, Scheme::Https);
        assert_eq!(t.host, "partner.example");
        assert_eq!(t.port, 443);
        assert_eq!(t.host_header, "partner.example");
        assert_eq!(t.path_and_query, "/pb?oid=1&st=2");

        let t = parse_url(b"http://127.0.0.1:8080").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 8080));
        assert_eq!(t.host_header, "127.0.0.1:8080");
        assert_eq!(t.path_and_query, "/");
        assert_eq!(t.ip, Some([127, 0, 0, 1].into()));

        let t = parse_url(b"HTTP://h:80?q=1").unwrap();
        assert_eq!(t.ip, None, "a name is resolved, not parsed");
        assert_eq!(t.scheme, Scheme::Http);
        assert_eq!(t.host_header, "h");
        assert_eq!(t.path_and_query, "/?q=1");

        let t = parse_url(b"http://[::1]:8080/x").unwrap();
        assert_eq!(t.host, "::1");
        assert_eq!(t.ip, Some(std::net::Ipv6Addr::LOCALHOST.into()));
        assert_eq!(t.port, 8080);
        assert_eq!(t.host_header, "[::1]:8080");

        let t = parse_url(b"https://[2001:DB8::1]/").unwrap();
        assert_eq!(t.host, "2001:db8::1");
        assert_eq!(t.host_header, "[2001:db8::1]");

        let t = parse_url(b"http://h:/p").unwrap();
        assert_eq!(t.port, 80);

        let t = parse_url("http://h/caf\u{e9}".as_bytes()).unwrap();
        assert_eq!(t.path_and_query, "/caf%C3%A9");

        let t = parse_url(b"http://h#only-fragment").unwrap();
        assert_eq!(t.path_and_query, "/");

        // Leading zeros in a port, as browsers and curl take them.
        let t = parse_url(b"http://h:08080/x").unwrap();
        assert_eq!((t.port, t.host_header.as_str()), (8080, "h:8080"));
        let t = parse_url(b"http://h:0080/x").unwrap();
        assert_eq!((t.port, t.host_header.as_str()), (80, "h"));
    }

    #[test]
    fn rejects_bad_urls() {
        use UrlError::*;
        let cases: &[(&[u8], UrlError)] = &[
            (b"ftp://h/", UnsupportedScheme),
            (b"h/x", UnsupportedScheme),
            (b"http:/h", UnsupportedScheme),
            (b"http://", MissingHost),
            (b"http:///x", MissingHost),
            (b"http://:80/x", MissingHost),
            (b"http://u:p@h/", UserInfo),
            (b"http://u@h/", UserInfo),
            (b"http://h:0/", InvalidPort),
            (b"http://h:65536/", InvalidPort),
            (b"http://h:8x/", InvalidPort),
            (b"http://h:123456/", InvalidPort),
            (b"http://h:1:2/", InvalidPort),
            (b"http://h:00/", InvalidPort),
            (b"http://h:0065536/", InvalidPort),
            (b"http://[::1/", InvalidHost),
            (b"http://[zz]/", InvalidHost),
            (b"http://[::1]x/", InvalidHost),
            (b"http://[fe80::1%25eth0]/", InvalidHost),
            (b"http://ex%41mple/", InvalidHost),
            (b"http://h/a b", InvalidChar { position: 10 }),
            (b"http://h/\x01", InvalidChar { position: 9 }),
            (b" http://h/", InvalidChar { position: 0 }),
            (b"http://h/#a\tb", InvalidChar { position: 11 }),
            // The resolver reads these as addresses; TLS cannot name them.
            (b"https://134744072/", NoServerName),
            (b"https://127.1/", NoServerName),
            (b"https://0x7f000001:8443/x", NoServerName),
        ];
        for (url, want) in cases {
            assert_eq!(
                parse_url(url).as_ref(),
                Err(want),
                "{}",
                String::from_utf8_lossy(url)
            );
        }
        assert!(parse_url("http://bücher.example/".as_bytes()).is_err());
        // Over plain HTTP they are hosts like any other; over https a name or an
        // address TLS can check passes.
        for ok in [
            &b"http://134744072/"[..],
            b"http://127.1/",
            b"https://partner.example/",
            b"https://localhost./",
            b"https://a_b.example/",
            b"https://127.0.0.1/",
            b"https://127.0.0.1./",
            b"https://[::1]:8443/",
        ] {
            assert!(parse_url(ok).is_ok(), "{}", String::from_utf8_lossy(ok));
        }
    }

    /// What a parser reported about one response.
    #[derive(Debug, Clone, PartialEq)]
    struct Outcome {
        consumed: usize,
        status: u16,
        keep_alive: bool,
        retry_after: Option<RetryAfter>,
        excerpt: Vec<u8>,
        body_len: u64,
    }

    /// Feeds `input` split at `cuts`, then EOF if the response is still open.
    fn run(
        p: &mut ResponseParser,
        input: &[u8],
        cuts: &[usize],
        req_head: bool,
        eof: bool,
    ) -> Result<Outcome, ParseError> {
        p.reset();
        let mut consumed = 0;
        let mut start = 0;
        let mut done = false;
        let mut bounds: Vec<usize> = cuts.iter().map(|&c| c.min(input.len())).collect();
        bounds.sort_unstable();
        bounds.push(input.len());
        for end in bounds {
            if end < start {
                continue;
            }
            let (n, progress) = p.feed(&input[start..end], req_head)?;
            consumed += n;
            if progress == Progress::Done {
                done = true;
                break;
            }
            assert_eq!(n, end - start, "NeedMore must consume everything");
            start = end;
        }
        if !done {
            if !eof {
                return Err(ParseError::Truncated);
            }
            assert_eq!(p.eof()?, Progress::Done);
        }
        assert!(p.is_done());
        Ok(Outcome {
            consumed,
            status: p.status(),
            keep_alive: p.keep_alive(),
            retry_after: p.retry_after(),
            excerpt: p.body_excerpt().to_vec(),
            body_len: p.body_len(),
        })
    }

    fn one(input: &[u8]) -> Result<Outcome, ParseError> {
        run(&mut ResponseParser::new(64 * 1024), input, &[], false, true)
    }

    #[test]
    fn blank_lines_dribbled_before_a_head_are_dropped_not_reparsed() {
        let mut p = ResponseParser::new(16);
        for i in 0..2000 {
            let b: &[u8] = if i % 2 == 0 { b"\r" } else { b"\n" };
            assert_eq!(p.feed(b, false), Ok((1, Progress::NeedMore)));
            assert!(p.head_buf.is_empty(), "blank byte {i} buffered");
        }
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(p.feed(r, false), Ok((r.len(), Progress::Done)));
        assert_eq!(p.status(), 200);
        // They still count toward the head's limit.
        p.reset();
        let mut n = 0;
        let err = loop {
            match p.feed(b"\n", false) {
                Ok(_) => n += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(err, ParseError::HeadTooLarge);
        assert_eq!(n, MAX_HEAD_BYTES - 1);
    }

    #[test]
    fn framing_that_hides_or_misleads() {
        // A folded Connection field still says close.
        let o = one(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive,\r\n close\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        assert!(!o.keep_alive);
        // A folded Transfer-Encoding still ends in chunked.
        let o = one(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip,\r\n chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((o.excerpt.as_slice(), o.keep_alive), (&b"ok"[..], true));
        // An empty Transfer-Encoding field names no coding: chunked still holds.
        let o = one(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding:\r\n\r\n2\r\nok\r\n0\r\n\r\n")
            .unwrap();
        assert_eq!((o.excerpt.as_slice(), o.keep_alive), (&b"ok"[..], true));
        // HTTP/1.0 with Transfer-Encoding: read, then close (RFC 9112 §6.1).
        let o = one(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
            .unwrap();
        assert_eq!((o.status, o.keep_alive), (200, false));
    }

    #[test]
    fn content_length_response() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1";
        let o = one(r).unwrap();
        assert_eq!(o.status, 200);
        assert_eq!(o.consumed, r.len() - 8);
        assert_eq!(o.excerpt, b"hello");
        assert_eq!(o.body_len, 5);
        assert!(o.keep_alive);
        assert_eq!(o.retry_after, None);
    }

    #[test]
    fn zero_length_body_completes_without_more_input() {
        let mut p = ResponseParser::new(16);
        let r = b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(p.feed(r, false), Ok((r.len(), Progress::Done)));
        assert_eq!(p.body_len(), 0);
        // Feeding after Done consumes nothing.
        assert_eq!(p.feed(b"xyz", false), Ok((0, Progress::Done)));
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                  5;name=val\r\nhello\r\n1A \r\nabcdefghijklmnopqrstuvwxyz\r\n\
                  0\r\nX-Trailer: 1\r\nX-Other: 2\r\n\r\nNEXT";
        let o = one(r).unwrap();
        assert_eq!(o.excerpt, b"helloabcdefghijklmnopqrstuvwxyz");
        assert_eq!(o.body_len, 31);
        assert_eq!(o.consumed, r.len() - 4);
        assert!(o.keep_alive);
        // Bare LF line endings are tolerated.
        let r = b"HTTP/1.1 200 OK\nTransfer-Encoding: gzip, chunked\n\n3\nabc\n0\n\n";
        assert_eq!(one(r).unwrap().excerpt, b"abc");
    }

    #[test]
    fn bad_chunks() {
        for body in [
            &b"x\r\n"[..],
            b"5\r\nhelloX\r\n",
            b"11111111111111111\r\n",
            b"5 x\r\nhello\r\n",
            b"0\r\n\rX",
        ] {
            let mut r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            r.extend_from_slice(body);
            assert_eq!(
                one(&r),
                Err(ParseError::InvalidChunk),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let mut r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        r.extend(std::iter::repeat_n(b'0', 5000));
        assert_eq!(one(&r), Err(ParseError::InvalidChunk));
        let mut r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;".to_vec();
        r.extend(std::iter::repeat_n(b'a', 5000));
        assert_eq!(one(&r), Err(ParseError::InvalidChunk));
    }

    #[test]
    fn close_delimited_body() {
        let r = b"HTTP/1.1 500 Internal Server Error\r\nX: y\r\n\r\noops, all of it";
        let o = one(r).unwrap();
        assert_eq!(o.status, 500);
        assert_eq!(o.excerpt, b"oops, all of it");
        assert_eq!(o.consumed, r.len());
        assert!(!o.keep_alive);
        // Transfer-Encoding without chunked is close-delimited too.
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 2\r\n\r\nabcd";
        let o = one(r).unwrap();
        assert_eq!((o.excerpt.as_slice(), o.keep_alive), (&b"abcd"[..], false));
    }

    #[test]
    fn informational_responses_are_skipped() {
        let r = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
                  HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
        let o = one(r).unwrap();
        assert_eq!((o.status, o.excerpt.as_slice()), (201, &b"ok"[..]));
        let r = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n";
        assert_eq!(one(r), Err(ParseError::UnexpectedUpgrade));
    }

    #[test]
    fn status_codes_outside_100_to_599_are_refused() {
        for (r, code) in [
            (&b"HTTP/1.1 000 Zero\r\nContent-Length: 2\r\n\r\nOK"[..], 0),
            (b"HTTP/1.1 099 X\r\nContent-Length: 0\r\n\r\n", 99),
            (b"HTTP/1.1 600 X\r\nContent-Length: 0\r\n\r\n", 600),
            (b"HTTP/1.1 999 X\r\nContent-Length: 0\r\n\r\n", 999),
        ] {
            assert_eq!(one(r), Err(ParseError::InvalidStatus(code)));
        }
        assert_eq!(
            ParseError::InvalidStatus(0).to_string(),
            "invalid status code 000"
        );
        let o = one(b"HTTP/1.1 599 X\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!(o.status, 599);
    }

    #[test]
    fn bodiless_responses() {
        for (r, keep_alive) in [
            (&b"HTTP/1.1 204 No Content\r\n\r\n"[..], true),
            (
                b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
                true,
            ),
            (
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 0\r\n\r\n",
                true,
            ),
            // A body announced where none may be: read as none, and the connection is
            // not reused (the body may come after the head, read as the next answer).
            (
                b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n",
                false,
            ),
            (
                b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
            ),
            (
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
                false,
            ),
            (
                b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
            ),
        ] {
            let o = one(r).unwrap();
            assert_eq!((o.consumed, o.body_len), (r.len(), 0));
            assert_eq!(o.keep_alive, keep_alive, "{}", String::from_utf8_lossy(r));
        }
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";
        let mut p = ResponseParser::new(10);
        let o = run(&mut p, r, &[], true, false).unwrap();
        assert_eq!((o.status, o.body_len, o.consumed), (200, 0, r.len()));
        assert!(o.keep_alive);
        // To a HEAD, a 304's length is the representation's (RFC 9110 §8.6).
        let r = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1000\r\n\r\n";
        assert!(run(&mut p, r, &[], true, false).unwrap().keep_alive);
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |r: &[u8]| one(r).unwrap().keep_alive;
        assert!(ka(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(!ka(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!ka(
            b"HTTP/1.1 200 OK\r\nConnection: Upgrade, CLOSE\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!ka(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(ka(
            b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!ka(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n"));
        assert!(!ka(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ));
    }

    #[test]
    fn content_length_validation() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(one(ok).unwrap().body_len, 3);
        for cl in ["3, 4", "-1", "+3", "", "0x10", "99999999999999999999"] {
            let r = format!("HTTP/1.1 200 OK\r\nContent-Length: {cl}\r\n\r\nabc");
            assert_eq!(
                one(r.as_bytes()),
                Err(ParseError::InvalidContentLength),
                "{cl}"
            );
        }
    }

    #[test]
    fn excerpt_is_capped_but_length_counted() {
        let mut r = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n".to_vec();
        r.extend((0..100u8).map(|i| b'a' + i % 26));
        let mut p = ResponseParser::new(10);
        let o = run(&mut p, &r, &[45, 50, 77], false, false).unwrap();
        assert_eq!(o.excerpt, b"abcdefghij");
        assert_eq!(o.body_len, 100);
    }

    #[test]
    fn eof_errors() {
        let mut p = ResponseParser::new(10);
        assert_eq!(p.eof(), Err(ParseError::ClosedBeforeResponse));
        p.reset();
        p.feed(b"HTTP/1.1 200", false).unwrap();
        assert_eq!(p.eof(), Err(ParseError::Truncated));
        p.reset();
        p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", false)
            .unwrap();
        assert_eq!(p.eof(), Err(ParseError::Truncated));
        p.reset();
        p.feed(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n",
            false,
        )
        .unwrap();
        assert_eq!(p.eof(), Err(ParseError::Truncated));
    }

    #[test]
    fn malformed_and_oversized_heads() {
        assert!(matches!(
            one(b"HTTP/2 200 OK\r\n\r\n"),
            Err(ParseError::Head(_))
        ));
        assert!(matches!(
            one(b"HTTP/1.1 2x0 OK\r\n\r\n"),
            Err(ParseError::Head(_))
        ));
        // More headers than the stack array holds: read all the same, as long as the
        // head is within its size limit.
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        assert_eq!(one(&many).map(|o| o.status), Ok(200));
        let cuts: Vec<usize> = (1..many.len()).step_by(97).collect();
        let cut = run(&mut ResponseParser::new(10), &many, &cuts, false, true);
        assert_eq!(cut.map(|o| o.status), Ok(200));
        let mut most = b"HTTP/1.1 200 OK\r\n".to_vec();
        while most.len() < MAX_HEAD_BYTES - 32 {
            most.extend_from_slice(b"a:\n");
        }
        most.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        assert_eq!(one(&most).map(|o| o.status), Ok(200));

        let mut big = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES));
        big.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
        let mut p = ResponseParser::new(10);
        assert_eq!(one(&big), Err(ParseError::HeadTooLarge));
        let cuts: Vec<usize> = (1..big.len()).step_by(1000).collect();
        assert_eq!(
            run(&mut p, &big, &cuts, false, true),
            Err(ParseError::HeadTooLarge)
        );
        // A head of exactly the limit is fine, whole or split.
        let mut exact = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
        let tail = b"\r\nContent-Length: 0\r\n\r\n";
        exact.extend(std::iter::repeat_n(
            b'a',
            MAX_HEAD_BYTES - exact.len() - tail.len(),
        ));
        exact.extend_from_slice(tail);
        assert_eq!(exact.len(), MAX_HEAD_BYTES);
        assert!(one(&exact).is_ok());
        assert!(run(&mut p, &exact, &cuts, false, true).is_ok());
    }

    #[test]
    fn head_byte_by_byte_with_leading_blank_lines() {
        let r = b"\r\n\r\nHTTP/1.1 429 Too Many Requests\r\nRetry-After: 120\r\nContent-Length: 2\r\n\r\nno";
        let cuts: Vec<usize> = (1..r.len()).collect();
        let o = run(&mut ResponseParser::new(64), r, &cuts, false, false).unwrap();
        assert_eq!(o, one(r).unwrap());
        assert_eq!(o.status, 429);
        assert_eq!(
            o.retry_after,
            Some(RetryAfter::Delay(Duration::from_secs(120)))
        );
    }

    #[test]
    fn retry_after_forms() {
        let at = |s: u64| {
            Some(RetryAfter::At(
                SystemTime::UNIX_EPOCH + Duration::from_secs(s),
            ))
        };
        assert_eq!(
            parse_retry_after(b" 0 "),
            Some(RetryAfter::Delay(Duration::ZERO))
        );
        assert_eq!(
            parse_retry_after(b"Sun, 06 Nov 1994 08:49:37 GMT"),
            at(784_111_777)
        );
        assert_eq!(
            parse_retry_after(b"Sunday, 06-Nov-94 08:49:37 GMT"),
            at(784_111_777)
        );
        assert_eq!(
            parse_retry_after(b"Sun Nov  6 08:49:37 1994"),
            at(784_111_777)
        );
        assert_eq!(parse_retry_after(b"Thu, 01 Jan 1970 00:00:00 GMT"), at(0));
        assert_eq!(
            parse_retry_after(b"Tue, 29 Feb 2028 23:59:59 GMT"),
            at(1_835_481_599)
        );
        assert_eq!(
            parse_retry_after(b"Wed, 08 Apr 2026 10:05:00 GMT"),
            at(1_775_642_700)
        );
        for bad in [
            &b""[..],
            b"-5",
            b"1.5",
            b"soon",
            b"Sun, 06 Nov 1994 08:49:37 UTC",
            b"Sun, 31 Nov 1994 08:49:37 GMT",
            b"Sat, 29 Feb 2025 00:00:00 GMT",
            b"Sun, 06 Nov 1994 24:00:00 GMT",
            b"Sun, 06 Foo 1994 08:49:37 GMT",
            b"Sun, 06 Nov 1994 08:49:37 GMT extra",
            b"Wed, 31 Dec 1969 23:59:59 GMT",
        ] {
            assert_eq!(
                parse_retry_after(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let huge = parse_retry_after(b"99999999999999999999999").unwrap();
        assert_eq!(huge, RetryAfter::Delay(Duration::from_secs(u64::MAX)));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        assert_eq!(at(160).unwrap().delay_from(now), Duration::from_secs(60));
        assert_eq!(at(10).unwrap().delay_from(now), Duration::ZERO);
    }

    #[test]
    fn first_valid_retry_after_wins() {
        let r = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: soon\r\nRetry-After: 7\r\n\
                  Retry-After: 9\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            one(r).unwrap().retry_after,
            Some(RetryAfter::Delay(Duration::from_secs(7)))
        );
    }

    #[test]
    fn reset_keeps_buffers() {
        let mut p = ResponseParser::new(1024);
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
        run(&mut p, r, &[5], false, false).unwrap();
        let (head_cap, ex_cap) = (p.head_buf.capacity(), p.excerpt.capacity());
        assert!(head_cap > 0 && ex_cap > 0);
        for _ in 0..10 {
            run(&mut p, r, &[5], false, false).unwrap();
        }
        assert_eq!(
            (p.head_buf.capacity(), p.excerpt.capacity()),
            (head_cap, ex_cap)
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Framing {
            Length,
            /// Chunk sizes (a remainder chunk is added), with an extension on each.
            Chunked(Vec<usize>, bool),
            Close,
        }

        prop_compose! {
            fn response()(
                status in prop::sample::select(vec![200u16, 201, 204, 301, 304, 404, 410, 429, 500, 503]),
                minor in 0u8..=1,
                continue_first in any::<bool>(),
                close in any::<bool>(),
                retry in proptest::option::of(0u32..100_000),
                extra in prop::collection::vec(("[A-Za-z-]{1,12}", "[ -~]{0,20}"), 0..6),
                framing in prop_oneof![
                    Just(Framing::Length),
                    (prop::collection::vec(1usize..40, 0..6), any::<bool>())
                        .prop_map(|(s, e)| Framing::Chunked(s, e)),
                    Just(Framing::Close),
                ],
                body in prop::collection::vec(any::<u8>(), 0..200),
                trailing in prop::collection::vec(any::<u8>(), 0..20),
            ) -> (Vec<u8>, u16, Vec<u8>, bool) {
                let mut r = Vec::new();
                if continue_first {
                    r.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                r.extend_from_slice(format!("HTTP/1.{minor} {status} Reason Phrase\r\n").as_bytes());
                for (n, v) in &extra {
                    let lower = n.to_ascii_lowercase();
                    if ["content-length", "transfer-encoding", "connection", "retry-after"]
                        .contains(&lower.as_str())
                    {
                        continue;
                    }
                    r.extend_from_slice(format!("{n}: {}\r\n", v.trim()).as_bytes());
                }
                if close {
                    r.extend_from_slice(b"Connection: close\r\n");
                }
                if let Some(s) = retry {
                    r.extend_from_slice(format!("Retry-After: {s}\r\n").as_bytes());
                }
                let has_body = status != 204 && status != 304;
                let delimited_by_close = matches!(framing, Framing::Close) && has_body;
                // A 204 or 304 announcing a body it may not have is not reused.
                let announces_body = !has_body && match &framing {
                    Framing::Length => !body.is_empty(),
                    Framing::Chunked(..) => true,
                    Framing::Close => false,
                };
                match &framing {
                    Framing::Length => {
                        r.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
                        if has_body { r.extend_from_slice(&body); }
                    }
                    Framing::Chunked(sizes, ext) => {
                        r.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                        if has_body {
                            let mut rest = &body[..];
                            let mut sizes = sizes.iter();
                            while !rest.is_empty() {
                                let n = sizes.next().copied().unwrap_or(rest.len()).min(rest.len());
                                let e = if *ext { ";a=b" } else { "" };
                                r.extend_from_slice(format!("{n:x}{e}\r\n").as_bytes());
                                r.extend_from_slice(&rest[..n]);
                                r.extend_from_slice(b"\r\n");
                                rest = &rest[n..];
                            }
                            r.extend_from_slice(b"0\r\n");
                            if *ext { r.extend_from_slice(b"Trailer-X: y\r\n"); }
                            r.extend_from_slice(b"\r\n");
                        }
                    }
                    Framing::Close => {
                        r.extend_from_slice(b"\r\n");
                        if has_body { r.extend_from_slice(&body); }
                    }
                }
                let expected_body = if has_body { body.clone() } else { Vec::new() };
                let ka = !close && minor == 1 && !delimited_by_close && !announces_body;
                if !delimited_by_close {
                    r.extend_from_slice(&trailing);
                }
                (r, status, expected_body, ka)
            }
        }

        proptest! {
            #[test]
            fn any_split_gives_the_same_response(
                (r, status, body, ka) in response(),
                cuts in prop::collection::vec(0usize..600, 0..12),
                limit in prop::sample::select(vec![0usize, 7, 64 * 1024]),
            ) {
                let mut p = ResponseParser::new(limit);
                let whole = run(&mut p, &r, &[], false, true).unwrap();
                prop_assert_eq!(whole.status, status);
                prop_assert_eq!(whole.keep_alive, ka);
                prop_assert_eq!(whole.body_len, body.len() as u64);
                prop_assert_eq!(&whole.excerpt[..], &body[..body.len().min(limit)]);
                let split = run(&mut p, &r, &cuts, false, true).unwrap();
                prop_assert_eq!(&split, &whole);
                let bytewise: Vec<usize> = (1..r.len()).collect();
                let bytewise = run(&mut p, &r, &bytewise, false, true).unwrap();
                prop_assert_eq!(bytewise, whole);
            }

            #[test]
            fn garbage_fails_or_succeeds_the_same_way_for_any_split(
                r in prop::collection::vec(prop::sample::select(
                    b"HTP/1.0 2\r\n:;-aZ\t chunkedContent-Length0123456789".to_vec()), 0..300),
                cuts in prop::collection::vec(0usize..300, 0..12),
            ) {
                let mut p = ResponseParser::new(32);
                let whole = run(&mut p, &r, &[], false, true);
                let split = run(&mut p, &r, &cuts, false, true);
                prop_assert_eq!(whole.is_ok(), split.is_ok());
                if let (Ok(a), Ok(b)) = (whole, split) {
                    prop_assert_eq!(a, b);
                }
            }
        }
    }
}
