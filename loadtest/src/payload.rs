//! Event lines the generator writes. `seed` is the action-lifecycle payload of the
//! brand event-notification doc in `shared/seeds/` (the "操作生命周期事件" section): the
//! action's campaign, partner, ids, money and dates plus an `items` array of five
//! (`sku`, `amt`, `cat`, `qty`, `cartamt`, `rbt`, `name`), 730–800 bytes per event.
//! `small` is a three-field payload for measuring per-event overhead.
//!
//! Every payload starts with `"sent_us": <unix µs>` so the sink finds the stamp in the
//! first bytes of a delivered body. Lines are written into a reused buffer; nothing here
//! allocates once the buffer has grown.

use anyhow::{bail, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    Seed,
    Small,
}

impl Payload {
    pub fn parse(s: &str) -> Result<Payload> {
        match s {
            "seed" => Ok(Payload::Seed),
            "small" => Ok(Payload::Small),
            other => bail!("unknown payload {other:?}: expected seed or small"),
        }
    }
}

const STATUSES: [&str; 4] = ["APPROVED", "PENDING", "MODIFIED", "REVERSED"];
const CATS: [&str; 5] = ["apparel", "shoes", "home", "beauty", "toys"];
const NAMES: [&str; 5] = ["Tee", "Runner", "Lamp", "Serum", "Blocks"];

fn push_u64(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// `cents` as a decimal amount: `1999` -> `19.99`.
fn push_money(buf: &mut Vec<u8>, cents: u64) {
    push_u64(buf, cents / 100);
    buf.push(b'.');
    let c = cents % 100;
    buf.push(b'0' + (c / 10) as u8);
    buf.push(b'0' + (c % 10) as u8);
}

/// Appends the `data` object of event `n`.
pub fn write_data(buf: &mut Vec<u8>, kind: Payload, n: u64, sent_us: u64) {
    buf.extend_from_slice(b"{\"sent_us\":");
    push_u64(buf, sent_us);
    match kind {
        Payload::Small => {
            buf.extend_from_slice(b",\"n\":");
            push_u64(buf, n);
            buf.extend_from_slice(b",\"ActionId\":\"ACT-");
            push_u64(buf, n);
            buf.extend_from_slice(b"\"}");
        }
        Payload::Seed => write_seed(buf, n),
    }
}

fn write_seed(buf: &mut Vec<u8>, n: u64) {
    let h = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16;
    buf.extend_from_slice(
        b",\"CampaignId\":9876,\"ActionTrackerId\":12345,\"MediaPartnerId\":555,\"ActionId\":\"ACT-",
    );
    push_u64(buf, n);
    buf.extend_from_slice(b"\",\"Status\":\"");
    buf.extend_from_slice(STATUSES[(h % 4) as usize].as_bytes());
    let mut cart = 0;
    let mut prices = [0u64; 5];
    let mut qtys = [0u64; 5];
    for i in 0..5 {
        prices[i] = 499 + (h >> (i * 7)) % 9_000;
        qtys[i] = 1 + (h >> (i * 3)) % 3;
        cart += prices[i] * qtys[i];
    }
    buf.extend_from_slice(b"\",\"Payout\":");
    push_money(buf, cart / 10);
    buf.extend_from_slice(b",\"Amount\":");
    push_money(buf, cart);
    buf.extend_from_slice(b",\"Currency\":\"USD\",\"Oid\":\"ORD-");
    push_u64(buf, n);
    buf.extend_from_slice(b"\",\"EventDate\":\"2026-04-08T09:00:00Z\",\"RefClickId\":\"CLK");
    push_u64(buf, h % 10_000_000_000);
    buf.extend_from_slice(b"\",\"CustomerStatus\":\"EXISTING\",\"items\":[");
    for i in 0..5 {
        if i > 0 {
            buf.push(b',');
        }
        buf.extend_from_slice(b"{\"sku\":\"SKU-");
        push_u64(buf, (h >> (i * 5)) % 100_000);
        buf.extend_from_slice(b"\",\"amt\":");
        push_money(buf, prices[i]);
        buf.extend_from_slice(b",\"cat\":\"");
        buf.extend_from_slice(CATS[(i + (h as usize)) % 5].as_bytes());
        buf.extend_from_slice(b"\",\"qty\":");
        push_u64(buf, qtys[i]);
        buf.extend_from_slice(b",\"cartamt\":");
        push_money(buf, cart);
        buf.extend_from_slice(b",\"rbt\":\"0\",\"name\":\"");
        buf.extend_from_slice(NAMES[(i + (h as usize) / 5) % 5].as_bytes());
        buf.extend_from_slice(b"\"}");
    }
    buf.extend_from_slice(b"]}");
}

/// What an event line is about: its type and, when given, its account.
#[derive(Debug, Clone, Copy)]
pub struct EventKey<'a> {
    pub ty: &'a str,
    pub account: Option<&'a str>,
}

