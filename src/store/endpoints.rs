//! Endpoints as persisted in the `endpoints` column family: their state
//! ([`EndpointMeta`], with who disabled them, [`DisabledBy`]), where their configuration
//! comes from ([`EndpointSource`]), and the store's reads of that family: the states,
//! the stored configurations ([`StoredEndpoint`]), the name every id was given, and the
//! markers of deletes and disables still being carried out.
//!
//! The values are JSON; the keys are laid out in `keys`, the writes go through
//! [`Batch`](super::Batch). Must not decide what a disable or a delete does to
//! deliveries (the committer does), nor check or compile a stored configuration
//! ([`crate::config`] and [`crate::endpoint`] do).

use rocksdb::IteratorMode;

use crate::config::EndpointConfig;
use serde::{Deserialize, Serialize};

use super::keys::{CONFIG_PREFIX, DELETING_PREFIX, NAME_PREFIX, PAUSING_PREFIX};
use super::{EndpointId, Result, Seq, Store, StoreError, CF_ENDPOINTS};

/// Persisted per-endpoint state.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EndpointMeta {
    pub id: EndpointId,
    /// Set while the endpoint is disabled, with why, in words (the admin API shows it).
    /// Change it only through the methods that keep it and `disabled_by` together
    /// ([`EndpointMeta::disable`], [`EndpointMeta::enable`] and their kin).
    #[serde(default)]
    pub disabled_reason: Option<String>,
    /// Who disabled it; absent in records written before it was stored (see
    /// [`EndpointMeta::disabled_by`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_by: Option<DisabledBy>,
    /// Consecutive failures per class (3xx, 4xx, 5xx) when last recorded.
    #[serde(default)]
    pub fails: [u32; 3],
    /// `ordered` endpoints: the delivery at the head waiting for its retry, as
    /// (seq, due_ms, attempts), so a restart puts it back in front.
    #[serde(default)]
    pub hold: Option<(Seq, u64, u16)>,
    /// The held delivery's round start (see [`DueVal`](super::DueVal)): nonzero after a
    /// replay.
    #[serde(default)]
    pub hold_first: u16,
    /// `ordered` endpoints: the latest first-attempt due time given to a delivery while
    /// it was in the future, so that one accepted later is never due before it (an
    /// earlier event time can put it there), after a restart too. 0 if none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub first_due_ms: u64,
    /// Where its configuration comes from.
    #[serde(default)]
    pub source: EndpointSource,
    /// The config file listed it at a start: it is the file's, replaced over the API
    /// since or not, and deleted at a start whose file no longer lists it (an endpoint
    /// created over the API and never named by the file runs on). Records written
    /// before this was kept have it false: their `source` says the same.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_file: bool,
}

impl EndpointMeta {
    /// Whether the config file owns it ([`EndpointMeta::from_file`]).
    pub fn is_the_file_s(&self) -> bool {
        self.from_file || self.source == EndpointSource::Config
    }
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Where an endpoint's configuration comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointSource {
    /// The config file: applied at every start, removed when the file drops it.
    #[default]
    Config,
    /// Created over the admin API: persisted here only.
    Api,
}

impl EndpointSource {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointSource::Config => "config",
            EndpointSource::Api => "api",
        }
    }
}

/// An endpoint as persisted.
#[derive(Debug, Clone)]
pub struct StoredEndpoint {
    pub name: String,
    pub meta: EndpointMeta,
    /// Absent for endpoints written before configurations were stored.
    pub config: Option<EndpointConfig>,
}

/// Who disabled an endpoint: it decides what may enable it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisabledBy {
    /// The config file says `enabled = false`; the file saying `true` enables it again.
    Config,
    /// A definition sent over the API says `enabled = false`; a definition saying
    /// `true` (or the config file) enables it again.
    Definition,
    /// Its stored definition no longer compiles (a newer version checks templates more
    /// strictly); any definition that compiles replaces it and decides alone.
    NotCompiling,
    /// The receiver's answers (`410 Gone`, `disable_after`): only an explicit enable.
    Receiver,
    /// `POST /v1/endpoints/{name}/disable`: only an explicit enable.
    Admin,
}

