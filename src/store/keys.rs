//! Key encodings: how the keys of every column family are laid out, and the numbers
//! they are made of: sequence numbers ([`Seq`], time-derived), endpoint ids, the event
//! ids generated from a sequence number, and the `index` family's posting groups (whose
//! value belongs to its key).
//!
//! Owns only byte layouts: it must not read or write RocksDB, nor know the values kept
//! under the keys (those are `records`' and `endpoints`').

use super::{DeliveryState, Result, StoreError, CF_INDEX};

/// Event sequence number: the event's key in the log.
pub type Seq = u64;
/// Stable numeric id of an endpoint (persisted by name in `endpoints`).
pub type EndpointId = u32;

/// Key prefix in `endpoints` of an endpoint's stored configuration.
pub(super) const CONFIG_PREFIX: &str = "~config/";
/// Key prefix in `endpoints` of the name given to an id.
pub(super) const NAME_PREFIX: &str = "~name/";
/// `~deleting/<id>`: an endpoint deleted whose pending deliveries are not all failed yet.
pub(super) const DELETING_PREFIX: &str = "~deleting/";
/// `~pausing/<id>`: an endpoint disabled whose due deliveries are not all paused yet.
pub(super) const PAUSING_PREFIX: &str = "~pausing/";

/// Bits of a [`Seq`] below the millisecond timestamp.
const SEQ_COUNTER_BITS: u32 = 10;

/// The millisecond timestamp a sequence number was derived from.
pub fn seq_time_ms(seq: Seq) -> u64 {
    seq >> SEQ_COUNTER_BITS
}

/// The first sequence number of millisecond `ms`.
pub fn seq_floor(ms: u64) -> Seq {
    ms << SEQ_COUNTER_BITS
}

/// `evt_` + 16 hex digits of the sequence number.
pub fn generated_id(seq: Seq) -> String {
    format!("evt_{seq:016x}")
}

/// Parses an id of the form [`generated_id`] produces.
pub fn parse_generated_id(id: &str) -> Option<Seq> {
    let hex = id.strip_prefix("evt_")?;
    // Digits only: `from_str_radix` also takes a leading `+`, which made
    // `evt_+00000000000000a` another name of event 10 (and refused it as a producer's id).
    if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Keys of the `index` column family. Every key ends in, or for `StateAll` continues
/// with, a sequence number, so a prefix iterated backwards gives newest first. `Type`,
/// `Account`, `Endpoint` keys are posting groups (the key's seq is the group's largest,
/// the value lists the rest, see [`encode_group`]; an empty value is a group of one);
/// `EndpointAdded`, `State` and `StateAll` keys are one entry each, with empty values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexKey<'a> {
    /// `T` ‖ len u8 ‖ type ‖ seq
    Type(&'a str),
    /// `A` ‖ len u16 BE ‖ account ‖ seq
    Account(&'a str),
    /// `E` ‖ ep ‖ seq: every delivery routed when its event was accepted. Queries by
    /// endpoint read it together with [`IndexKey::EndpointAdded`].
    Endpoint(EndpointId),
    /// `e` ‖ ep ‖ seq: a route added to an older event (a replay to a new endpoint).
    /// Kept apart so that `Endpoint` groups never interleave.
    EndpointAdded(EndpointId),
    /// `S` ‖ state ‖ ep ‖ seq: deliveries in an indexed state, per endpoint.
    State(DeliveryState, EndpointId),
    /// `G` ‖ state ‖ seq ‖ ep: the same, over all endpoints.
    StateAll(DeliveryState),
}

impl IndexKey<'_> {
    /// The bytes before the sequence number.
    pub(super) fn prefix(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(24);
        self.write_prefix(&mut k);
        k
    }

    /// Appends the bytes before the sequence number to `k`.
    pub(super) fn write_prefix(&self, k: &mut Vec<u8>) {
        match *self {
            IndexKey::Type(t) => {
                let t = &t.as_bytes()[..t.len().min(255)];
                k.push(b'T');
                k.push(t.len() as u8);
                k.extend_from_slice(t);
            }
            IndexKey::Account(a) => {
                let a = &a.as_bytes()[..a.len().min(u16::MAX as usize)];
                k.push(b'A');
                k.extend_from_slice(&(a.len() as u16).to_be_bytes());
                k.extend_from_slice(a);
            }
            IndexKey::Endpoint(ep) => {
                k.push(b'E');
                k.extend_from_slice(&ep.to_be_bytes());
            }
            IndexKey::EndpointAdded(ep) => {
                k.push(b'e');
                k.extend_from_slice(&ep.to_be_bytes());
            }
            IndexKey::State(st, ep) => {
                k.push(b'S');
                k.push(st as u8);
                k.extend_from_slice(&ep.to_be_bytes());
            }
            IndexKey::StateAll(st) => {
                k.push(b'G');
                k.push(st as u8);
            }
        }
    }

    pub(super) fn key(&self, seq: Seq, ep: EndpointId) -> Vec<u8> {
        let mut k = self.prefix();
        k.extend_from_slice(&seq.to_be_bytes());
        if let IndexKey::StateAll(_) = self {
            k.extend_from_slice(&ep.to_be_bytes());
        }
        k
    }

    /// The sequence number in an index key (for the retention filter).
    pub(super) fn seq_of(key: &[u8]) -> Option<Seq> {
        let at = match key.first()? {
            b'G' => 2,
            _ => key.len().checked_sub(8)?,
        };
        key.get(at..at + 8)?.try_into().ok().map(u64::from_be_bytes)
    }
}

/// Encodes a posting group's value: `seqs` ascending and distinct, the last one going into
/// the key; the value holds the others, from the largest down, each as the LEB128 varint
/// of its distance to the one above it (sequence numbers of one batch are dense, so most
/// take one or two bytes).
pub fn encode_group(seqs: &[Seq], out: &mut Vec<u8>) {
    for pair in seqs.windows(2).rev() {
        let mut gap = pair[1] - pair[0];
        while gap >= 0x80 {
            out.push(gap as u8 | 0x80);
            gap >>= 7;
        }
        out.push(gap as u8);
    }
}

/// Decodes a posting group: the key's `max` then the value's members, largest first,
/// into `out` (cleared first).
pub fn decode_group(max: Seq, value: &[u8], out: &mut Vec<Seq>) -> Result<()> {
    let bad = || StoreError::Corrupt {
        cf: CF_INDEX,
        what: "bad posting group".into(),
    };
    out.clear();
    out.push(max);
    let mut cur = max;
    let mut gap = 0u64;
    let mut shift = 0u32;
    for &b in value {
        if shift > 63 {
            return Err(bad());
        }
        gap |= u64::from(b & 0x7f) << shift;
        if b & 0x80 != 0 {
            shift += 7;
            continue;
        }
        cur = cur.checked_sub(gap).filter(|_| gap > 0).ok_or_else(bad)?;
        out.push(cur);
        gap = 0;
        shift = 0;
    }
    if shift != 0 {
        return Err(bad());
    }
    Ok(())
}

/// A key of the `due` column family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DueKey {
    pub due_ms: u64,
    pub seq: Seq,
    pub ep: EndpointId,
}

