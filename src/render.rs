//! `ricochet render`: the exact request an endpoint would get for an event.
//!
//! Uses the same request builder as the workers, so the output is byte-for-byte what a
//! receiver sees (the `webhook-timestamp` and signature are those of "now"). It must not
//! start a server or touch a data dir.

use anyhow::{anyhow, bail};
use bytes::Bytes;

use crate::config::Config;
use crate::deliver::request::{build, Scratch};
use crate::endpoint::EndpointSpec;
use crate::ingest::parse::LineParser;
use crate::store::{seq_floor, EventRecord};
use crate::template::Doc;

/// Renders the request `endpoint` of `cfg` would receive for the event in `input`
/// (one ingest line, SPEC §3).
pub fn render_request(cfg: &Config, endpoint: &str, input: &[u8]) -> anyhow::Result<Vec<u8>> {
    let ep = cfg
        .endpoints
        .iter()
        .find(|e| e.name == endpoint)
        .ok_or_else(|| anyhow!("no endpoint named {endpoint:?} in the config"))?;
    let spec = EndpointSpec::compile(0, ep.clone())?;
    let line = input.trim_ascii();
    if line.contains(&b'\n') {
        bail!("the event file must hold exactly one JSON event (one line)");
    }
    let ev = LineParser::default()
        .parse(line)
        .map_err(|e| anyhow!("invalid event: {e}"))?;
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
    build(
        &spec,
        &rec,
        &doc,
        now / 1000,
        &mut Scratch::default(),
        &mut out,
    )?;
    Ok(out)
}
