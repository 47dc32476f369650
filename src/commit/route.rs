//! Routing: which enabled endpoints an event goes to ([`Router`]), and when a delivery
//! not yet attempted falls due ([`RouteInfo::first_due`]: on an `ordered` endpoint, in
//! acceptance order).
//!
//! Bookkeeping over what the committer knows of its endpoints: it must not read or write
//! the store, nor tell the workers anything (the committer persists an `ordered`
//! endpoint's first-attempt bound, and tells the owning worker of every change).

use rustc_hash::FxHashMap as HashMap;

use crate::store::{EndpointId, EndpointMeta};

/// What the committer knows of an endpoint.
#[derive(Debug, Clone)]
pub struct RouteInfo {
    pub id: EndpointId,
    pub name: String,
    pub worker: usize,
    pub events: Vec<String>,
    pub account: Option<String>,
    pub min_delay_ms: u64,
    pub enabled: bool,
    pub ordered: bool,
    /// Its worker may hold a retry whose `due` key is still on disk: the endpoint is
    /// `ordered` (the head's retry stays in its queue), or was since this process
    /// started (a `PUT` to `ordered = false` moves that retry into the FIFO queue). A
    /// replay then leaves its retries alone.
    pub holds_retries: bool,
    pub meta: EndpointMeta,
}

impl RouteInfo {
    /// When a delivery not yet attempted, of an event at `time_ms`, falls due: at its
    /// event time plus `min_delay`, not before `now`, and on an `ordered` endpoint not
    /// before any delivery given a due time before it (SPEC §6: acceptance order).
    /// One due only at or after `expires_ms` is never attempted (its event is past
    /// retention by then: see `State::never_due_from`), so it holds nothing back:
    /// an event stamped a month ahead would otherwise hold every later one until it
    /// expired too.
    /// Returns the previous bound when `meta` changed (to be persisted, or restored if
    /// the round that changed it is not written).
    pub(super) fn first_due(
        &mut self,
        time_ms: u64,
        now: u64,
        expires_ms: u64,
    ) -> (u64, Option<u64>) {
        let mut due_ms = now.max(time_ms.saturating_add(self.min_delay_ms));
        if !self.ordered || due_ms >= expires_ms {
            return (due_ms, None);
        }
        due_ms = due_ms.max(self.meta.first_due_ms);
        if due_ms > now && due_ms > self.meta.first_due_ms {
            let before = std::mem::replace(&mut self.meta.first_due_ms, due_ms);
            return (due_ms, Some(before));
        }
        (due_ms, None)
    }
}

/// Event type (and account) → subscribed, enabled endpoints.
///
/// Endpoints come and go one at a time ([`insert`](Self::insert),
/// [`remove`](Self::remove)), each in time proportional to its own event types (and the
/// endpoints sharing them), not to the number of endpoints: with 50,000 of them a
/// rebuild per change made every create over the API take tens of milliseconds.
#[derive(Default)]
pub struct Router {
    by_type: HashMap<String, Vec<EndpointId>>,
    wildcard: Vec<EndpointId>,
    names: HashMap<String, EndpointId>,
    pub(super) eps: HashMap<EndpointId, RouteInfo>,
}

impl Router {
    pub fn new(routes: Vec<RouteInfo>) -> Router {
        let mut r = Router::default();
        r.eps.reserve(routes.len());
        r.names.reserve(routes.len());
        for info in routes {
            r.insert(info);
        }
        r
    }

    /// Adds an endpoint, or replaces the one with its id (its types and name re-indexed).
    pub(super) fn insert(&mut self, info: RouteInfo) {
        self.remove(info.id);
        for (i, t) in info.events.iter().enumerate() {
            // Once per type (`events = ["t", "t"]`), so `route` need not look for the
            // endpoint among those it already took.
            if info.events[..i].contains(t) {
                continue;
            }
            if t == "*" {
                self.wildcard.push(info.id);
            } else if let Some(ids) = self.by_type.get_mut(t.as_str()) {
                ids.push(info.id);
            } else {
                self.by_type.insert(t.clone(), vec![info.id]);
            }
        }
        self.names.insert(info.name.clone(), info.id);
        self.eps.insert(info.id, info);
    }

