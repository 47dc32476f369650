//! Builds the exact bytes of one postback request (SPEC §4).
//!
//! Owns the request's shape: method and rendered URL, the standard headers
//! (`User-Agent`, `webhook-id`, `webhook-timestamp`, `webhook-signature`), the endpoint's
//! headers, `Content-Type` and the body. Rendering goes into reusable buffers. The same
//! function serves the workers and `ricochet render`, so what `render` prints is what a
//! receiver gets. It must not do I/O.

use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::{Format, Method};
use crate::deliver::http1::{
    has_dot_segment, parse_url, percent_decode, write_request_head_iter, Target, UrlError,
};
use crate::endpoint::EndpointSpec;
use crate::store::{EventRecord, RequestLog, BODY_EXCERPT};
use crate::template::{render_default_body, Doc, Overflow, RenderBudget};

/// The `User-Agent` every request carries.
pub const USER_AGENT: &str = concat!("ricochet/", env!("CARGO_PKG_VERSION"));

/// Reusable buffers for building requests.
#[derive(Default)]
pub struct Scratch {
    url: Vec<u8>,
    body: Vec<u8>,
    values: Vec<u8>,
    ranges: Vec<(usize, usize)>,
    sig: String,
    /// Of the last request built: the body was the event's data as received.
    passthrough: bool,
    /// Of the last request built: its body length.
    body_len: usize,
}

/// The longest rendered URL sent (receivers commonly refuse 8 KiB and more).
const MAX_URL_BYTES: usize = 64 << 10;
/// The most bytes all of an endpoint's rendered header values may take together.
const MAX_HEADER_BYTES: usize = 64 << 10;
/// The largest rendered body sent. A body passed through as received is the event's
/// `data` (at most `max_line_bytes`); a template can make a body far larger than its
/// event (a `join` whose elements each read a large field), and such a one stops here
/// instead of taking the process's memory.
const MAX_BODY_BYTES: usize = 8 << 20;

impl Scratch {
    /// Gives back what an unusually large request made the buffers grow to, so a lane
    /// keeps no more than [`KEEP_BYTES`] a buffer between attempts.
    pub fn trim(&mut self) {
        for b in [&mut self.url, &mut self.body, &mut self.values] {
            trim(b);
        }
    }
}

/// What a reusable request buffer keeps between attempts ([`trim`]).
pub const KEEP_BYTES: usize = 256 << 10;

/// Shrinks `buf` to [`KEEP_BYTES`] if it grew beyond.
pub fn trim(buf: &mut Vec<u8>) {
    if buf.capacity() > KEEP_BYTES {
        buf.clear();
        buf.shrink_to(KEEP_BYTES);
    }
}

/// A request that cannot be built: never retried (the same event renders the same).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("malformed URL {url:?}: {error}")]
    MalformedUrl { url: String, error: UrlError },
    #[error("{part} over {} KiB after rendering: not sent", limit >> 10)]
    TooLarge { part: &'static str, limit: usize },
    #[error(
        "{part}: rendering this event takes more than {} steps (joins nested over one \
         array, or a look-up in a large object for every element?): not sent",
        crate::template::MAX_RENDER_STEPS
    )]
    TooMuchWork { part: &'static str },
}

/// Appends the full request (head and body) to `out`; returns where it goes.
pub fn build(
    spec: &EndpointSpec,
    event: &EventRecord,
    doc: &Doc,
    timestamp_s: u64,
    s: &mut Scratch,
    out: &mut Vec<u8>,
) -> Result<Arc<Target>, BuildError> {
    // One budget for all the request's templates.
    let mut budget = RenderBudget::new();
    let target = match &spec.static_target {
        Some(t) => t.clone(),
        None => {
            s.url.clear();
            spec.url
                .render_within(doc, &mut s.url, MAX_URL_BYTES, &mut budget)
                .map_err(|o| render_error(o, "URL", MAX_URL_BYTES))?;
            // A value rendered as a whole `.` or `..` segment would send the request
            // to another path: such a URL is malformed.
            let parsed = parse_url(&s.url).and_then(|t| {
                if has_dot_segment(t.path_and_query.as_bytes()) {
                    Err(UrlError::DotSegment)
                } else {
                    Ok(t)
                }
            });
            match parsed {
                Ok(t) => Arc::new(t),
                Err(error) => {
                    return Err(BuildError::MalformedUrl {
                        url: redact_query(&String::from_utf8_lossy(&s.url)),
                        error,
                    })
                }
            }
        }
    };
    let method = spec.cfg.method;
    s.body.clear();
    let has_body = method != Method::Get;
    // json/text passthrough needs no index of the data and no copy: the bytes as received
    // go straight after the head.
    let passthrough =
        has_body && spec.body.is_none() && matches!(spec.cfg.format, Format::Json | Format::Text);
    if has_body && !passthrough {
        let fits = match &spec.body {
            Some(t) => t.render_within(doc, &mut s.body, MAX_BODY_BYTES, &mut budget),
            None => {
                render_default_body(body_format(spec), doc, &mut s.body);
                if s.body.len() <= MAX_BODY_BYTES {
                    Ok(())
                } else {
                    Err(Overflow::Length)
                }
            }
        };
        fits.map_err(|o| render_error(o, "body", MAX_BODY_BYTES))?;
    }
    let body: &[u8] = if passthrough { event.data() } else { &s.body };
    s.passthrough = passthrough;
    s.body_len = if has_body { body.len() } else { 0 };
    let id = event.display_id();
    let mut ts_buf = itoa::Buffer::new();
    let ts = ts_buf.format(timestamp_s);
    if !spec.signing_keys.is_empty() {
        sign(&spec.signing_keys, &id, ts, body, &mut s.sig);
    }
    // Header values rendered into one buffer; ranges point into it.
    s.values.clear();
    s.ranges.clear();
    for (_, t) in &spec.headers {
        let start = s.values.len();
        t.render_within(doc, &mut s.values, MAX_HEADER_BYTES, &mut budget)
            .map_err(|o| render_error(o, "header values", MAX_HEADER_BYTES))?;
        s.ranges.push((start, s.values.len()));
    }
    let fixed: [Option<(&[u8], &[u8])>; 5] = [
        Some((b"User-Agent", USER_AGENT.as_bytes())),
        has_body.then_some((b"Content-Type", spec.cfg.format.content_type().as_bytes())),
        Some((b"webhook-id", id.as_bytes())),
        Some((b"webhook-timestamp", ts.as_bytes())),
        (!spec.signing_keys.is_empty()).then_some((b"webhook-signature", s.sig.as_bytes())),
    ];
    let values = &s.values;
    let custom = spec
        .headers
        .iter()
        .zip(s.ranges.iter())
        .map(|((name, _), &(a, b))| (name.as_bytes(), &values[a..b]));
    write_request_head_iter(
        out,
        method.as_str(),
        target.path_and_query.as_bytes(),
        target.host_header.as_bytes(),
        fixed.into_iter().flatten().chain(custom),
        has_body.then_some(body.len()),
    );
    out.extend_from_slice(body);
    Ok(target)
}

