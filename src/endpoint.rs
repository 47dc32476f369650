//! A runnable endpoint: its configuration with every template compiled.
//!
//! Owns turning an [`EndpointConfig`] into an [`EndpointSpec`] (URL, header values and
//! body compiled once, errors naming the endpoint, the field and the position). It must
//! not do I/O; workers own the endpoint's live state (queue, pool, counters).

use std::sync::Arc;

use crate::config::{EndpointConfig, Format, Method, ShownName};
use crate::deliver::dns::is_special_localhost;
use crate::deliver::http1::{parse_url, Target, UrlError};
use crate::deliver::request::{is_secret_header, mask_form_secrets, mask_query_secrets};
use crate::store::EndpointId;
use crate::template::{BodyFormat, Context, Template, TemplateError};

/// A template that failed to compile, located.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("endpoint {endpoint}: field `{field}`: {error}")]
    Template {
        endpoint: String,
        field: String,
        error: Box<TemplateError>,
    },
    #[error("{0}")]
    Field(String),
}

/// What makes a URL template with placeholders unable to ever make a valid URL, judged
/// from its authority (after `scheme://`, up to the first `/`, `?` or `#`): an `@`
/// (credentials, refused as in a static URL). Every delivery would fail, so the
/// endpoint is refused instead, with the column.
fn templated_authority_problem(src: &str) -> Option<String> {
    let (start, authority) = authority(src)?;
    if let Some(at) = authority.find('@') {
        return Some(format!(
            "credentials in the URL are not supported (column {})",
            src[..start + at].chars().count() + 1
        ));
    }
    // Literal: every rendered URL has it, so its faults (a bad port, no host) are the
    // template's, not a delivery's.
    match literal_authority(src)? {
        Ok(_) | Err(UrlError::UnsupportedScheme) => None,
        Err(e) => Some(e.to_string()),
    }
}

/// A URL (template)'s authority, after `scheme://` up to the first `/`, `?` or `#`,
/// and where it starts.
fn authority(src: &str) -> Option<(usize, &str)> {
    let start = src.find("://")? + 3;
    let rest = &src[start..];
    Some((
        start,
        &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())],
    ))
}

/// A URL (template) cut after its authority and parsed, when the authority is literal
/// text, which every rendered URL then has; `None` when a placeholder (or an escape)
/// writes it: that is judged per delivery.
fn literal_authority(src: &str) -> Option<Result<Target, UrlError>> {
    let (start, authority) = authority(src)?;
    if authority.contains(['{', '\\']) {
        return None;
    }
    Some(parse_url(
        format!("{}/", &src[..start + authority.len()]).as_bytes(),
    ))
}

/// With the SSRF guard on (`allow_private_networks` off), a URL whose host is written as
/// an address the guard refuses (`http://127.0.0.1/pb`, `http://10.0.0.5/pb`) would fail
/// every delivery: the problem saying so, for `check`, `serve` and the API. A host that
/// is a name (`localhost` too) or a placeholder is judged at each delivery, once
/// resolved, as the guard must (a name may resolve elsewhere tomorrow).
pub fn guarded_url_problem(cfg: &EndpointConfig) -> Option<String> {
    let ip = guarded_address(&literal_authority(&cfg.url)?.ok()?)?;
    Some(format!(
        "endpoint {}: field `url`: {ip} is a loopback, private or reserved address, which \
         the SSRF guard refuses while `allow_private_networks` is off: every delivery would \
         fail (for a receiver on this machine or network, set `allow_private_networks = \
         true` under [server])",
        ShownName(&cfg.name)
    ))
}

/// With the SSRF guard on, a URL whose host is written as `localhost` or a name under it
/// (`api.localhost`): the resolver answers such names with the loopback without asking
/// the network ([`is_special_localhost`]), so every delivery would be refused. A
/// warning, not a refusal, as for every name (judged at each delivery): what `check` and
/// `serve` say of it.
pub fn loopback_name_warning(cfg: &EndpointConfig) -> Option<String> {
    let target = literal_authority(&cfg.url)?.ok()?;
    let host = target.host.strip_suffix('.').unwrap_or(&target.host);
    (target.ip.is_none() && is_special_localhost(host)).then(|| {
        format!(
            "warning: endpoint {}: field `url`: {host} is this machine's loopback, which the \
             SSRF guard refuses while `allow_private_networks` is off: every delivery would \
             fail (for a receiver on this machine, set `allow_private_networks = true` under \
             [server])",
            ShownName(&cfg.name)
        )
    })
}

