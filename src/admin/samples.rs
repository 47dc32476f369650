//! Sample events for `POST /v1/endpoints/{name}/test`: the seed catalogue's example of
//! each known event type (`docs/examples/events/`), else a small generic event.

use bytes::Bytes;

use crate::ingest::parse::LineParser;

const CATALOGUE: [&str; 7] = [
    include_str!("../../docs/examples/events/action_lifecycle.json"),
    include_str!("../../docs/examples/events/action_inquiry.json"),
    include_str!("../../docs/examples/events/action_clearing.json"),
    include_str!("../../docs/examples/events/tracking_value_request.json"),
    include_str!("../../docs/examples/events/job_completed.json"),
    include_str!("../../docs/examples/events/publisher_application.json"),
    include_str!("../../docs/examples/events/advocate.coupon_created.json"),
];

/// A sample event: type, account and `data`.
pub struct Sample {
    pub etype: String,
    pub account: Option<String>,
    pub data: Bytes,
}

/// The catalogue's sample of `etype`, or a generic event of that type (`*` and an
/// empty type get `ricochet.test`; an unknown type keeps its own name).
pub fn sample(etype: &str) -> Sample {
    for line in CATALOGUE {
        // The socket's own parser keeps `data` byte for byte.
        let Ok(ev) = LineParser::default().parse(line.trim().as_bytes()) else {
            continue;
        };
        if ev.etype == etype {
            return Sample {
                etype: ev.etype,
                account: ev.account,
                data: ev.data,
            };
        }
    }
    let etype = if etype.is_empty() || etype == "*" {
        "ricochet.test"
    } else {
        etype
    };
    Sample {
        etype: etype.to_string(),
        account: None,
        data: Bytes::from_static(br#"{"test":true,"message":"a test delivery from ricochet"}"#),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn every_catalogue_type_has_its_sample() {
        assert_eq!(CATALOGUE.len(), 7);
        for line in CATALOGUE {
            let ev = LineParser::default().parse(line.trim().as_bytes()).unwrap();
            let s = sample(&ev.etype);
            assert_eq!(s.etype, ev.etype);
            assert_eq!(
                s.data, ev.data,
                "the sample is the catalogue's data, byte for byte"
            );
            let v: Value = serde_json::from_slice(&s.data).unwrap();
            assert!(v.as_object().is_some_and(|o| !o.is_empty()), "{}", ev.etype);
        }
        let g = sample("*");
        assert_eq!(g.etype, "ricochet.test");
        assert_eq!(sample("custom.thing").etype, "custom.thing");
    }
}
