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

/// The catalogue's sample of `etype`, or a generic event of that type (`*` and unknown
/// types get `ricochet.test`).
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
        for t in [
            "action_lifecycle",
            "action_inquiry",
            "action_clearing",
            "tracking_value_request",
            "job_completed",
            "publisher_application",
            "advocate.coupon_created",
        ] {
            let s = sample(t);
            assert_eq!(s.etype, t);
            let v: Value = serde_json::from_slice(&s.data).unwrap();
            assert!(v.as_object().is_some_and(|o| !o.is_empty()), "{t}");
        }
        let g = sample("*");
        assert_eq!(g.etype, "ricochet.test");
        assert_eq!(sample("custom.thing").etype, "custom.thing");
    }
}