/// The error of a render that stopped: too long, or too much work.
fn render_error(why: Overflow, part: &'static str, limit: usize) -> BuildError {
    match why {
        Overflow::Length => BuildError::TooLarge { part, limit },
        Overflow::Work => BuildError::TooMuchWork { part },
    }
}

fn body_format(spec: &EndpointSpec) -> crate::template::BodyFormat {
    use crate::template::BodyFormat;
    match spec.cfg.format {
        Format::Json => BodyFormat::Json,
        Format::Xml => BodyFormat::Xml,
        Format::Form => BodyFormat::Form,
        Format::Text => BodyFormat::Text,
    }
}

/// Standard Webhooks signature: `v1,<base64 HMAC-SHA256("<id>.<ts>.<body>")>` per key,
/// space-separated.
fn sign(keys: &[Vec<u8>], id: &str, ts: &str, body: &[u8], out: &mut String) {
    use base64::Engine as _;
    out.clear();
    for key in keys {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
            continue;
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(ts.as_bytes());
        mac.update(b".");
        mac.update(body);
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str("v1,");
        base64::engine::general_purpose::STANDARD.encode_string(mac.finalize().into_bytes(), out);
    }
}

/// Whether a header's value is a secret, so the attempt log, an endpoint's definition
/// as read back and a template error never show it. By the name, in any case:
/// `Authorization`, `Proxy-Authorization`, `Cookie`, and any name with a word that
/// says "credential" ([`is_secret_name`]: `X-Api-Key`, `X-Auth-Token`, `Api-Secret`,
/// `X-Signature` …). `Idempotency-Key` is the one `…-Key` that is not.
pub fn is_secret_header(name: &str) -> bool {
    !name.eq_ignore_ascii_case("idempotency-key") && is_secret_name(name)
}

/// Words that make a header or query parameter name a credential's: a name is split at
/// `-`, `_`, `.` and lower-to-upper case changes (`apiKey` is `api`, `key`).
const SECRET_WORDS: [&str; 27] = [
    "auth",
    "authentication",
    "authn",
    "authorisation",
    "authorization",
    "authz",
    "bearer",
    "cookie",
    "cred",
    "creds",
    "credential",
    "credentials",
    "hmac",
    "jwt",
    "key",
    "otp",
    "pass",
    "passcode",
    "passphrase",
    "pin",
    "private",
    "pwd",
    "session",
    "sessid",
    "sessionid",
    "sig",
    "signature",
];

/// Parts of a word that make it a credential's wherever they stand (`accesstoken`,
/// `clientsecret`, `x-password`, `XAPIKEY`).
const SECRET_PARTS: [&str; 4] = ["token", "secret", "passw", "apikey"];

/// Whether `name` (a header's or a query parameter's) names a credential: one of its
/// words is in [`SECRET_WORDS`] or holds one of [`SECRET_PARTS`].
fn is_secret_name(name: &str) -> bool {
    let b = name.as_bytes();
    let mut start = 0;
    for i in 0..=b.len() {
        let boundary = i == b.len()
            || !b[i].is_ascii_alphanumeric()
            || (i > start && b[i].is_ascii_uppercase() && b[i - 1].is_ascii_lowercase());
        if !boundary {
            continue;
        }
        if i > start && is_secret_word(&b[start..i]) {
            return true;
        }
        start = if i < b.len() && b[i].is_ascii_alphanumeric() {
            i
        } else {
            i + 1
        };
    }
    false
}