impl DisabledBy {
    /// The reason shown, in words (a detail may follow, see
    /// [`EndpointMeta::disable_because`]).
    pub fn words(self) -> &'static str {
        match self {
            DisabledBy::Config => LEGACY_IN_CONFIG,
            DisabledBy::Definition => LEGACY_IN_SPEC,
            DisabledBy::Admin => LEGACY_ADMIN,
            DisabledBy::NotCompiling => LEGACY_NOT_COMPILING,
            DisabledBy::Receiver => "disabled by the receiver's answers",
        }
    }

    /// The cause of a disable recorded before causes were stored, from the words this
    /// program wrote then: the only place a reason's text is read.
    fn from_legacy_reason(reason: &str) -> DisabledBy {
        match reason {
            LEGACY_IN_CONFIG => DisabledBy::Config,
            LEGACY_IN_SPEC => DisabledBy::Definition,
            LEGACY_ADMIN => DisabledBy::Admin,
            r if r.starts_with(LEGACY_NOT_COMPILING) => DisabledBy::NotCompiling,
            _ => DisabledBy::Receiver,
        }
    }
}

// The words of the fixed reasons. They are also how records written before
// `disabled_by` existed tell their cause, so they never change.
const LEGACY_IN_CONFIG: &str = "disabled in the config file";
const LEGACY_IN_SPEC: &str = "disabled by its definition (enabled = false)";
const LEGACY_ADMIN: &str = "disabled over the admin API";
const LEGACY_NOT_COMPILING: &str = "its stored definition no longer compiles";

impl EndpointMeta {
    pub fn is_disabled(&self) -> bool {
        self.disabled_reason.is_some()
    }

    /// Who disabled it, `None` while it is enabled.
    pub fn disabled_by(&self) -> Option<DisabledBy> {
        let reason = self.disabled_reason.as_deref()?;
        Some(
            self.disabled_by
                .unwrap_or_else(|| DisabledBy::from_legacy_reason(reason)),
        )
    }

    /// Disables it, with the cause's words as the reason.
    pub fn disable(&mut self, by: DisabledBy) {
        self.disabled_reason = Some(by.words().to_string());
        self.disabled_by = Some(by);
    }

    /// Disables it with a detail: the receiver's answer is the whole reason (`410 Gone`,
    /// the failures counted); a compile error follows the cause's words.
    pub fn disable_because(&mut self, by: DisabledBy, detail: &str) {
        self.disabled_reason = Some(match by {
            DisabledBy::Receiver => detail.to_string(),
            _ => format!("{}: {detail}", by.words()),
        });
        self.disabled_by = Some(by);
    }

    /// Disables it as its stored definition, which compiles, is refused now by a check
    /// it no longer passes (the SSRF guard's): [`DisabledBy::NotCompiling`], as what
    /// lifts it is the same (a definition that passes), its reason saying why.
    pub fn disable_refused(&mut self, why: &str) {
        self.disabled_reason = Some(format!("its stored definition is refused now: {why}"));
        self.disabled_by = Some(DisabledBy::NotCompiling);
    }

    pub fn enable(&mut self) {
        self.disabled_reason = None;
        self.disabled_by = None;
    }
}

impl Store {
    /// Endpoints disabled whose due deliveries were still being paused, by id
    /// ([`Batch::pausing`](super::Batch::pausing)).
    pub fn pausing(&self) -> Result<Vec<EndpointId>> {
        self.ids_under(PAUSING_PREFIX)
    }

    /// Endpoints deleted whose pending deliveries are still being failed, by id
    /// ([`Batch::delete_endpoint`](super::Batch::delete_endpoint)).
    pub fn deleting(&self) -> Result<Vec<EndpointId>> {
        self.ids_under(DELETING_PREFIX)
    }

