//! HTTP/1.1 framing shared by the sink, the raw client and the fake server: request
//! parsing (httparse for the head, Content-Length and chunked bodies), canned
//! responses, and the two things the sink reads out of a delivery (`webhook-id` and
//! the generator's `sent_us` stamp).

use std::ops::Range;

/// Largest request body the sink accepts (a delivery is a few KiB at most).
pub const MAX_BODY: usize = 16 << 20;
/// Largest request head the sink buffers before giving up on the connection.
pub const MAX_HEAD: usize = 64 << 10;
const MAX_HEADERS: usize = 64;

/// Why a request cannot be framed; the connection is answered and closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Malformed request line, header or chunk framing.
    Malformed,
    /// Head or body over the limits above.
    TooLarge,
}

/// Where the body of a parsed request lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A range of the input buffer (Content-Length or no body).
    Inline(Range<usize>),
    /// Decoded from chunked transfer encoding into the caller's scratch buffer.
    Decoded,
}

/// One framed request; ranges index the buffer given to [`parse_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Bytes of the buffer this request used (head and body).
    pub consumed: usize,
    pub method: Range<usize>,
    /// Path including any query string.
    pub path: Range<usize>,
    pub webhook_id: Option<Range<usize>>,
    /// False for `Connection: close` and for HTTP/1.0 without keep-alive.
    pub keep_alive: bool,
    pub body: Body,
}

impl Request {
    pub fn body<'a>(&self, buf: &'a [u8], scratch: &'a [u8]) -> &'a [u8] {
        match &self.body {
            Body::Inline(r) => &buf[r.clone()],
            Body::Decoded => scratch,
        }
    }
}

fn range_of(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

/// Frames the first request in `buf`. `Ok(None)` means more bytes are needed. A chunked
/// body is decoded into `scratch` (cleared first); a Content-Length body stays in `buf`.
pub fn parse_request(buf: &[u8], scratch: &mut Vec<u8>) -> Result<Option<Request>, FrameError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > MAX_HEAD {
                Err(FrameError::TooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(FrameError::TooLarge),
        Err(_) => return Err(FrameError::Malformed),
    };
    let method = range_of(buf, req.method.unwrap_or("").as_bytes());
    let path = range_of(buf, req.path.unwrap_or("").as_bytes());
    let mut keep_alive = req.version == Some(1);
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut webhook_id = None;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or(FrameError::Malformed)?;
            if content_length.is_some_and(|c| c != v) {
                return Err(FrameError::Malformed);
            }
            content_length = Some(v);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or(b"");
            if trim(last).eq_ignore_ascii_case(b"chunked") {
                chunked = true;
            } else {
                return Err(FrameError::Malformed);
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = trim(token);
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"webhook-id") {
            webhook_id = Some(range_of(buf, h.value));
        }
    }
    if chunked {
        // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length.
        return match decode_chunked(&buf[head_len..], scratch)? {
            Some(n) => Ok(Some(Request {
                consumed: head_len + n,
                method,
                path,
                webhook_id,
                keep_alive,
                body: Body::Decoded,
            })),
            None => Ok(None),
        };
    }
    let len = content_length.unwrap_or(0);
    if len > MAX_BODY {
        return Err(FrameError::TooLarge);
    }
    if buf.len() < head_len + len {
        return Ok(None);
    }
    Ok(Some(Request {
        consumed: head_len + len,
        method,
        path,
        webhook_id,
        keep_alive,
        body: Body::Inline(head_len..head_len + len),
    }))
}

/// Decodes a chunked body at the start of `buf` into `out`; returns the bytes used
/// (through the final CRLF after any trailers) or `None` if incomplete.
pub fn decode_chunked(buf: &[u8], out: &mut Vec<u8>) -> Result<Option<usize>, FrameError> {
    out.clear();
    let mut pos = 0;
    loop {
        let (n, size) = match httparse::parse_chunk_size(&buf[pos..]) {
            Ok(httparse::Status::Complete(v)) => v,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(FrameError::Malformed),
        };
        pos += n;
        if size == 0 {
            // Trailer fields, then an empty line.
            loop {
                let Some(eol) = find(&buf[pos..], b"\r\n") else {
                    return Ok(None);
                };
                pos += eol + 2;
                if eol == 0 {
                    return Ok(Some(pos));
                }
            }
        }
        let size = usize::try_from(size).map_err(|_| FrameError::TooLarge)?;
        if out.len() + size > MAX_BODY {
            return Err(FrameError::TooLarge);
        }
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&buf[pos..pos + size]);
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return Err(FrameError::Malformed);
        }
        pos += size + 2;
    }
}

/// Parsed response head for the raw client and the fake server's client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub head_len: usize,
    pub content_length: usize,
    pub keep_alive: bool,
}