fn is_secret_word(word: &[u8]) -> bool {
    // A numbered word is the word's (`key2`, `secret_v2` is `secret`, `v2`).
    let digits = word.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    let word = &word[..word.len() - digits];
    SECRET_WORDS
        .iter()
        .any(|w| word.eq_ignore_ascii_case(w.as_bytes()))
        || SECRET_PARTS.iter().any(|p| contains_ci(word, p.as_bytes()))
}

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// What the attempt log keeps of the request [`build`] made last with `s`: the
/// endpoint's headers as sent (secret values redacted), the body (an excerpt, or a mark
/// that it was the event's data).
pub fn log_of(spec: &EndpointSpec, s: &Scratch) -> RequestLog {
    let has_body = spec.cfg.method != Method::Get;
    RequestLog {
        signed: !spec.signing_keys.is_empty(),
        content_type: has_body.then(|| spec.cfg.format.content_type()),
        body_len: s.body_len as u32,
        body_is_data: s.passthrough,
        body_excerpt: if s.passthrough {
            Vec::new()
        } else if has_body && spec.cfg.format == Format::Form {
            // A form body is a query: its credential-named fields are redacted before
            // the record is written, as the URL's query is.
            let excerpt = &s.body[..s.body.len().min(BODY_EXCERPT)];
            redact_form(&String::from_utf8_lossy(excerpt)).into_bytes()
        } else {
            s.body[..s.body.len().min(BODY_EXCERPT)].to_vec()
        },
        headers: spec
            .headers
            .iter()
            .zip(s.ranges.iter())
            .map(|((name, _), &(a, b))| {
                let value = if is_secret_header(name) {
                    REDACTED.to_string()
                } else {
                    String::from_utf8_lossy(&s.values[a..b]).into_owned()
                };
                (name.clone(), value)
            })
            .collect(),
    }
}

/// What a redacted secret reads as.
pub const REDACTED: &str = "[redacted]";

/// `METHOD URL` of a request, for the attempt log (no headers: they may hold secrets).
pub fn request_line(spec: &EndpointSpec, target: &Target) -> std::sync::Arc<str> {
    if let Some(line) = &spec.static_request_line {
        return line.clone();
    }
    request_line_of(spec.cfg.method, target).into()
}

/// `METHOD scheme://host/path?query`, the values of the query's credentials
/// ([`is_secret_name`]: `?token=…`, `?api_key=…`) replaced by [`REDACTED`].
pub fn request_line_of(method: Method, target: &Target) -> String {
    let scheme = target.scheme.as_str();
    let mut line = format!("{} {scheme}://{}", method.as_str(), target.host_header);
    push_redacted_target(&mut line, &target.path_and_query);
    line
}

/// `url` with the values of its credential-named query parameters redacted.
pub fn redact_query(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    push_redacted_target(&mut out, url);
    out
}

/// Appends `path?query` (or a whole URL) to `out` with the values of secret query
/// parameters redacted.
fn push_redacted_target(out: &mut String, path_and_query: &str) {
    rewrite_secret_values(out, path_and_query, |out, _| out.push_str(REDACTED));
}

/// A URL template's line with the values of its credential-named query parameters (and
/// any userinfo) masked, one `*` per character, so an error's caret keeps its column.
pub fn mask_query_secrets(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    rewrite_secret_values(&mut out, &mask_userinfo(line), push_stars);
    mask_union(line, &out, &mask_named_values(line))
}