    /// The ids of every `<prefix><id>` marker in `endpoints`.
    fn ids_under(&self, prefix: &str) -> Result<Vec<EndpointId>> {
        Ok(self.by_id(prefix)?.into_iter().map(|(id, _)| id).collect())
    }

    /// Every `<prefix><id>` entry of `endpoints` (the id big-endian), with its value.
    fn by_id(&self, prefix: &str) -> Result<Vec<(EndpointId, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut it = self.db.raw_iterator_cf(self.cf(CF_ENDPOINTS));
        it.seek(prefix);
        while it.valid() {
            let k = it.key().unwrap_or_default();
            let Some(id) = k.strip_prefix(prefix.as_bytes()) else {
                break;
            };
            if let Ok(id) = id.try_into().map(u32::from_be_bytes) {
                out.push((id, it.value().unwrap_or_default().to_vec()));
            }
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// Every persisted endpoint, by name (state only).
    pub fn endpoints(&self) -> Result<Vec<(String, EndpointMeta)>> {
        Ok(self
            .stored_endpoints()?
            .into_iter()
            .map(|e| (e.name, e.meta))
            .collect())
    }

    /// One endpoint's persisted state, by name (a point read: `GET` of one endpoint
    /// must not cost a scan of thousands).
    pub fn endpoint_meta(&self, name: &str) -> Result<Option<EndpointMeta>> {
        let Some(v) = self
            .db
            .get_pinned_cf(self.cf(CF_ENDPOINTS), name.as_bytes())?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                cf: CF_ENDPOINTS,
                what: format!("{name}: {}", crate::config::without_value(&e.to_string())),
            })
    }