/// Appends one ingest line:
/// `{"type":..,"id":"ld-<run>-<n>"[,"account":..],"data":{..}}\n` (`data` last, as
/// producers are told to write it). Types and accounts are written as given: plain
/// tokens, no JSON escaping.
pub fn write_event(
    buf: &mut Vec<u8>,
    kind: Payload,
    key: EventKey,
    run: &str,
    n: u64,
    sent_us: u64,
) {
    buf.extend_from_slice(b"{\"type\":\"");
    buf.extend_from_slice(key.ty.as_bytes());
    buf.extend_from_slice(b"\",\"id\":\"ld-");
    buf.extend_from_slice(run.as_bytes());
    buf.push(b'-');
    push_u64(buf, n);
    if let Some(account) = key.account {
        buf.extend_from_slice(b"\",\"account\":\"");
        buf.extend_from_slice(account.as_bytes());
    }
    buf.extend_from_slice(b"\",\"data\":");
    write_data(buf, kind, n, sent_us);
    buf.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_payload_is_valid_json_of_the_right_size() {
        for n in (0u64..2_000).chain([12_345, 1_999_999, 9_999_999_999]) {
            let mut buf = Vec::new();
            write_data(&mut buf, Payload::Seed, n, 1_712_345_678_901_234);
            let len = buf.len();
            assert!((400..=800).contains(&len), "payload of {len} bytes");
            let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
            assert_eq!(v["ActionId"], format!("ACT-{n}"));
            let items = v["items"].as_array().unwrap();
            assert_eq!(items.len(), 5);
            for it in items {
                for k in ["sku", "amt", "cat", "qty", "cartamt", "rbt", "name"] {
                    assert!(it.get(k).is_some(), "item lacks {k}");
                }
            }
            assert_eq!(
                crate::http::find_sent_us_json(&buf),
                Some(1_712_345_678_901_234)
            );
        }
    }

    #[test]
    fn event_lines() {
        let mut buf = Vec::new();
        let key = EventKey {
            ty: "load.e3",
            account: Some("acct-3"),
        };
        write_event(&mut buf, Payload::Small, key, "ab12", 7, 99);
        assert_eq!(buf.last(), Some(&b'\n'));
        assert_eq!(buf.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["type"], "load.e3");
        assert_eq!(v["id"], "ld-ab12-7");
        assert_eq!(v["account"], "acct-3");
        assert_eq!(v["data"]["sent_us"], 99);
        let text = String::from_utf8_lossy(&buf);
        assert!(text.contains("\"account\":\"acct-3\",\"data\":{"), "{text}");
        // Without an account the member is left out.
        buf.clear();
        let key = EventKey {
            ty: "t",
            account: None,
        };
        write_event(&mut buf, Payload::Small, key, "ab12", 8, 99);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert!(v.get("account").is_none());
        assert_eq!(v["type"], "t");
        assert!(Payload::parse("big").is_err());
    }
}
