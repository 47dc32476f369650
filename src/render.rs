//! `ricochet render`: the exact request an endpoint would get for an event.
//!
//! Uses the same request builder as the workers, so the output is byte-for-byte what a
//! receiver sees (the `webhook-timestamp` and signature are those of "now"). It must not
//! start a server or touch a data dir.

use anyhow::{anyhow, bail};
use bytes::Bytes;

use crate::config::Config;
use crate::deliver::request::{build, Scratch};
use crate::endpoint::{guarded_address, EndpointSpec};
use crate::ingest::parse::LineParser;
use crate::store::{seq_floor, EventRecord};
use crate::template::Doc;

/// The request, and why the endpoint would not get this event at all, if it would not
/// (its type or account is not the endpoint's), or why it would never be sent (the SSRF
/// guard refuses the address its URL names).
#[derive(Debug)]
pub struct Rendered {
    pub request: Vec<u8>,
    pub not_routed: Option<String>,
    pub refused: Option<String>,
}

/// Renders the request `endpoint` of `cfg` would receive for the event in `input`: one
/// event as an ingest line has it (SPEC §3), on one line or pretty-printed over several,
/// as `POST /v1/events` takes it.
pub fn render_request(cfg: &Config, endpoint: &str, input: &[u8]) -> anyhow::Result<Rendered> {
    let ep = cfg
        .endpoints
        .iter()
        .find(|e| e.name == endpoint)
        .ok_or_else(|| anyhow!("no endpoint named {endpoint:?} in the config"))?;
    let spec = EndpointSpec::compile(0, ep.clone())?;
    // A byte order mark (an editor's) is skipped, as the socket and `POST /v1/events`
    // skip one.
    let input = input.strip_prefix(crate::ingest::BOM).unwrap_or(input);
    let line = input.trim_ascii();
    if line.is_empty() {
        // As `POST /v1/events` says it.
        bail!("empty input: give one event as a JSON object");
    }
    // Refused as ingest refuses it (the socket and `POST /v1/events`): no endpoint
    // would receive it. (Its length as given, as `POST /v1/events` counts it: a
    // pretty-printed event is longer than its line.)
    let max = cfg.server.max_line_bytes;
    if line.len() > max {
        bail!("the event exceeds max_line_bytes ({max}): the server refuses it (too_large)");
    }
    let ev = LineParser::for_ingest(cfg.server.retention)
        .parse(line)
        .map_err(|e| anyhow!("invalid event: {e}"))?;
    let not_routed = if !ep.enabled {
        Some(format!(
            "{endpoint} would not receive this event: it is disabled (enabled = false)"
        ))
    } else {
        (!ep.routes(&ev.etype, ev.account.as_deref())).then(|| {
            let why = if ep.routes(&ev.etype, ep.account.as_deref()) {
                format!(
                    "the endpoint takes account {:?} only, and the event's is {}",
                    ep.account.as_deref().unwrap_or_default(),
                    ev.account
                        .as_deref()
                        .map_or("unset".to_string(), |a| format!("{a:?}"))
                )
            } else {
                format!(
                    "its type {:?} is not in the endpoint's events {:?}",
                    ev.etype, ep.events
                )
            };
            format!("{endpoint} would not receive this event: {why}")
        })
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let rec = EventRecord::new(
        seq_floor(now),
        ev.ext_id.as_deref(),
        &ev.etype,
        ev.account.as_deref(),
        ev.time_ms.unwrap_or(now),
        &[],
        &ev.data,
    );
    let doc = Doc::parse(rec.data_bytes())
        .unwrap_or_else(|_| Doc::parse(Bytes::from_static(b"{}")).expect("empty object parses"));
    let mut out = Vec::new();
    let target = build(
        &spec,
        &rec,
        &doc,
        now / 1000,
        &mut Scratch::default(),
        &mut out,
    )?;
    // As a worker judges it before connecting; a name is judged once resolved there.
    let refused = (!cfg.server.allow_private_networks)
        .then(|| guarded_address(&target))
        .flatten()
        .map(|ip| {
            let fate = if spec.static_target.is_some() {
                "`serve` refuses the endpoint"
            } else {
                "this delivery would fail at once"
            };
            format!(
                "{endpoint}'s URL names {ip}, a loopback, private or reserved address, which \
                 the SSRF guard refuses while `allow_private_networks` is off: {fate}"
            )
        });
    Ok(Rendered {
        request: out,
        not_routed,
        refused,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[[endpoint]]
name = "partner"
events = ["sale"]
url = "http://partner.example/hook"
"#;

    fn body(request: &[u8]) -> &[u8] {
        let at = request
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("head ends");
        &request[at + 4..]
    }

    #[test]
    fn an_event_pretty_printed_over_several_lines_renders_like_one_line() {
        let cfg = Config::parse(CONFIG, "test").unwrap();
        let one = render_request(
            &cfg,
            "partner",
            br#"{"type":"sale","id":"s-1","data":{"amount":12.50}}"#,
        )
        .unwrap()
        .request;
        let pretty =
            b"{\n  \"type\": \"sale\",\n  \"id\": \"s-1\",\n  \"data\": {\"amount\": 12.50}\n}\n";
        let many = render_request(&cfg, "partner", pretty).unwrap().request;
        assert_eq!(body(&one), br#"{"amount":12.50}"#);
        assert_eq!(body(&many), br#"{"amount": 12.50}"#);
        // Two events are not one.
        let two = b"{\"type\":\"sale\",\"data\":{}}\n{\"type\":\"sale\",\"data\":{}}\n";
        let err = render_request(&cfg, "partner", two)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("invalid event: not JSON"), "{err}");
        assert!(render_request(&cfg, "nobody", pretty).is_err());
        let err = render_request(&cfg, "partner", b" \n")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "empty input: give one event as a JSON object");
        // A file an editor saved with a byte order mark renders as the socket takes it.
        let bom = [b"\xEF\xBB\xBF".as_slice(), pretty].concat();
        let with_bom = render_request(&cfg, "partner", &bom).unwrap().request;
        assert_eq!(body(&with_bom), body(&many));
    }

    #[test]
    fn an_event_ingest_refuses_is_refused() {
        // An event further ahead than the retention, which the socket and `POST
        // /v1/events` answer `err invalid`, was rendered as if it would be sent.
        let cfg =
            Config::parse(&format!("[server]\nretention = \"1h\"\n{CONFIG}"), "test").unwrap();
        let err = render_request(
            &cfg,
            "partner",
            br#"{"type":"sale","time":"2999-01-01T00:00:00Z","data":{}}"#,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "invalid event: field `time` is more than the retention (1h) ahead: its \
             deliveries would expire before their first attempt"
        );
        // One longer than `max_line_bytes` is refused as too large.
        let cfg =
            Config::parse(&format!("[server]\nmax_line_bytes = 64\n{CONFIG}"), "test").unwrap();
        let event = format!(r#"{{"type":"sale","data":{{"pad":"{}"}}}}"#, "x".repeat(40));
        assert!(event.len() > 64);
        let err = render_request(&cfg, "partner", event.as_bytes())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "the event exceeds max_line_bytes (64): the server refuses it (too_large)"
        );
        // The same at the limit renders.
        let fits = format!(
            r#"{{"type":"sale","data":{{"pad":"{}"}}}}"#,
            "x".repeat(64 - 33)
        );
        assert_eq!(fits.len(), 64);
        assert!(render_request(&cfg, "partner", fits.as_bytes()).is_ok());
    }

    #[test]
    fn a_url_naming_an_address_the_ssrf_guard_refuses_says_so() {
        let cfg = |url: &str, server: &str| {
            let text = format!(
                "{server}[[endpoint]]\nname = \"a\"\nevents = [\"sale\"]\nurl = \"{url}\"\n"
            );
            Config::parse(&text, "test").unwrap()
        };
        let refused = |cfg: &Config, host: &str| {
            let event = format!(r#"{{"type":"sale","data":{{"host":"{host}"}}}}"#);
            render_request(cfg, "a", event.as_bytes()).unwrap().refused
        };
        let templated = cfg("http://{host}/pb", "");
        assert_eq!(
            refused(&templated, "10.0.0.5").as_deref(),
            Some(
                "a's URL names 10.0.0.5, a loopback, private or reserved address, which the \
                 SSRF guard refuses while `allow_private_networks` is off: this delivery \
                 would fail at once"
            )
        );
        // The forms the resolver reads as an address without asking DNS.
        assert!(refused(&templated, "127.1").is_some());
        assert!(refused(&templated, "2130706433").is_some());
        // A public address, and a name (judged once resolved).
        assert_eq!(refused(&templated, "93.184.216.34"), None);
        assert_eq!(refused(&templated, "partner.example"), None);
        let allowed = cfg(
            "http://{host}/pb",
            "[server]\nallow_private_networks = true\n",
        );
        assert_eq!(refused(&allowed, "10.0.0.5"), None);
        // A static URL: `check` and `serve` refuse the endpoint.
        let fixed = cfg("http://192.168.1.20/pb", "");
        assert!(refused(&fixed, "")
            .unwrap()
            .ends_with("`serve` refuses the endpoint"));
    }

    #[test]
    fn an_event_the_endpoint_would_not_get_says_so() {
        let cfg = Config::parse(&format!("{CONFIG}account = \"acct-1\"\n"), "test").unwrap();
        let note = |event: &str| {
            render_request(&cfg, "partner", event.as_bytes())
                .unwrap()
                .not_routed
        };
        assert_eq!(
            note(r#"{"type":"sale","account":"acct-1","data":{}}"#),
            None
        );
        assert_eq!(
            note(r#"{"type":"refund","account":"acct-1","data":{}}"#).as_deref(),
            Some(
                r#"partner would not receive this event: its type "refund" is not in the endpoint's events ["sale"]"#
            )
        );
        assert_eq!(
            note(r#"{"type":"sale","data":{}}"#).as_deref(),
            Some(
                r#"partner would not receive this event: the endpoint takes account "acct-1" only, and the event's is unset"#
            )
        );
    }
}
