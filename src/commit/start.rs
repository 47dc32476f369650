//! What runs once at start, before the first round ([`Committer::run`] builds the state
//! and calls these): the count of pending and paused deliveries ([`count_pending`]),
//! each `ordered` endpoint's backlog from before the start
//! ([`Pending::ordered_backlog`]), the held heads sent first
//! ([`State::send_holds`]), and the FIFO endpoints' retries to remember
//! ([`Pending::far_retries`]); and the bound past which a first attempt is never made
//! ([`never_due_after`]), which [`State::never_due_from`] applies from then on.
//!
//! [`count_pending`] reads the whole store in one go, which only the start can afford:
//! nothing waits on it yet but the first ack.
//!
//! [`Committer::run`]: super::Committer::run

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::store::{self, seq_time_ms, DueKey, DueVal, EndpointId, Seq, Store};
use crate::worker::Job;

use super::loader::remember_soonest;
use super::route::RouteInfo;
use super::{retention_every, State, PAGE};

/// How long after its event's time a first attempt is never made, with `retention_ms`:
/// the retention floor has passed the event by then (it moves every `retention_every`,
/// and the loader and the workers check it before an attempt), with a second pass and a
/// second to spare.
pub(super) fn never_due_after(retention_ms: u64) -> u64 {
    let every = retention_every(Duration::from_millis(retention_ms)).as_millis() as u64;
    retention_ms.saturating_add(2 * every + 1000)
}

/// Deliveries waiting for a retry that an `ordered` endpoint's worker is handed at a
/// start before anything else, besides its held head, at most ([`Pending::retrying`]).
/// One ordered since the start has one more for each replay of an older event that
/// failed while another waited for its retry; one made ordered at this start (the
/// config file) may have thousands, from while it was FIFO (whose order a switch does
/// not promise), and each handed over counts against what may go ahead of the cursor
/// until it is reported ([`State::hands_ahead`]), hours later for a long retry.
///
/// [`State::hands_ahead`]: super::State::hands_ahead
const RETRYING_FIRST: usize = 64;

/// What the store holds pending at a start ([`count_pending`]).
pub(super) struct Pending {
    /// Deliveries pending (`due` and `paused` keys), and of those the paused ones.
    pub(super) pending: u64,
    pub(super) paused: u64,
    /// Each `ordered` endpoint's highest `due` key, its held head's and those never due
    /// left out: the end of its backlog from before the start, which the loader brings
    /// from the beginning of the index. Its [`Share::disk_max`] at the start, so that
    /// its fresh deliveries do not go ahead of it ([`State::hands_ahead`]). (A FIFO
    /// endpoint's may, as FIFO allows; one made ordered later waits for the scans to
    /// reach the present: [`State::put_endpoint`].)
    ///
    /// [`Share::disk_max`]: super::share::Share::disk_max
    pub(super) ordered_backlog: HashMap<EndpointId, DueKey>,
    /// Each enabled `ordered` endpoint's other deliveries waiting for a retry (a key
    /// whose round has had an attempt), the oldest [`RETRYING_FIRST`]: handed over
    /// first with the held heads ([`State::send_holds`]). The endpoint's record holds
    /// one head, but a replay of an older event goes before it, and its retry, kept by
    /// the worker as the head's, took the record's place: after a restart the head's
    /// retry waited on disk, and the loader handed over later deliveries, due before
    /// it, that went first (helper O, session 48). Left out of [`Self::ordered_backlog`].
    pub(super) retrying: Vec<(DueKey, DueVal)>,
    /// Endpoints with paused deliveries.
    pub(super) with_paused: HashSet<EndpointId>,
    /// Each enabled FIFO endpoint's deliveries waiting for a retry (a key whose round
    /// has had an attempt), the [`MAX_FAR_RETRIES`] soonest due: the committer's
    /// reminders of them ([`State::far_retries`]), handed over ahead of the cursor once
    /// due within [`RETRY_AHEAD_MS`] if their endpoint is quiet then
    /// ([`State::hand_far_retries`]). Written before the start, they were part of the
    /// backlog the loader reads from the beginning of the index, and waited behind every
    /// other endpoint's keys due before them, however quiet theirs (whether it is quiet
    /// is not known at the start: it is judged as each is handed over).
    ///
    /// [`MAX_FAR_RETRIES`]: super::loader::MAX_FAR_RETRIES
    /// [`RETRY_AHEAD_MS`]: super::loader::RETRY_AHEAD_MS
    /// [`State::far_retries`]: super::State::far_retries
    /// [`State::hand_far_retries`]: super::State::hand_far_retries
    pub(super) far_retries: BTreeMap<DueKey, DueVal>,
}