/// Frames a response head; the body must be Content-Length delimited (what the sink
/// and any sane test server send). `Ok(None)` means more bytes are needed.
pub fn parse_response(buf: &[u8]) -> Result<Option<ResponseHead>, FrameError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(FrameError::Malformed),
    };
    let mut content_length = 0;
    let mut keep_alive = resp.version == Some(1);
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            content_length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or(FrameError::Malformed)?;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Err(FrameError::Malformed);
        } else if name.eq_ignore_ascii_case(b"connection")
            && trim(h.value).eq_ignore_ascii_case(b"close")
        {
            keep_alive = false;
        }
    }
    Ok(Some(ResponseHead {
        status: resp.code.unwrap_or(0),
        head_len,
        content_length,
        keep_alive,
    }))
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        400 => "Bad Request",
        404 => "Not Found",
        410 => "Gone",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// A complete canned response (`OK` body for 2xx, `ERROR` otherwise, as the seeds'
/// success/error texts go). 204 and 304 carry no body.
pub fn canned_response(status: u16, keep_alive: bool) -> Vec<u8> {
    let body: &[u8] = match status {
        204 | 304 => b"",
        200..=299 => b"OK",
        _ => b"ERROR",
    };
    response_with_body(status, body, keep_alive)
}

pub fn response_with_body(status: u16, body: &[u8], keep_alive: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: text/plain\r\ncontent-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    if !keep_alive {
        out.extend_from_slice(b"\r\nconnection: close");
    }
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
    out
}

/// The generator's send stamp: `"sent_us": <digits>` in a JSON body.
pub fn find_sent_us_json(body: &[u8]) -> Option<u64> {
    let at = find(body, b"\"sent_us\"")? + 9;
    let rest = &body[at..];
    let rest = &rest[rest.iter().position(|b| !b.is_ascii_whitespace())?..];
    let rest = rest.strip_prefix(b":")?;
    let rest = &rest[rest.iter().position(|b| !b.is_ascii_whitespace())?..];
    parse_digits(rest)
}

/// The generator's send stamp in a query string: `?...&sent_us=<digits>`.
pub fn find_sent_us_query(path: &[u8]) -> Option<u64> {
    let q = &path[path.iter().position(|&b| b == b'?')? + 1..];
    q.split(|&b| b == b'&')
        .find_map(|kv| kv.strip_prefix(b"sent_us="))
        .and_then(parse_digits)
}

