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
use crate::deliver::http1::{parse_url, write_request_head_iter, Target, UrlError};
use crate::endpoint::EndpointSpec;
use crate::store::{EventRecord, RequestLog, BODY_EXCERPT};
use crate::template::{render_default_body, Doc};

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

/// A request that cannot be built: never retried.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("malformed URL {url:?}: {source}")]
    MalformedUrl { url: String, source: UrlError },
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
    let target = match &spec.static_target {
        Some(t) => t.clone(),
        None => {
            s.url.clear();
            spec.url.render(doc, &mut s.url);
            match parse_url(&s.url) {
                Ok(t) => Arc::new(t),
                Err(source) => {
                    return Err(BuildError::MalformedUrl {
                        url: String::from_utf8_lossy(&s.url).into_owned(),
                        source,
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
        match &spec.body {
            Some(t) => t.render(doc, &mut s.body),
            None => render_default_body(body_format(spec), doc, &mut s.body),
        }
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
        t.render(doc, &mut s.values);
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
pub fn sign(keys: &[Vec<u8>], id: &str, ts: &str, body: &[u8], out: &mut String) {
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

/// Header names whose values the attempt log never keeps.
pub const SECRET_HEADERS: [&str; 2] = ["authorization", "proxy-authorization"];

/// Whether a header's value is a secret ([`SECRET_HEADERS`], by name in any case).
pub fn is_secret_header(name: &str) -> bool {
    SECRET_HEADERS.iter().any(|h| name.eq_ignore_ascii_case(h))
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

/// `METHOD scheme://host/path?query`.
pub fn request_line_of(method: Method, target: &Target) -> String {
    let scheme = match target.scheme {
        crate::deliver::http1::Scheme::Http => "http",
        crate::deliver::http1::Scheme::Https => "https",
    };
    format!(
        "{} {scheme}://{}{}",
        method.as_str(),
        target.host_header,
        target.path_and_query
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