/// Counts the deliveries pending in the store (`due` and `paused` keys) and of those the
/// paused ones, takes each enabled `ordered` endpoint's deliveries waiting for a retry
/// ([`Pending::retrying`]), and each `ordered` endpoint's highest `due` key but its held
/// head's, those taken and those never due ([`Pending::ordered_backlog`]; `routes` say
/// which), and the soonest of each enabled FIFO endpoint's retries
/// ([`Pending::far_retries`]). Scans both column families once, at start.
pub(super) fn count_pending(
    store: &Store,
    routes: &[RouteInfo],
    retention_ms: u64,
) -> Result<Pending, store::StoreError> {
    let ordered: HashSet<EndpointId> = routes.iter().filter(|i| i.ordered).map(|i| i.id).collect();
    let heads: HashSet<DueKey> = routes
        .iter()
        .filter(|i| i.ordered && i.enabled)
        .filter_map(|i| {
            let (seq, due_ms, _) = i.meta.hold?;
            Some(DueKey {
                due_ms,
                seq,
                ep: i.id,
            })
        })
        .collect();
    let enabled: HashSet<EndpointId> = routes
        .iter()
        .filter(|i| i.ordered && i.enabled)
        .map(|i| i.id)
        .collect();
    let fifo: HashSet<EndpointId> = routes
        .iter()
        .filter(|i| !i.ordered && i.enabled)
        .map(|i| i.id)
        .collect();
    let mut far_retries = BTreeMap::new();
    let mut ordered_backlog: HashMap<EndpointId, DueKey> = HashMap::default();
    let mut retrying: HashMap<EndpointId, BTreeMap<Seq, (DueKey, DueVal)>> = HashMap::default();
    let never_after = never_due_after(retention_ms);
    let due = store.each_due(|k, v| {
        if !ordered.contains(&k.ep) {
            // (Looked up only for a retry: most keys are first attempts.)
            if v.in_round() > 0 && fifo.contains(&k.ep) {
                remember_soonest(&mut far_retries, k, v);
            }
            return;
        }
        if heads.contains(&k) {
            return;
        }
        let mut left = Some(k);
        if enabled.contains(&k.ep) && v.in_round() > 0 {
            let r = retrying.entry(k.ep).or_default();
            r.insert(k.seq, (k, v));
            // Past the bound the newest waits for the loader, as every key did.
            left = if r.len() > RETRYING_FIRST {
                r.pop_last().map(|(_, (k, _))| k)
            } else {
                None
            };
        }
        if let Some(k) = left.filter(|k| k.due_ms < seq_time_ms(k.seq).saturating_add(never_after))
        {
            let highest = ordered_backlog.entry(k.ep).or_insert(k);
            *highest = (*highest).max(k);
        }
    })? as u64;
    let mut paused = 0u64;
    let mut with_paused = HashSet::default();
    let ids = store.endpoints()?.into_iter().map(|(_, meta)| meta.id);
    for id in ids.chain(store.deleting()?) {
        let mut after = 0;
        loop {
            let page = store.paused_of(id, after, PAGE * 8)?;
            paused += page.len() as u64;
            if !page.is_empty() {
                with_paused.insert(id);
            }
            match page.last() {
                Some(&(seq, _)) if page.len() == PAGE * 8 => after = seq + 1,
                _ => break,
            }
        }
    }
    Ok(Pending {
        pending: due + paused,
        paused,
        ordered_backlog,
        retrying: retrying
            .into_values()
            .flat_map(BTreeMap::into_values)
            .collect(),
        with_paused,
        far_retries,
    })
}