/// `line` with the userinfo of a URL's authority (`user:password@`, which ricochet
/// refuses, but a template error shows the line first) masked, one `*` per character.
/// The authority is taken to start after a leading scheme, with or without its `:`,
/// and the slashes or backslashes after it, so a mistyped or missing scheme
/// (`http:/u:pw@h`, `http//u:pw@h`, `//u:pw@h`, `u:pw@h`) is masked too: such a URL is
/// refused, and its error shows the line.
fn mask_userinfo(line: &str) -> std::borrow::Cow<'_, str> {
    let b = line.as_bytes();
    let slashes = |from: usize| {
        b[from..]
            .iter()
            .take_while(|&&c| matches!(c, b'/' | b'\\'))
            .count()
    };
    // A scheme is letters (and `+-.`) then a `:` or a slash; `user:pw@h` has none (no
    // slash follows its `:`).
    let start = match b
        .iter()
        .position(|&c| !(c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.')))
    {
        Some(n) if n > 0 && b[0].is_ascii_alphabetic() => match b[n] {
            b':' if slashes(n + 1) > 0 => n + 1 + slashes(n + 1),
            b'/' | b'\\' => n + slashes(n),
            _ => 0,
        },
        _ => slashes(0),
    };
    // The authority ends at `/`, `?` or `#` outside a placeholder (`{default(P, "a/b")}`
    // is one).
    let mut depth = 0usize;
    let authority_end = line[start..]
        .char_indices()
        .find(|&(_, c)| {
            match c {
                '{' => depth += 1,
                '}' => depth = depth.saturating_sub(1),
                '/' | '?' | '#' if depth == 0 => return true,
                _ => {}
            }
            false
        })
        .map_or(line.len(), |(i, _)| start + i);
    let Some(at) = line[start..authority_end].rfind('@').map(|i| start + i) else {
        return line.into();
    };
    // A tab stays a tab, as the caret line keeps it.
    let stars: String = line[start..at]
        .chars()
        .map(|c| if c == '\t' { c } else { '*' })
        .collect();
    format!("{}{stars}{}", &line[..start], &line[at..]).into()
}

/// Appends `url` to `out`, each non-empty value of a credential-named query parameter
/// (after the first `?`; [`is_secret_name`]) written by `replace` instead.
fn rewrite_secret_values(out: &mut String, url: &str, replace: impl Fn(&mut String, &str)) {
    let Some((head, query)) = url.split_once('?') else {
        out.push_str(url);
        return;
    };
    out.push_str(head);
    out.push('?');
    rewrite_secret_params(out, query, replace);
}

/// A form body (`application/x-www-form-urlencoded`, a query's syntax) with the values
/// of its credential-named fields redacted, as a URL's query is: `api_key=…&oid=1`.
pub fn redact_form(body: &str) -> String {
    let mut out = String::with_capacity(body.len());
    rewrite_secret_params(&mut out, body, |out, _| out.push_str(REDACTED));
    out
}

/// A form body template's line with the values of its credential-named fields masked,
/// one `*` per character (see [`mask_query_secrets`]): each field's whole value, up to
/// its `&`, placeholders and joins included (`api_key={join(…)}`, `api_key="…"`), and
/// also a `name=` that starts inside a join's text (`{join(l, i, "api_key=…&{i}")}`).
pub fn mask_form_secrets(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    rewrite_secret_params(&mut out, line, push_stars);
    mask_union(line, &out, &mask_named_values(line))
}

/// One `*` per character of `value`.
fn push_stars(out: &mut String, value: &str) {
    out.extend(value.chars().map(|_| '*'));
}

/// `line` with every character masked that either mask masked (both keep its
/// characters where they are, one `*` for one character).
fn mask_union(line: &str, a: &str, b: &str) -> String {
    line.chars()
        .zip(a.chars().zip(b.chars()))
        .map(|(c, (x, y))| if x != c || y != c { '*' } else { c })
        .collect()
}

/// A template's line is not a query: a parameter may start inside a join's text, after
/// a quote. Every `name=` counts here, its name the name characters before the `=`,
/// its value what follows up to a `&`, a `;`, a quote that ends the join's text (not
/// one escaped, `\"`) or a space, placeholders in it included (`api_key={i}SEK`); a
/// secret's value masked, one `*` per character.
fn mask_named_values(line: &str) -> String {
    let is_name = |c: char| c.is_ascii_alphanumeric() || "_.-%+[]~".contains(c);
    let mut out = String::with_capacity(line.len());
    let mut masking = false;
    let mut prev = '\0';
    for (i, c) in line.char_indices() {
        let ends_value = matches!(c, '&' | ';') || c.is_whitespace() || (c == '"' && prev != '\\');
        prev = c;
        if masking && ends_value {
            masking = false;
        }
        out.push(if masking { '*' } else { c });
        if c == '=' && !masking {
            let start = line[..i]
                .char_indices()
                .rev()
                .take_while(|&(_, c)| is_name(c))
                .last()
                .map_or(i, |(j, _)| j);
            masking = start < i && is_secret_param(&line[start..i]);
        }
    }
    out
}

/// Appends `query` (`a=1&b=2`) with the values of secret parameters rewritten.
fn rewrite_secret_params(out: &mut String, query: &str, replace: impl Fn(&mut String, &str)) {
    // Parameters are separated by `&`, and by `;` for the receivers that take it where
    // a `name=` follows (else the `;` is part of the value: `token=ab;cd` is one).
    let mut rest = query;
    loop {
        let end = param_end(rest);
        let pair = &rest[..end];
        match pair.split_once('=') {
            Some((name, value)) if !value.is_empty() && is_secret_param(name) => {
                out.push_str(name);
                out.push('=');
                replace(out, value);
            }
            _ => out.push_str(pair),
        }
        let Some(sep) = rest[end..].chars().next() else {
            return;
        };
        out.push(sep);
        rest = &rest[end + 1..];
    }
}

/// Where the query parameter at the start of `q` ends: at the first `&`, or at a `;`
/// followed by another `name=` parameter.
fn param_end(q: &str) -> usize {
    let amp = q.find('&').unwrap_or(q.len());
    let mut from = 0;
    while let Some(i) = q[from..amp].find(';').map(|i| from + i) {
        let next = &q[i + 1..];
        let seg = &next[..next.find(['&', ';']).unwrap_or(next.len())];
        if seg.contains('=') {
            return i;
        }
        from = i + 1;
    }
    amp
}

/// Whether a query parameter's name, as written (`api%5Fkey`, `api+key`), is a
/// credential's.
fn is_secret_param(name: &str) -> bool {
    if name.contains(['%', '+']) {
        is_secret_name(&percent_decode(&name.replace('+', " ")))
    } else {
        is_secret_name(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::{first_endpoint, url_endpoint};

    #[test]
    fn secret_header_names() {
        for name in [
            "Authorization",
            "proxy-authorization",
            "Cookie",
            "X-Api-Key",
            "x_api_key",
            "ApiKey",
            "X-Auth-Token",
            "X-Access-Token",
            "X-Client-Secret",
            "X-Signature",
            "X-Password",
            "Private-Token",
            "SessionId",
            "X-Hmac",
            "X-Key2",
            "Api-Key-1",
            "X-Sig256",
            "Authentication",
            "X-Authentication",
            "XAPIKEY",
            "X-Passcode",
            "X-Pin",
            "X-OTP",
            "X-Authn",
            "X-Authorisation",
            "X-Cred",
            "sessionid",
        ] {
            assert!(is_secret_header(name), "{name} is a secret's name");
        }
        for name in [
            "Idempotency-Key",
            "X-Partner",
            "X-Author",
            "X-Keyword",
            "Monkey",
            "Content-Language",
            "X-Event-Type",
            "X-Passenger",
            "X-Page2",
            "X-V2",
            "X-Account-Id",
            "X-Spinner",
            "X-Side",
            "X-Code",
            // In postbacks a sub-id (`sid`, `subid`), not a session's.
            "X-Sid",
        ] {
            assert!(!is_secret_header(name), "{name} is not a secret's name");
        }
    }

    #[test]
    fn the_request_line_redacts_the_query_s_credentials_only() {
        let line = |url: &str| {
            let t = crate::deliver::http1::parse_url(url.as_bytes()).unwrap();
            request_line_of(Method::Post, &t)
        };
        assert_eq!(
            line("http://h:8080/pb?clickid=C1&token=s3cr3t&amount=9.5&apiKey=k&sid=7"),
            "POST http://h:8080/pb?clickid=C1&token=[redacted]&amount=9.5&apiKey=[redacted]&sid=7"
        );
        assert_eq!(
            line("https://h/pb?api%5Fkey=k&access_token=t&sig=abc&flag&token="),
            "POST https://h/pb?api%5Fkey=[redacted]&access_token=[redacted]&sig=[redacted]&flag&token="
        );
        assert_eq!(line("http://h/a/b"), "POST http://h/a/b");
        assert_eq!(
            line("http://h/pb?a=1;token=t;b=2&sig=s"),
            "POST http://h/pb?a=1;token=[redacted];b=2&sig=[redacted]"
        );
        // A `;` not followed by a parameter is part of the value.
        assert_eq!(
            line("http://h/pb?token=ab;cd&x=1;y"),
            "POST http://h/pb?token=[redacted]&x=1;y"
        );
        assert_eq!(
            line("http://h/?author=x&keyword=y"),
            "POST http://h/?author=x&keyword=y"
        );
    }

    #[test]
    fn a_malformed_url_s_error_does_not_carry_its_query_credentials() {
        let cfg = url_endpoint(r#""http://{Host}.example/pb?token=s3cr3t&oid={Oid}""#);
        let spec = EndpointSpec::compile(0, cfg).unwrap();
        let data = br#"{"Host": "bad host", "Oid": "o-1"}"#;
        let event = EventRecord::new(1, Some("e-1"), "t", None, 0, &[0], data);
        let doc = Doc::parse(bytes::Bytes::from_static(data)).unwrap();
        let mut s = Scratch::default();
        let err = build(&spec, &event, &doc, 0, &mut s, &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cr3t"), "{err}");
        assert!(err.contains("token=[redacted]&oid=o-1"), "{err}");
    }

    /// The request `spec` builds for an event of `data` (the target, or why none).
    fn build_for(spec: &EndpointSpec, data: &'static [u8]) -> Result<Arc<Target>, BuildError> {
        let event = EventRecord::new(1, Some("e-1"), "t", None, 0, &[0], data);
        let doc = Doc::parse(bytes::Bytes::from_static(data)).unwrap();
        build(
            spec,
            &event,
            &doc,
            0,
            &mut Scratch::default(),
            &mut Vec::new(),
        )
    }

    #[test]
    fn a_value_rendered_as_a_dot_segment_makes_a_malformed_url() {
        let cfg = url_endpoint(r#""http://h.example/users/{U}/hook""#);
        let spec = EndpointSpec::compile(0, cfg).unwrap();
        let attempt = |data: &'static [u8]| build_for(&spec, data);
        for data in [&br#"{"U": ".."}"#[..], br#"{"U": "."}"#] {
            match attempt(data) {
                Err(BuildError::MalformedUrl { error, .. }) => {
                    assert_eq!(error, UrlError::DotSegment)
                }
                other => panic!("{other:?}"),
            }
        }
        let t = attempt(br#"{"U": "a..b"}"#).unwrap();
        assert_eq!(t.path_and_query, "/users/a..b/hook");
        // A static URL is sent as the operator wrote it.
        let cfg = first_endpoint(
            "[[endpoint]]\nname = \"p\"\nevents = [\"t\"]\nurl = \"http://h/a/../b\"\n",
        );
        let spec = EndpointSpec::compile(0, cfg).unwrap();
        assert_eq!(spec.static_target.unwrap().path_and_query, "/a/../b");
    }

    /// An https host rendered as a number the resolver reads as an address but TLS
    /// cannot name fails the delivery at once, as a malformed URL; the same host in a
    /// static URL refuses the endpoint.
    #[test]
    fn an_https_host_tls_cannot_name_makes_a_malformed_url() {
        let cfg = url_endpoint(r#""https://{H}/hook""#);
        let spec = EndpointSpec::compile(0, cfg).unwrap();
        let attempt = |data: &'static [u8]| build_for(&spec, data);
        match attempt(br#"{"H": "134744072"}"#) {
            Err(BuildError::MalformedUrl { error, .. }) => {
                assert_eq!(error, UrlError::NoServerName)
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(attempt(br#"{"H": "8.8.8.8"}"#).unwrap().host, "8.8.8.8");
        let cfg = first_endpoint(
            "[[endpoint]]\nname = \"p\"\nevents = [\"t\"]\nurl = \"https://134744072/hook\"\n",
        );
        let err = EndpointSpec::compile(0, cfg)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("field `url`: invalid host for https"), "{err}");
    }

    /// One small event whose join reads a large field for every element of a long
    /// array would render a body of hundreds of MiB: rendering stops just past the
    /// limit, and the request is not built (never retried: it renders the same again).
    #[test]
    fn an_amplifying_join_stops_at_the_size_limit() {
        let toml = |extra: &str| {
            format!("[[endpoint]]\nname = \"p\"\nevents = [\"t\"]\nurl = \"http://h/x\"\n{extra}\n")
        };
        let big = "x".repeat(20_000);
        let items = vec!["0"; 10_000].join(",");
        let data = format!(r#"{{"Oid": "{big}", "items": [{items}]}}"#);
        let event = EventRecord::new(1, Some("e-1"), "t", None, 0, &[0], data.as_bytes());
        let doc = Doc::parse(bytes::Bytes::from(data.clone())).unwrap();
        let build_with = |extra: &str, s: &mut Scratch| {
            let spec = EndpointSpec::compile(0, first_endpoint(&toml(extra))).unwrap();
            build(&spec, &event, &doc, 0, s, &mut Vec::new())
        };
        let mut s = Scratch::default();
        let body = r#"format = "text"
body = '{join(items, i, "{i}:{Oid}")}'"#;
        match build_with(body, &mut s) {
            Err(BuildError::TooLarge {
                part: "body",
                limit,
            }) => assert_eq!(limit, MAX_BODY_BYTES),
            other => panic!("{other:?}"),
        }
        // It stopped one element past the limit, not after all 10,000 (200 MB).
        assert!(s.body.len() <= MAX_BODY_BYTES + 20_010, "{}", s.body.len());
        assert_eq!(
            build_with(body, &mut s).unwrap_err().to_string(),
            "body over 8192 KiB after rendering: not sent"
        );
        s.trim();
        assert!(s.body.capacity() <= KEEP_BYTES);
        // The same in a header value and in the URL.
        let header = r#"headers = { X-All = '{join(items, i, "{Oid}")}' }"#;
        assert!(matches!(
            build_with(header, &mut s),
            Err(BuildError::TooLarge {
                part: "header values",
                ..
            })
        ));
        let spec = EndpointSpec::compile(
            0,
            url_endpoint(r#""http://h/x?all={join(items, i, \"{Oid}\")}""#),
        )
        .unwrap();
        assert!(matches!(
            build(&spec, &event, &doc, 0, &mut s, &mut Vec::new()),
            Err(BuildError::TooLarge { part: "URL", .. })
        ));
        // A body up to the limit is sent.
        let few = r#"{"Oid": "abc", "items": [1, 2]}"#;
        let event = EventRecord::new(1, Some("e-1"), "t", None, 0, &[0], few.as_bytes());
        let doc = Doc::parse(bytes::Bytes::from_static(few.as_bytes())).unwrap();
        let spec = EndpointSpec::compile(0, first_endpoint(&toml(body))).unwrap();
        let mut out = Vec::new();
        build(&spec, &event, &doc, 0, &mut s, &mut out).unwrap();
        assert!(out.ends_with(b"1:abc,2:abc"));
    }

    /// The attempt record holds a form body's credentials redacted: the store never
    /// has them (it did, and the log redacted them only as it read them).
    #[test]
    fn a_form_body_is_written_to_the_attempt_log_redacted() {
        let toml = "[[endpoint]]\nname = \"p\"\nevents = [\"t\"]\nurl = \"http://h/x\"\n\
                    format = \"form\"\nbody = \"api_key=K3Y&oid={oid}\"\n";
        let spec = EndpointSpec::compile(0, first_endpoint(toml)).unwrap();
        let data = r#"{"oid":"o1"}"#;
        let event = EventRecord::new(1, Some("e-1"), "t", None, 0, &[0], data.as_bytes());
        let doc = Doc::parse(bytes::Bytes::from(data)).unwrap();
        let mut s = Scratch::default();
        let mut wire = Vec::new();
        build(&spec, &event, &doc, 0, &mut s, &mut wire).unwrap();
        assert!(wire.ends_with(b"api_key=K3Y&oid=o1"));
        let log = log_of(&spec, &s);
        assert_eq!(log.body_excerpt, b"api_key=[redacted]&oid=o1");
        assert_eq!(log.body_len, 18);
    }

    #[test]
    fn a_form_body_s_credential_fields_are_redacted_as_a_query_s() {
        assert_eq!(
            redact_form("api_key=k1&password=p%20w&oid=o1&token=&x"),
            "api_key=[redacted]&password=[redacted]&oid=o1&token=&x"
        );
        assert_eq!(redact_form("oid=1&amount=2.50"), "oid=1&amount=2.50");
        assert_eq!(redact_form(r#"{"api_key":"k"}"#), r#"{"api_key":"k"}"#);
        assert_eq!(
            mask_form_secrets("api_key=s3&oid={OrderId}&x={Bad"),
            "api_key=**&oid={OrderId}&x={Bad"
        );
        // A field that starts in a join's text; a whole value, placeholders and joins
        // in it too (R2: a quote or a join right after the `=`).
        assert_eq!(
            mask_form_secrets(r#"x={join(l, i, "api_key=SEK_10&{i}", "&")}&y={bad("#),
            r#"x={join(l, i, "api_key=******&{i}", "&")}&y={bad("#
        );
        assert_eq!(
            mask_form_secrets(r#"api_key={join(l, i, "SEK2{i}", "")}&x={bad("#),
            r#"api_key=***************************&x={bad("#
        );
        assert_eq!(
            mask_form_secrets(r#"api_key="SEK6"&x={bad("#),
            r#"api_key=******&x={bad("#
        );
        assert_eq!(
            mask_form_secrets("api_key=SEK14 plus&x"),
            "api_key=**********&x"
        );
        // In a join's text: an escaped quote, a placeholder in the value.
        assert_eq!(
            mask_form_secrets(r#"x={join(l, i, "api_key=\"SEK7\"&{i}", "&")}"#),
            r#"x={join(l, i, "api_key=********&{i}", "&")}"#
        );
        assert_eq!(
            mask_form_secrets(r#"x={join(l, i, "api_key={i}SEK15", "&")}"#),
            r#"x={join(l, i, "api_key=********", "&")}"#
        );
        assert_eq!(
            mask_form_secrets("a=1;pass%77ord=pw x"),
            "a=1;pass%77ord=****"
        );
    }

    #[test]
    fn a_url_line_s_query_credentials_are_masked_in_place() {
        assert_eq!(
            mask_query_secrets("https://h/pb?oid={OrderId}&api_key=s3cr3t&x={Bad"),
            "https://h/pb?oid={OrderId}&api_key=******&x={Bad"
        );
        assert_eq!(mask_query_secrets("https://h/pb/{Id"), "https://h/pb/{Id");
        // A parameter in a join's text (R2: it showed).
        assert_eq!(
            mask_query_secrets(r#"https://h/?x={join(l, i, "token=SEK3&{i}", "&")}&y={bad("#),
            r#"https://h/?x={join(l, i, "token=****&{i}", "&")}&y={bad("#
        );
        assert_eq!(
            mask_query_secrets("http://user:pw@h:1/x/{bad?token=t"),
            "http://*******@h:1/x/{bad?token=*"
        );
        assert_eq!(mask_query_secrets("http://h/a@b/{x"), "http://h/a@b/{x");
        assert_eq!(
            mask_query_secrets(r#"https://u:{default(P, "a/b")}@h/{x"#),
            "https://*********************@h/{x"
        );
        assert_eq!(mask_query_secrets("?token=é€&sig="), "?token=**&sig=");
        // Without a scheme (refused, but the line is shown first).
        assert_eq!(mask_query_secrets("user:pw@h:1/{bad"), "*******@h:1/{bad");
        assert_eq!(mask_query_secrets("//u:pw@h/{bad"), "//****@h/{bad");
        assert_eq!(mask_query_secrets("h:1/a@b/{x"), "h:1/a@b/{x");
        // A mistyped scheme.
        assert_eq!(mask_query_secrets("http:/u:pw@h/{bad"), "http:/****@h/{bad");
        assert_eq!(mask_query_secrets("http//u:pw@h/{bad"), "http//****@h/{bad");
        assert_eq!(
            mask_query_secrets("https:\\\\u:pw@h/{x"),
            "https:\\\\****@h/{x"
        );
        assert_eq!(
            mask_query_secrets("http:///u:pw@h/{bad"),
            "http:///****@h/{bad"
        );
    }

    #[test]
    fn standard_webhooks_test_vector() {
        // The example from the Standard Webhooks specification.
        use base64::Engine as _;
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let mut sig = String::new();
        sign(
            &[key],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            br#"{"test": 2432232314}"#,
            &mut sig,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}

/// Whole requests built for arbitrary data: whatever the values hold, the head parses
/// as the endpoint's own (its host, its path's segments, its headers, one each), and a
/// json body is JSON (SPEC §5: no data can break the request).
#[cfg(test)]
mod proptests {
    use super::*;
    use crate::endpoint::first_endpoint;
    use proptest::prelude::*;

    fn tricky() -> impl Strategy<Value = String> {
        let c = prop_oneof![
            4 => prop::sample::select(vec![
                '\r', '\n', '\0', '\t', ' ', '\u{1}', '\u{7f}', '\u{85}', '\u{9f}', '\u{a0}',
                '\u{2028}', '\u{feff}', '\u{fffe}', '"', '\\', '/', '?', '#', '@', ':', '%',
                '&', '=', '+', ';', '.', '[', ']', '{', '}', '<', '>', 'é', '😀', 'a', 'Z', '0',
            ]),
            1 => any::<char>(),
        ];
        prop::collection::vec(c, 0..12).prop_map(|v| v.into_iter().collect())
    }

    fn value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        prop_oneof![
            4 => tricky().prop_map(Value::String),
            1 => Just(Value::Null),
            1 => any::<i64>().prop_map(Value::from),
            1 => tricky().prop_map(|s| serde_json::json!({ "k": s, "l": [s] })),
        ]
    }

    const TOML: &str = r#"[[endpoint]]
name = "p"
events = ["t"]
url = 'http://x-{H}.example:8080/p/{A}/q?b={B}&o={O}'
format = "FORMAT"
headers = { "X-A" = 'pre {A} post', "X-B" = '{B}', "X-O" = '{O}' }
body = 'BODY'
"#;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn no_data_breaks_the_request(
            h in prop_oneof![3 => "[a-z0-9-]{1,10}".prop_map(serde_json::Value::from), 1 => value()],
            a in value(), b in value(), o in value(), fmt in 0usize..4,
        ) {
            let (format, body) = [
                ("json", r#"{"a": "{A}", "b": {B}, "o": {O}, "h": ["{H}", {H}]}"#),
                ("xml", r#"<r a="{A}">{B}<o>{O}</o></r>"#),
                ("form", "a={A}&b={B}&o={O}"),
                ("text", "{A}|{B}|{O}"),
            ][fmt];
            let toml = TOML.replace("FORMAT", format).replace("BODY", body);
            let spec = EndpointSpec::compile(0, first_endpoint(&toml)).unwrap();
            let data = serde_json::json!({ "H": h, "A": a, "B": b, "O": o }).to_string();
            let event = EventRecord::new(1, Some("e-1"), "t", None, 0, &[0], data.as_bytes());
            let doc = Doc::parse(bytes::Bytes::from(data.clone())).unwrap();
            let mut out = Vec::new();
            let target = match build(&spec, &event, &doc, 0, &mut Scratch::default(), &mut out) {
                Ok(t) => t,
                // Only the host may make a URL that cannot be sent, or a whole path
                // segment of `.` or `..` (docs/templates.md).
                Err(BuildError::MalformedUrl { error: UrlError::DotSegment, .. }) => {
                    prop_assert!(a == "." || a == "..", "{data}");
                    return Ok(());
                }
                Err(BuildError::MalformedUrl { .. }) => {
                    prop_assert!(!h.is_string() || !h.as_str().unwrap().bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'), "{data}");
                    return Ok(());
                }
                Err(e) => return Err(TestCaseError::fail(format!("{e}: {data}"))),
            };
            // The host is the template's, the value in its place.
            if let Some(h) = h.as_str() {
                prop_assert_eq!(&target.host, &format!("x-{}.example", h.to_ascii_lowercase()));
            }
            prop_assert!(target.host.starts_with("x-") && target.host.ends_with(".example"), "{}", target.host);
            prop_assert_eq!(target.port, 8080);
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut req = httparse::Request::new(&mut headers);
            let head = match req.parse(&out) {
                Ok(httparse::Status::Complete(n)) => n,
                other => return Err(TestCaseError::fail(format!("{other:?}: {:?}", String::from_utf8_lossy(&out)))),
            };
            prop_assert_eq!(req.method, Some("POST"));
            // The path keeps its literal segments; each value is one segment or value.
            let path = req.path.unwrap();
            let segs: Vec<&str> = path.split(['/', '?', '&']).collect();
            prop_assert_eq!(segs.len(), 6, "{}", path);
            prop_assert!(segs[0].is_empty() && segs[1] == "p" && segs[3] == "q", "{}", path);
            prop_assert!(segs[4].starts_with("b=") && segs[5].starts_with("o="), "{}", path);
            let names: Vec<&str> = req.headers.iter().map(|h| h.name).collect();
            prop_assert_eq!(
                names,
                ["Host", "User-Agent", "Content-Type", "webhook-id", "webhook-timestamp", "X-A", "X-B", "X-O", "Content-Length"]
            );
            let host = std::str::from_utf8(req.headers[0].value).unwrap();
            prop_assert_eq!(host, format!("{}:8080", target.host));
            let len: usize = std::str::from_utf8(req.headers[8].value).unwrap().parse().unwrap();
            prop_assert_eq!(len, out.len() - head);
            for h in &req.headers[5..8] {
                prop_assert!(!String::from_utf8_lossy(h.value).chars().any(char::is_control), "{:?}", h);
            }
            if format == "json" {
                let parsed: Result<serde_json::Value, _> = serde_json::from_slice(&out[head..]);
                prop_assert!(parsed.is_ok(), "{:?}", String::from_utf8_lossy(&out[head..]));
            }
        }
    }
}