/// Leading decimal digits as a u64 (`None` if there are none or they overflow).
pub fn parse_digits(s: &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    let mut any = false;
    for &b in s {
        if !b.is_ascii_digit() {
            break;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        any = true;
    }
    any.then_some(v)
}

/// Splits a generator id `ld-<run>-<n>` into `(run, n)`.
pub fn parse_load_id(id: &[u8]) -> Option<(&[u8], u64)> {
    let rest = id.strip_prefix(b"ld-")?;
    let dash = rest.iter().rposition(|&b| b == b'-')?;
    let (run, n) = (&rest[..dash], &rest[dash + 1..]);
    if run.is_empty() || n.is_empty() || !n.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some((run, parse_digits(n)?))
}

/// The endpoint index in a sink path `/e/<n>[/...][?...]`.
pub fn endpoint_index(path: &[u8]) -> Option<u64> {
    let rest = path.strip_prefix(b"/e/")?;
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    if end == 0 || !rest[..end].iter().all(u8::is_ascii_digit) {
        return None;
    }
    parse_digits(&rest[..end])
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, tail) = needle.split_first()?;
    let mut from = 0;
    while from + needle.len() <= hay.len() {
        let i = from
            + hay[from..=hay.len() - needle.len()]
                .iter()
                .position(|&b| b == first)?;
        if &hay[i + 1..i + needle.len()] == tail {
            return Some(i);
        }
        from = i + 1;
    }
    None
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_request() {
        let raw = b"POST /e/3 HTTP/1.1\r\nHost: x\r\nwebhook-id: ld-ab-12\r\nContent-Length: 5\r\n\r\nhelloGET";
        let mut scratch = Vec::new();
        let r = parse_request(raw, &mut scratch).unwrap().unwrap();
        assert_eq!(&raw[r.method.clone()], b"POST");
        assert_eq!(&raw[r.path.clone()], b"/e/3");
        assert_eq!(&raw[r.webhook_id.clone().unwrap()], b"ld-ab-12");
        assert_eq!(r.body(raw, &scratch), b"hello");
        assert!(r.keep_alive);
        assert_eq!(r.consumed, raw.len() - 3);
    }

    #[test]
    fn partial_until_body_complete() {
        let raw = b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nhello";
        let mut scratch = Vec::new();
        assert_eq!(parse_request(raw, &mut scratch).unwrap(), None);
        assert_eq!(parse_request(&raw[..10], &mut scratch).unwrap(), None);
    }

    #[test]
    fn chunked_request_with_trailers() {
        let raw = b"POST /e/0 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let mut scratch = Vec::new();
        let r = parse_request(raw, &mut scratch).unwrap().unwrap();
        assert_eq!(r.body, Body::Decoded);
        assert_eq!(r.body(raw, &scratch), b"hello, world");
        assert_eq!(&raw[r.consumed..], b"NEXT");
        // Every strict prefix is incomplete, never an error.
        for cut in 0..r.consumed {
            assert_eq!(
                parse_request(&raw[..cut], &mut scratch).unwrap(),
                None,
                "cut {cut}"
            );
        }
    }

    #[test]
    fn chunked_errors() {
        let mut out = Vec::new();
        assert_eq!(
            decode_chunked(b"zz\r\n", &mut out),
            Err(FrameError::Malformed)
        );
        assert_eq!(
            decode_chunked(b"2\r\nabXY", &mut out),
            Err(FrameError::Malformed)
        );
        assert_eq!(decode_chunked(b"0\r\n\r\n", &mut out), Ok(Some(5)));
        assert!(out.is_empty());
    }

    #[test]
    fn connection_semantics() {
        let mut s = Vec::new();
        let r = parse_request(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", &mut s)
            .unwrap()
            .unwrap();
        assert!(!r.keep_alive);
        let r = parse_request(b"GET / HTTP/1.0\r\n\r\n", &mut s)
            .unwrap()
            .unwrap();
        assert!(!r.keep_alive);
        let r = parse_request(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", &mut s)
            .unwrap()
            .unwrap();
        assert!(r.keep_alive);
    }

    #[test]
    fn malformed_and_oversized() {
        let mut s = Vec::new();
        assert_eq!(
            parse_request(b"NOT HTTP\r\n\r\n", &mut s),
            Err(FrameError::Malformed)
        );
        let big = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert_eq!(
            parse_request(big.as_bytes(), &mut s),
            Err(FrameError::TooLarge)
        );
        assert_eq!(
            parse_request(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", &mut s),
            Err(FrameError::Malformed)
        );
    }

    #[test]
    fn pipelined_requests() {
        let raw = b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
        let mut s = Vec::new();
        let a = parse_request(raw, &mut s).unwrap().unwrap();
        let b = parse_request(&raw[a.consumed..], &mut s).unwrap().unwrap();
        assert_eq!(&raw[a.consumed..][b.path.clone()], b"/b");
        assert_eq!(a.consumed + b.consumed, raw.len());
    }

    #[test]
    fn response_round_trip() {
        let r = canned_response(503, true);
        let head = parse_response(&r).unwrap().unwrap();
        assert_eq!(head.status, 503);
        assert_eq!(head.content_length, 5);
        assert_eq!(&r[head.head_len..], b"ERROR");
        assert!(head.keep_alive);
        let r = canned_response(200, false);
        let head = parse_response(&r).unwrap().unwrap();
        assert!(!head.keep_alive);
        assert_eq!(&r[head.head_len..], b"OK");
    }

    #[test]
    fn sent_us_extraction() {
        assert_eq!(
            find_sent_us_json(br#"{"sent_us":1712345678901234,"x":1}"#),
            Some(1712345678901234)
        );
        assert_eq!(find_sent_us_json(br#"{"a":1, "sent_us" : 42}"#), Some(42));
        assert_eq!(find_sent_us_json(br#"{"sent_us":"x"}"#), None);
        assert_eq!(find_sent_us_json(br#"{"a":1}"#), None);
        assert_eq!(find_sent_us_query(b"/e/1?a=2&sent_us=99"), Some(99));
        assert_eq!(find_sent_us_query(b"/e/1?sent_us=7"), Some(7));
        assert_eq!(find_sent_us_query(b"/e/1"), None);
    }

    #[test]
    fn ids_and_paths() {
        assert_eq!(parse_load_id(b"ld-a1b2-42"), Some((&b"a1b2"[..], 42)));
        assert_eq!(parse_load_id(b"ld-x-y-7"), Some((&b"x-y"[..], 7)));
        assert_eq!(parse_load_id(b"ld--7"), None);
        assert_eq!(parse_load_id(b"ld-a-"), None);
        assert_eq!(parse_load_id(b"other-1"), None);
        assert_eq!(endpoint_index(b"/e/17"), Some(17));
        assert_eq!(endpoint_index(b"/e/17?sent_us=1"), Some(17));
        assert_eq!(endpoint_index(b"/e/"), None);
        assert_eq!(endpoint_index(b"/x/1"), None);
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"ab", b"abc"), None);
    }
}