impl State {
    /// Hands over every enabled ordered endpoint's held head, and its other deliveries
    /// waiting for a retry (`retrying`, [`Pending::retrying`]), before anything else.
    pub(super) fn send_holds(&mut self, retrying: Vec<(DueKey, DueVal)>) {
        // (worker, due key, value) of every enabled ordered endpoint's held head.
        let mut holds: Vec<(usize, DueKey, DueVal)> = self
            .router
            .eps
            .values()
            .filter(|i| i.ordered && i.enabled)
            .filter_map(|i| {
                let (seq, due_ms, attempts) = i.meta.hold?;
                let first = i.meta.hold_first;
                Some((
                    i.worker,
                    DueKey {
                        due_ms,
                        seq,
                        ep: i.id,
                    },
                    DueVal { attempts, first },
                ))
            })
            .collect();
        holds.extend(retrying.into_iter().filter_map(|(due, val)| {
            let info = self.router.eps.get(&due.ep)?;
            Some((info.worker, due, val))
        }));
        for (worker, due, val) in holds {
            // A head whose due entry is gone is no longer waiting (delivered, failed or
            // expired since it was recorded): sending it would repeat it.
            match self.store.has_due(due) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read an ordered endpoint's head");
                    continue;
                }
            }
            match self.store.event(due.seq) {
                Ok(Some(e)) => {
                    // Remembered in `ahead` if at or above the cursor.
                    self.out_jobs[worker].push(Job {
                        event: Arc::new(e),
                        ep: due.ep,
                        due,
                        val,
                    });
                }
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "cannot read an ordered endpoint's head"),
            }
        }
        self.flush_jobs();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commit::loader::MAX_FAR_RETRIES;
    use crate::commit::route::tests::info;
    use crate::store::{seq_floor, EndpointMeta};

    #[test]
    fn the_start_takes_each_ordered_endpoint_s_highest_due_key_but_held_heads_retries_and_those_never_due(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let day = 86_400_000;
        let t = 1_700_000_000_000;
        let key = |due_ms: u64, ms: u64, ep: EndpointId| DueKey {
            due_ms,
            seq: seq_floor(ms),
            ep,
        };
        // 1: two keys; 2: its held head above its other key; 3: a key due only past
        // the retention of its event (a week), and one key; 4: only one never due.
        let keys = [
            key(t, t, 1),
            key(t + 5, t + 1, 1),
            key(t + 2, t, 2),
            key(t + 3_600_000, t - 10, 2),
            key(t + 1, t, 3),
            key(t + 30 * day, t, 3),
            key(t + 30 * day, t, 4),
        ];
        let mut b = store.batch();
        for k in keys {
            b.put_due(&store, k, DueVal::NEW);
        }
        let mut meta = EndpointMeta {
            id: 1,
            ..EndpointMeta::default()
        };
        b.put_endpoint(&store, "e1", &meta);
        b.pause(&store, 1, seq_floor(t + 9), DueVal::NEW);
        meta.id = 2;
        b.put_endpoint(&store, "e2", &meta);
        // 2: another delivery waiting for a retry (a replay's, after one attempt of its
        // round), due after everything else; 5: the same, and a replay not attempted
        // yet, which the loader brings (in the backlog).
        let retry = DueVal {
            attempts: 3,
            first: 2,
        };
        let replayed = DueVal {
            attempts: 2,
            first: 2,
        };
        let (r2, r5, p5) = (
            key(t + 7_200_000, t - 20, 2),
            key(t + 7_200_000, t - 20, 5),
            key(t + 3, t - 30, 5),
        );
        b.put_due(&store, r2, retry);
        b.put_due(&store, r5, retry);
        b.put_due(&store, p5, replayed);
        store.commit(b, false).unwrap();
        let mut routes: Vec<RouteInfo> = (1..=5).map(|id| info(id, &["a"], None)).collect();
        for r in &mut routes {
            r.ordered = true;
        }
        routes[1].meta.hold = Some((seq_floor(t - 10), t + 3_600_000, 1));
        let p = count_pending(&store, &routes, 7 * day).unwrap();
        assert_eq!((p.pending, p.paused), (11, 1));
        let mut got: Vec<_> = p.ordered_backlog.into_iter().collect();
        got.sort_unstable();
        assert_eq!(got, [(1, keys[1]), (2, keys[2]), (3, keys[4]), (5, p5)]);
        let mut retrying = p.retrying;
        retrying.sort_unstable_by_key(|(k, _)| k.ep);
        assert_eq!(retrying, [(r2, retry), (r5, retry)]);
        assert_eq!(p.with_paused.into_iter().collect::<Vec<_>>(), [1]);
        // A FIFO endpoint's backlog is not taken, nor a disabled one's retries.
        routes[0].ordered = false;
        routes[4].enabled = false;
        let p = count_pending(&store, &routes, 7 * day).unwrap();
        assert_eq!(p.ordered_backlog.get(&1), None);
        assert_eq!(p.ordered_backlog.get(&5), Some(&r5));
        assert_eq!(p.ordered_backlog.len(), 3);
        assert_eq!(p.retrying, [(r2, retry)]);
    }

    #[test]
    fn the_start_remembers_each_enabled_fifo_endpoint_s_retries_the_soonest_at_their_bound() {
        // Endpoint 1 (FIFO): a retry due in an hour, one due an hour ago, a first
        // attempt and a replay not attempted yet; 2: FIFO, disabled; 3: ordered (its
        // retry is among those handed over first instead). Only 1's two retries are
        // remembered, whatever their time: whether 1 is quiet is judged as each is
        // handed over.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let t = 1_700_000_000_000;
        let key = |due_ms: u64, i: u64, ep: EndpointId| DueKey {
            due_ms,
            seq: seq_floor(t) + i,
            ep,
        };
        let retry = DueVal {
            attempts: 1,
            first: 0,
        };
        let replayed = DueVal {
            attempts: 2,
            first: 2,
        };
        let (later, past) = (key(t + 3_600_000, 0, 1), key(t - 3_600_000, 1, 1));
        let mut b = store.batch();
        b.put_due(&store, later, retry);
        b.put_due(&store, past, retry);
        b.put_due(&store, key(t, 2, 1), DueVal::NEW);
        b.put_due(&store, key(t, 3, 1), replayed);
        b.put_due(&store, key(t + 1, 4, 2), retry);
        b.put_due(&store, key(t + 2, 5, 3), retry);
        store.commit(b, false).unwrap();
        let mut routes: Vec<RouteInfo> = (1..=3).map(|id| info(id, &["a"], None)).collect();
        routes[1].enabled = false;
        routes[2].ordered = true;
        let p = count_pending(&store, &routes, 7 * 86_400_000).unwrap();
        let got: Vec<_> = p.far_retries.into_iter().collect();
        assert_eq!(got, [(past, retry), (later, retry)]);
        // Past the bound, the soonest are kept.
        let mut b = store.batch();
        for i in 0..MAX_FAR_RETRIES as u64 {
            b.put_due(&store, key(t + 10 + i, 10 + i, 1), retry);
        }
        store.commit(b, false).unwrap();
        let p = count_pending(&store, &routes, 7 * 86_400_000).unwrap();
        assert_eq!(p.far_retries.len(), MAX_FAR_RETRIES);
        assert_eq!(p.far_retries.keys().next(), Some(&past));
        assert!(!p.far_retries.contains_key(&later));
        assert!(p.far_retries.contains_key(&key(t + 10, 10, 1)));
    }
}