impl DueKey {
    pub const MIN: DueKey = DueKey {
        due_ms: 0,
        seq: 0,
        ep: 0,
    };

    /// The least key above this one.
    pub fn successor(self) -> DueKey {
        if self.ep < u32::MAX {
            DueKey {
                ep: self.ep + 1,
                ..self
            }
        } else if self.seq < u64::MAX {
            DueKey {
                seq: self.seq + 1,
                ep: 0,
                ..self
            }
        } else {
            DueKey {
                due_ms: self.due_ms + 1,
                seq: 0,
                ep: 0,
            }
        }
    }

    pub fn encode(&self) -> [u8; 20] {
        let mut k = [0u8; 20];
        k[..8].copy_from_slice(&self.due_ms.to_be_bytes());
        k[8..16].copy_from_slice(&self.seq.to_be_bytes());
        k[16..].copy_from_slice(&self.ep.to_be_bytes());
        k
    }

    pub fn decode(k: &[u8]) -> Option<DueKey> {
        if k.len() != 20 {
            return None;
        }
        Some(DueKey {
            due_ms: u64::from_be_bytes(k[..8].try_into().ok()?),
            seq: u64::from_be_bytes(k[8..16].try_into().ok()?),
            ep: u32::from_be_bytes(k[16..].try_into().ok()?),
        })
    }
}

pub(super) fn attempt_key(seq: Seq, ep: EndpointId, n: u16) -> [u8; 14] {
    let mut k = [0u8; 14];
    k[..8].copy_from_slice(&seq.to_be_bytes());
    k[8..12].copy_from_slice(&ep.to_be_bytes());
    k[12..].copy_from_slice(&n.to_be_bytes());
    k
}

pub(super) fn paused_key(ep: EndpointId, seq: Seq) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&ep.to_be_bytes());
    k[4..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub(super) fn deleting_key(id: EndpointId) -> Vec<u8> {
    id_key(DELETING_PREFIX, id)
}

/// `<prefix><id>` in `endpoints`, the id big-endian
/// ([`Store::by_id`](super::Store::by_id) reads them).
pub(super) fn id_key(prefix: &str, id: EndpointId) -> Vec<u8> {
    let mut k = prefix.as_bytes().to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_due_key_s_successor_orders_after_it_and_before_any_greater_key() {
        let k = DueKey {
            due_ms: 5,
            seq: 7,
            ep: u32::MAX,
        };
        assert!(k.successor() > k);
        let k = DueKey {
            due_ms: 5,
            seq: 7,
            ep: 3,
        };
        assert!(k.successor() > k);
        assert!(
            k.successor()
                < DueKey {
                    due_ms: 5,
                    seq: 7,
                    ep: 5,
                }
        );
    }

    #[test]
    fn due_keys_sort_by_time() {
        let a = DueKey {
            due_ms: 1,
            seq: u64::MAX,
            ep: 9,
        };
        let b = DueKey {
            due_ms: 2,
            seq: 0,
            ep: 0,
        };
        assert!(a.encode() < b.encode());
        assert_eq!(DueKey::decode(&a.encode()), Some(a));
    }

    #[test]
    fn generated_ids() {
        assert_eq!(parse_generated_id(&generated_id(0xabc)), Some(0xabc));
        assert_eq!(parse_generated_id("evt_12"), None);
        assert_eq!(parse_generated_id("evt_+00000000000000a"), None);
    }

    #[test]
    fn posting_groups_round_trip_and_refuse_corrupt_values() {
        for seqs in [
            vec![5],
            vec![1, 2, 3],
            vec![7, 200, 70_000, 70_001, u64::MAX - 1, u64::MAX],
        ] {
            let mut v = Vec::new();
            encode_group(&seqs, &mut v);
            let mut out = Vec::new();
            decode_group(*seqs.last().unwrap(), &v, &mut out).unwrap();
            let mut want = seqs.clone();
            want.reverse();
            assert_eq!(out, want);
        }
        let mut out = Vec::new();
        // A gap of 0 (a repeated member), a gap below zero, a truncated varint.
        assert!(decode_group(10, &[0], &mut out).is_err());
        assert!(decode_group(10, &[11], &mut out).is_err());
        assert!(decode_group(10, &[0x81], &mut out).is_err());
    }
}