/// The address `target`'s host is written as, when the SSRF guard refuses it (a name is
/// judged once resolved, at each delivery).
pub fn guarded_address(target: &Target) -> Option<std::net::IpAddr> {
    target
        .ip
        .or_else(|| inet_aton(&target.host).map(std::net::IpAddr::V4))
        .filter(|ip| crate::deliver::ssrf::is_blocked(*ip))
}

/// A host in one of the IPv4 forms the resolver takes as an address without asking DNS
/// (`127.1`, `2130706433`, `0x7f000001`, `0177.0.0.1`: inet_aton's), which the URL
/// parser leaves as a name: the address it stands for.
fn inet_aton(host: &str) -> Option<std::net::Ipv4Addr> {
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'.' || b == b'x' || b == b'X')
    {
        return None;
    }
    extern "C" {
        // glibc's, as getaddrinfo applies it to a numeric host (the `libc` crate does
        // not declare it).
        fn inet_aton(cp: *const libc::c_char, inp: *mut libc::in_addr) -> libc::c_int;
    }
    let c = std::ffi::CString::new(host).ok()?;
    let mut addr = libc::in_addr { s_addr: 0 };
    // SAFETY: a NUL-terminated string and an in_addr for the result.
    (unsafe { inet_aton(c.as_ptr(), &mut addr) } != 0)
        .then(|| std::net::Ipv4Addr::from(u32::from_be(addr.s_addr)))
}

/// The compiled endpoint, shared read-only by the worker that owns it.
pub struct EndpointSpec {
    pub id: EndpointId,
    pub cfg: EndpointConfig,
    pub url: Template,
    /// Parsed once when the URL has no placeholders.
    pub static_target: Option<Arc<Target>>,
    /// `METHOD URL` for the attempt log, when the URL is static.
    pub static_request_line: Option<Arc<str>>,
    pub headers: Vec<(String, Template)>,
    pub body: Option<Template>,
    /// Whether any template reads event data (so the event's data must be indexed).
    pub needs_doc: bool,
    /// Decoded signing keys (`whsec_` stripped, base64 decoded).
    pub signing_keys: Vec<Vec<u8>>,
    /// Why this stored definition does not compile, for an endpoint kept only so that
    /// its deliveries wait ([`EndpointSpec::not_compiling`]); `None` for a runnable one.
    pub broken: Option<String>,
}

fn body_format(f: Format) -> BodyFormat {
    match f {
        Format::Json => BodyFormat::Json,
        Format::Xml => BodyFormat::Xml,
        Format::Form => BodyFormat::Form,
        Format::Text => BodyFormat::Text,
    }
}

/// How much of a template its compile error may print.
#[derive(Clone, Copy)]
enum Secret {
    /// All of it.
    No,
    /// None of it: the template is a secret (an `Authorization` header's).
    Whole,
    /// All but the values of credential-named query parameters (a URL's `?token=…`).
    QueryValues,
    /// All but the values of credential-named fields of a form body (`api_key=…&`).
    FormValues,
}

impl EndpointSpec {
    /// Validates and compiles; the first error is returned.
    pub fn compile(id: EndpointId, cfg: EndpointConfig) -> Result<EndpointSpec, EndpointError> {
        Self::compile_all(id, cfg).map_err(|mut errs| errs.remove(0))
    }