    /// Takes an endpoint out of every index.
    pub(super) fn remove(&mut self, id: EndpointId) -> Option<RouteInfo> {
        let info = self.eps.remove(&id)?;
        for t in &info.events {
            let ids = if t == "*" {
                &mut self.wildcard
            } else if let Some(ids) = self.by_type.get_mut(t.as_str()) {
                ids
            } else {
                continue;
            };
            ids.retain(|e| *e != id);
            if ids.is_empty() && t != "*" {
                self.by_type.remove(t.as_str());
            }
        }
        if self.names.get(&info.name) == Some(&id) {
            self.names.remove(&info.name);
        }
        Some(info)
    }

    pub(super) fn by_name(&self, name: &str) -> Option<&RouteInfo> {
        self.names.get(name).and_then(|id| self.eps.get(id))
    }

    /// `id`'s name for a log line, `#id` once it is deleted (its `endpoint deleted`
    /// line gives both).
    pub(super) fn name_of(&self, id: EndpointId) -> String {
        self.eps
            .get(&id)
            .map_or_else(|| format!("#{id}"), |i| i.name.clone())
    }

    /// The enabled endpoints `etype` (with `account`) goes to, each once: those that
    /// name the type, then those subscribed to `"*"`.
    pub fn route(&self, etype: &str, account: Option<&str>, out: &mut Vec<EndpointId>) {
        out.clear();
        let typed = self.by_type.get(etype).map(Vec::as_slice).unwrap_or(&[]);
        let typed = typed.iter().map(|id| (id, false));
        for (id, wild) in typed.chain(self.wildcard.iter().map(|id| (id, true))) {
            let Some(info) = self.eps.get(id) else {
                continue;
            };
            // One that names the type as well as `"*"` was judged among the typed ones
            // (by its own list: looking for it in `out` made routing quadratic in the
            // endpoints of a type, 4 ms an event with 10,000 of them: `cargo bench
            // --bench ingest -- ingest/route`).
            if !info.enabled || (wild && info.events.iter().any(|e| e == etype)) {
                continue;
            }
            let ok = match (&info.account, account) {
                (None, _) => true,
                (Some(want), Some(have)) => want == have,
                (Some(_), None) => false,
            };
            if ok {
                out.push(*id);
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn info(id: u32, events: &[&str], account: Option<&str>) -> RouteInfo {
        RouteInfo {
            id,
            name: format!("e{id}"),
            worker: 0,
            events: events.iter().map(|s| s.to_string()).collect(),
            account: account.map(str::to_string),
            min_delay_ms: 0,
            ordered: false,
            holds_retries: false,
            enabled: true,
            meta: EndpointMeta::default(),
        }
    }

    #[test]
    fn first_due_keeps_acceptance_order_only_on_ordered_endpoints() {
        let now = 1_000_000;
        let mut free = info(1, &["t"], None);
        free.min_delay_ms = 500;
        let never = u64::MAX;
        assert_eq!(
            free.first_due(now + 10_000, now, never),
            (now + 10_500, None)
        );
        assert_eq!(free.first_due(now - 60_000, now, never), (now, None));
        assert_eq!(free.meta.first_due_ms, 0);

        let mut fifo = info(2, &["t"], None);
        fifo.ordered = true;
        fifo.min_delay_ms = 500;
        // Due now: nothing to remember.
        assert_eq!(fifo.first_due(now - 60_000, now, never), (now, None));
        assert_eq!(fifo.meta.first_due_ms, 0);
        // Due later: remembered (with the bound before), and it bounds later ones.
        assert_eq!(
            fifo.first_due(now + 10_000, now, never),
            (now + 10_500, Some(0))
        );
        assert_eq!(
            fifo.first_due(now - 60_000, now, never),
            (now + 10_500, None)
        );
        assert_eq!(
            fifo.first_due(now + 20_000, now, never),
            (now + 20_500, Some(now + 10_500))
        );
        // Once the bound has passed, it holds nothing back.
        let later = now + 30_000;
        assert_eq!(fifo.first_due(later - 60_000, later, never), (later, None));
        assert_eq!(fifo.meta.first_due_ms, now + 20_500);
        // One due after its event expires holds nothing back, nor is held.
        let expires = later + 60_000;
        assert_eq!(
            fifo.first_due(later + 3_600_000, later, expires),
            (later + 3_600_500, None)
        );
        assert_eq!(
            fifo.first_due(later - 60_000, later, expires),
            (later, None)
        );
        assert_eq!(fifo.meta.first_due_ms, now + 20_500);
    }

    #[test]
    fn routing_by_type_wildcard_and_account() {
        let r = Router::new(vec![
            info(1, &["a"], None),
            info(2, &["*"], None),
            info(3, &["a", "b"], Some("p1")),
        ]);
        let mut out = Vec::new();
        r.route("a", None, &mut out);
        assert_eq!(out, vec![1, 2]);
        r.route("a", Some("p1"), &mut out);
        assert_eq!(out, vec![1, 3, 2]);
        r.route("b", Some("p2"), &mut out);
        assert_eq!(out, vec![2]);
    }

    #[test]
    fn an_endpoint_naming_a_type_twice_or_with_the_wildcard_gets_it_once() {
        let mut r = Router::new(vec![
            info(1, &["t", "t"], None),
            info(2, &["*", "t", "*"], None),
            info(3, &["*"], None),
            info(4, &["t", "*"], Some("p")),
        ]);
        let mut out = Vec::new();
        r.route("t", None, &mut out);
        assert_eq!(out, vec![1, 2, 3]);
        r.route("t", Some("p"), &mut out);
        assert_eq!(out, vec![1, 2, 4, 3]);
        r.route("u", Some("p"), &mut out);
        assert_eq!(out, vec![2, 3, 4]);
        r.eps.get_mut(&2).unwrap().enabled = false;
        r.route("t", None, &mut out);
        assert_eq!(out, vec![1, 3]);
        r.remove(1);
        r.remove(2);
        r.remove(4);
        assert_eq!((r.by_type.len(), r.wildcard.as_slice()), (0, &[3][..]));
    }

    #[test]
    fn endpoints_come_and_go_one_at_a_time() {
        let mut r = Router::new(vec![info(1, &["a"], None), info(2, &["*"], None)]);
        let mut out = Vec::new();
        // Replaced: its old types no longer route to it, its new ones do.
        r.insert(info(1, &["b", "*"], None));
        r.route("a", None, &mut out);
        assert_eq!(out, vec![2, 1]);
        r.route("b", None, &mut out);
        assert_eq!(out, vec![1, 2]);
        assert!(!r.by_type.contains_key("a"), "an emptied type is dropped");
        r.insert(info(3, &["b"], Some("p")));
        r.route("b", Some("p"), &mut out);
        assert_eq!(out, vec![1, 3, 2]);
        assert_eq!(r.by_name("e3").map(|i| i.id), Some(3));
        // Removed: from every type, the wildcard and the names.
        assert_eq!(r.remove(1).map(|i| i.id), Some(1));
        assert!(r.remove(1).is_none());
        r.route("b", Some("p"), &mut out);
        assert_eq!(out, vec![3, 2]);
        assert!(r.by_name("e1").is_none());
        assert_eq!(r.wildcard, vec![2]);
        r.remove(3);
        r.remove(2);
        assert!(r.by_type.is_empty() && r.wildcard.is_empty() && r.names.is_empty());
    }
}