    /// Every persisted endpoint with its stored configuration.
    pub fn stored_endpoints(&self) -> Result<Vec<StoredEndpoint>> {
        let mut out: Vec<StoredEndpoint> = Vec::new();
        let mut configs = std::collections::HashMap::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_ENDPOINTS), IteratorMode::Start)
        {
            let (k, v) = item?;
            let key = String::from_utf8_lossy(&k).into_owned();
            // The message is logged as the start fails: it must not quote the value,
            // which may be a header's credential (`invalid type: string "Bearer …"`).
            let corrupt = |e: serde_json::Error| StoreError::Corrupt {
                cf: CF_ENDPOINTS,
                what: format!("{key}: {}", crate::config::without_value(&e.to_string())),
            };
            if let Some(name) = key.strip_prefix(CONFIG_PREFIX) {
                let cfg: EndpointConfig = serde_json::from_slice(&v).map_err(corrupt)?;
                configs.insert(name.to_string(), cfg);
            } else if !key.starts_with('~') {
                let meta: EndpointMeta = serde_json::from_slice(&v).map_err(corrupt)?;
                out.push(StoredEndpoint {
                    name: key,
                    meta,
                    config: None,
                });
            }
        }
        for e in &mut out {
            e.config = configs.remove(&e.name);
        }
        Ok(out)
    }

    /// The name every endpoint id was given (deleted ones included). Reads only the
    /// `~name/` keys (data dirs from before they existed fall back to the metas).
    pub fn endpoint_names(&self) -> Result<std::collections::HashMap<EndpointId, String>> {
        let mut out: std::collections::HashMap<EndpointId, String> = self
            .by_id(NAME_PREFIX)?
            .into_iter()
            .map(|(id, name)| (id, String::from_utf8_lossy(&name).into_owned()))
            .collect();
        if out.is_empty() {
            for (name, meta) in self.endpoints()? {
                out.insert(meta.id, name);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_endpoint_that_does_not_decode_is_reported_without_its_values() {
        // A record of another version's shape: the error, which the failed start logs,
        // quoted the value it could not read, a header's credential here.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let cf = store.cf(CF_ENDPOINTS);
        store.db.put_cf(cf, "a", br#"{"id": 1}"#).unwrap();
        store
            .db
            .put_cf(
                cf,
                format!("{CONFIG_PREFIX}a"),
                br#"{"name": "a", "events": ["t"], "url": "http://h/", "headers": "Bearer CFG-SECRET"}"#,
            )
            .unwrap();
        let e = store.stored_endpoints().unwrap_err().to_string();
        assert!(!e.contains("SECRET"), "{e}");
        assert!(e.contains("invalid type: string, expected"), "{e}");
        store
            .db
            .put_cf(cf, "a", br#"{"id": "Bearer META-SECRET"}"#)
            .unwrap();
        let e = store.endpoint_meta("a").unwrap_err().to_string();
        assert!(!e.contains("SECRET"), "{e}");
        assert!(e.contains("invalid type: string, expected"), "{e}");
    }

    #[test]
    fn an_endpoints_disabled_cause_is_stored_and_old_records_are_read_by_their_words() {
        let mut meta = EndpointMeta::default();
        assert_eq!(meta.disabled_by(), None);
        meta.disable_because(DisabledBy::Receiver, "410 Gone");
        assert_eq!(meta.disabled_reason.as_deref(), Some("410 Gone"));
        assert_eq!(meta.disabled_by(), Some(DisabledBy::Receiver));
        // A receiver's words that look like a fixed cause's are still the receiver's.
        meta.disable_because(DisabledBy::Receiver, LEGACY_IN_CONFIG);
        let json = serde_json::to_string(&meta).unwrap();
        assert!(json.contains(r#""disabled_by":"receiver""#), "{json}");
        let back: EndpointMeta = serde_json::from_str(&json).unwrap();
        assert_eq!(back.disabled_by(), Some(DisabledBy::Receiver));
        meta.disable_because(DisabledBy::NotCompiling, "body: 1:2: unknown data point");
        assert_eq!(
            meta.disabled_reason.as_deref(),
            Some("its stored definition no longer compiles: body: 1:2: unknown data point")
        );
        meta.enable();
        assert_eq!(
            (meta.disabled_reason.as_deref(), meta.disabled_by()),
            (None, None)
        );
        let json = serde_json::to_string(&meta).unwrap();
        assert!(!json.contains("disabled_by"), "{json}");

        // Records written before the cause was stored: read from the words written then.
        let old = |reason: &str| {
            let json = serde_json::json!({ "id": 3, "disabled_reason": reason });
            serde_json::from_value::<EndpointMeta>(json)
                .unwrap()
                .disabled_by()
        };
        assert_eq!(old("disabled in the config file"), Some(DisabledBy::Config));
        assert_eq!(
            old("disabled by its definition (enabled = false)"),
            Some(DisabledBy::Definition)
        );
        assert_eq!(old("disabled over the admin API"), Some(DisabledBy::Admin));
        assert_eq!(
            old("its stored definition no longer compiles: x"),
            Some(DisabledBy::NotCompiling)
        );
        assert_eq!(old("5 consecutive 5xx"), Some(DisabledBy::Receiver));
        for by in [
            DisabledBy::Config,
            DisabledBy::Definition,
            DisabledBy::Admin,
        ] {
            let mut m = EndpointMeta::default();
            m.disable(by);
            assert_eq!(old(m.disabled_reason.as_deref().unwrap()), Some(by));
        }
    }

    #[test]
    fn endpoint_configs_and_names_persist() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let cfg: EndpointConfig =
            toml::from_str("name = \"p\"\nevents = [\"t\"]\nurl = \"http://h/\"\n").unwrap();
        let mut b = s.batch();
        let meta = EndpointMeta {
            id: 7,
            source: EndpointSource::Api,
            ..EndpointMeta::default()
        };
        b.put_endpoint(&s, "p", &meta);
        b.put_endpoint_config(&s, 7, "p", &cfg);
        s.commit(b, true).unwrap();
        let all = s.stored_endpoints().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].meta, meta);
        assert_eq!(all[0].config.as_ref().unwrap().url, "http://h/");
        let mut b = s.batch();
        b.delete_endpoint(&s, "p", 7);
        s.commit(b, true).unwrap();
        assert!(s.stored_endpoints().unwrap().is_empty());
        assert_eq!(s.endpoint_names().unwrap()[&7], "p");
    }
}