    /// Validates and compiles, collecting every error.
    pub fn compile_all(
        id: EndpointId,
        cfg: EndpointConfig,
    ) -> Result<EndpointSpec, Vec<EndpointError>> {
        let mut errors: Vec<EndpointError> = cfg
            .problems()
            .into_iter()
            .map(EndpointError::Field)
            .collect();
        let name = cfg.name.clone();
        // `secret`: how much of the template its error may print.
        let mut compile = |field: &str, src: &str, ctx: Context, secret: Secret| {
            match Template::compile(src, ctx) {
                Ok(t) => Some(t),
                Err(error) => {
                    errors.push(EndpointError::Template {
                        endpoint: ShownName(&name).to_string(),
                        field: field.to_string(),
                        error: Box::new(match secret {
                            Secret::No => error,
                            Secret::Whole => error.masked(),
                            Secret::QueryValues => error.masked_with(mask_query_secrets),
                            Secret::FormValues => error.masked_with(mask_form_secrets),
                        }),
                    });
                    None
                }
            }
        };
        let url = compile("url", &cfg.url, Context::Url, Secret::QueryValues);
        let mut headers = Vec::new();
        for (k, v) in &cfg.headers {
            let secret = if is_secret_header(k) {
                Secret::Whole
            } else {
                Secret::No
            };
            if let Some(t) = compile(&format!("headers.{k}"), v, Context::Header, secret) {
                headers.push((k.clone(), t));
            }
        }
        let body = match (&cfg.body, cfg.method) {
            (Some(src), m) if m != Method::Get => compile(
                "body",
                src,
                Context::Body(body_format(cfg.format)),
                // A form body is a query: its credential-named fields are masked.
                if cfg.format == Format::Form {
                    Secret::FormValues
                } else {
                    Secret::No
                },
            ),
            _ => None,
        };
        let mut signing_keys = Vec::new();
        if let Some(secrets) = &cfg.signing_secret {
            use base64::Engine as _;
            // An empty key would sign with no secret at all: refused, as is an empty list.
            let decoded: Option<Vec<Vec<u8>>> = secrets
                .split_whitespace()
                .map(|s| {
                    s.strip_prefix("whsec_")
                        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                        .filter(|k| !k.is_empty())
                })
                .collect();
            match decoded {
                Some(keys) if !keys.is_empty() => signing_keys = keys,
                _ => errors.push(EndpointError::Field(format!(
                    "endpoint {}: field `signing_secret`: each secret must be whsec_<base64> of a non-empty key",
                    ShownName(&cfg.name)
                ))),
            }
        }
        let Some(url) = url else {
            return Err(errors);
        };
        let static_target = if let Some(literal) = url.literal() {
            match parse_url(&literal) {
                Ok(t) => Some(Arc::new(t)),
                // `problems` has reported the scheme, for static and templated URLs alike.
                Err(UrlError::UnsupportedScheme) => None,
                Err(e) => {
                    errors.push(EndpointError::Field(format!(
                        "endpoint {}: field `url`: {e}",
                        ShownName(&cfg.name)
                    )));
                    None
                }
            }
        } else {
            if let Some(problem) = templated_authority_problem(&cfg.url) {
                errors.push(EndpointError::Field(format!(
                    "endpoint {}: field `url`: {problem}",
                    ShownName(&cfg.name)
                )));
            }
            None
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let needs_doc = !url.is_static()
            || headers.iter().any(|(_, t)| !t.is_static())
            || body.as_ref().is_some_and(|b| !b.is_static())
            || (cfg.body.is_none() && matches!(cfg.format, Format::Form | Format::Xml));
        let static_request_line = static_target
            .as_ref()
            .map(|t| crate::deliver::request::request_line_of(cfg.method, t).into());
        Ok(EndpointSpec {
            id,
            cfg,
            url,
            static_target,
            static_request_line,
            headers,
            body,
            needs_doc,
            signing_keys,
            broken: None,
        })
    }

    /// An endpoint whose stored definition no longer compiles (a newer version checks
    /// templates more strictly). It keeps its id and definition, so the admin API shows
    /// it and a `PUT` can replace it, and its deliveries wait paused instead of being
    /// dropped; it is disabled, and nothing runs its templates: they are empty stand-ins.
    pub fn not_compiling(id: EndpointId, cfg: EndpointConfig, error: String) -> EndpointSpec {
        let url = Template::compile("", Context::Url).expect("an empty template compiles");
        EndpointSpec {
            id,
            cfg,
            url,
            static_target: None,
            static_request_line: None,
            headers: Vec::new(),
            body: None,
            needs_doc: false,
            signing_keys: Vec::new(),
            broken: Some(error),
        }
    }
}

/// The first endpoint of a config file's text (for tests).
#[cfg(test)]
pub(crate) fn first_endpoint(toml: &str) -> EndpointConfig {
    let cfg = crate::config::Config::parse(toml, "t").expect("the config parses");
    cfg.endpoints[0].clone()
}

/// Endpoint `p` for events `t` at `url` (a TOML string, quotes included), for tests.
#[cfg(test)]
pub(crate) fn url_endpoint(url: &str) -> EndpointConfig {
    first_endpoint(&format!(
        "[[endpoint]]\nname = \"p\"\nevents = [\"t\"]\nurl = {url}\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_written_with_a_refused_address_is_a_problem_with_the_guard_on() {
        let problem = |url: &str| {
            let cfg = first_endpoint(&format!(
                "[[endpoint]]\nname = \"p\"\nevents = [\"t\"]\nurl = {url:?}\n"
            ));
            guarded_url_problem(&cfg)
        };
        for url in [
            "http://127.0.0.1:8080/pb",
            "https://[::1]/pb?x={X}",
            "http://10.1.2.3/pb",
            "http://169.254.169.254/latest",
            "http://[::ffff:127.0.0.1]/",
            // The IPv4 forms the resolver reads as addresses.
            "http://127.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://0/",
        ] {
            let p = problem(url).unwrap_or_else(|| panic!("{url} passed"));
            assert!(p.contains("which the SSRF guard refuses"), "{url}: {p}");
        }
        for url in [
            "http://93.184.216.34/pb",
            "http://partner.example/pb",
            "http://localhost:8080/pb",
            "http://{Host}/pb",
            "http://beef.example/",
            "http://1e100.net/",
        ] {
            assert_eq!(problem(url), None, "{url}");
        }
    }

    #[test]
    fn a_url_naming_localhost_is_warned_of() {
        let warning = |url: &str| {
            loopback_name_warning(&first_endpoint(&format!(
                "[[endpoint]]\nname = \"p\"\nevents = [\"t\"]\nurl = {url:?}\n"
            )))
        };
        for (url, host) in [
            ("http://localhost/pb", "localhost"),
            ("https://LocalHost:8443/pb?x={X}", "localhost"),
            ("http://localhost./", "localhost"),
            ("http://api.localhost/", "api.localhost"),
        ] {
            let w = warning(url).unwrap_or_else(|| panic!("{url} passed"));
            assert!(
                w.starts_with(&format!(
                    "warning: endpoint p: field `url`: {host} is this machine's loopback"
                )),
                "{url}: {w}"
            );
        }
        for url in [
            "http://localhost.example/pb",
            "http://notlocalhost/",
            "http://{Host}/pb",
            "http://127.0.0.1/pb",
            "http://partner.example/?h=localhost",
        ] {
            assert_eq!(warning(url), None, "{url}");
        }
    }

    #[test]
    fn a_secret_headers_template_error_does_not_print_the_secret() {
        let cfg = first_endpoint(
            r#"
[[endpoint]]
name = "p"
events = ["t"]
url = "http://partner.example/hook"
headers = { Authorization = "Bearer s3cr3t-t0ken {Id", X-Trace = "trace-v4lue {Id" }
"#,
        );
        let errs = EndpointSpec::compile_all(0, cfg)
            .err()
            .expect("both headers fail");
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 2, "{text:?}");
        let auth = text
            .iter()
            .find(|t| t.contains("headers.Authorization"))
            .unwrap();
        assert!(!auth.contains("s3cr3t"), "{auth}");
        // The caret still points where the problem is.
        assert!(
            auth.ends_with("********************\n                    ^"),
            "{auth}"
        );
        let other = text.iter().find(|t| t.contains("headers.X-Trace")).unwrap();
        assert!(other.contains("trace-v4lue {Id"), "{other}");
    }

    #[test]
    fn an_empty_signing_key_is_refused() {
        let with_secret = |secret: &str| {
            let mut cfg = url_endpoint("'http://h/'");
            cfg.signing_secret = Some(secret.to_string());
            EndpointSpec::compile(0, cfg).map(|s| s.signing_keys.len())
        };
        assert_eq!(
            with_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").ok(),
            Some(1)
        );
        for bad in [
            "whsec_",
            "",
            " ",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw whsec_",
        ] {
            let err = with_secret(bad).err().map(|e| e.to_string());
            assert_eq!(
                err.as_deref(),
                Some("endpoint p: field `signing_secret`: each secret must be whsec_<base64> of a non-empty key"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_url_without_placeholders_has_its_escapes_written_out() {
        let cfg = url_endpoint(r#"'http://h/y?a=\{A\}&b=\\&c=\"'"#);
        let spec = EndpointSpec::compile(0, cfg).unwrap();
        let target = spec.static_target.expect("a static URL");
        // Written out, then percent-encoded where a request target may not hold them.
        assert_eq!(target.path_and_query, "/y?a=%7BA%7D&b=%5C&c=%22");
    }

    /// A templated URL that no data could make valid is refused when compiled, not
    /// failed at every delivery.
    #[test]
    fn a_templated_url_that_can_never_be_valid_is_refused() {
        let err = |url: &str| match EndpointSpec::compile(0, url_endpoint(url)) {
            Err(e) => e.to_string(),
            Ok(_) => String::new(),
        };
        assert_eq!(
            err(r#"'http://{User}@127.0.0.1:20401/ui'"#),
            "endpoint p: field `url`: credentials in the URL are not supported (column 14)"
        );
        // A literal authority no delivery could send to: its fault, as without
        // placeholders.
        for (url, why) in [
            (r#"'http://127.0.0.1:99999/p?x={A}'"#, "invalid port"),
            (r#"'http://127.0.0.1:abc/p/{A}'"#, "invalid port"),
            (r#"'http:///p{A}'"#, "missing host"),
            (r#"'http://:23301/p?x={A}'"#, "missing host"),
            (r#"'http://[]/p{A}'"#, "invalid host"),
        ] {
            assert_eq!(err(url), format!("endpoint p: field `url`: {why}"), "{url}");
        }
        // Placeholders elsewhere in the authority, and `@` or `[` after it, are fine.
        for ok in [
            r#"'http://127.0.0.1:023301/p/{A}'"#,
            r#"'http://{Host}:8080/x'"#,
            r#"'http://h:{Port}/x'"#,
            r#"'http://[::1]:8080/{P}'"#,
            r#"'http://[fd00::{N}]:8080/x'"#,
            r#"'http://h/x?to=a@b.c&k={K}'"#,
            r#"'http://h/{P}/[a]'"#,
        ] {
            assert_eq!(err(ok), "", "{ok}");
        }
    }

    #[test]
    fn a_secret_template_error_s_message_does_not_quote_it() {
        let err = |url: &str, header: &str| {
            let cfg = first_endpoint(&format!(
                "[[endpoint]]\nname = \"p\"\nevents = [\"t\"]\nurl = \"{url}\"\n\
                     headers = {{ X-Api-Key = \"{header}\" }}\n"
            ));
            EndpointSpec::compile(0, cfg)
                .err()
                .expect("the template fails")
                .to_string()
        };
        // A secret header's: the function's name and the character found are masked.
        let e = err("http://h/pb", "k3y-{s3cr3tfn(x)}");
        assert!(!e.contains("s3cr3tfn"), "{e}");
        assert!(e.contains("unknown function `********`"), "{e}");
        let e = err("http://h/pb", "k3y-{ab!}");
        assert!(e.contains("found `*`"), "{e}");
        // A URL's query credential: masked where the problem lies in its value…
        let e = err("http://h/pb?token=ab{s3cr3tfn(x)}", "k");
        assert!(!e.contains("s3cr3tfn"), "{e}");
        // …but not elsewhere in the URL.
        let e = err("http://h/pb?token=ab&oid={Order!}", "k");
        assert!(e.contains("found `!`"), "{e}");
    }

    #[test]
    fn a_url_template_error_does_not_print_its_query_credentials() {
        let cfg = url_endpoint(r#""http://partner.example/pb?token=s3cr3t&oid={OrderId""#);
        let err = EndpointSpec::compile(0, cfg)
            .err()
            .expect("the url fails")
            .to_string();
        assert!(!err.contains("s3cr3t"), "{err}");
        assert!(
            err.ends_with(&format!(
                "http://partner.example/pb?token=******&oid={{OrderId\n{}^",
                " ".repeat(43)
            )),
            "{err}"
        );
    }
}
