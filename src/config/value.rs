//! Values that `[server]` and `[[endpoint]]` keys read alike, with messages that say
//! what the key takes: whole numbers ([`whole`]), a word from a fixed list ([`word`]),
//! a path ([`path`]), a string of some form ([`string`]). serde's own messages name a Rust type instead (`workers = "two"`
//! said `expected usize`, `max_rps = -1` `expected u32`, `data_dir = 5` `expected path
//! string`), and the TOML reader gives a word any other value only `wanted string or
//! table` (`driver = 3`), naming nothing the key takes; a table was even read as a word
//! (`method = { a = 1 }`: `unknown variant `a``).
//!
//! The key itself is named by the caller ([`super::field_message`]); these say what is
//! wrong with the value and what the key expects. Bounds a key sets beyond its type's
//! (`workers` at most [`super::MAX_WORKERS`], `max_line_bytes` at least 64) are checked
//! by the key's own checks, with the message they give.

use std::fmt;
use std::marker::PhantomData;
use std::path::PathBuf;

use serde::de::{self, Deserializer, Visitor};

/// The key under which the TOML reader hands a date-time to a visitor, as a one-entry
/// table: a visitor that takes tables must not read it as one (`headers =
/// 1979-05-27T00:00:00Z` was a header named `$__toml_private_datetime`).
pub(super) const TOML_DATETIME_KEY: &str = "$__toml_private_datetime";

/// A whole number of type `T`; `what` says what the key takes, for the message of any
/// other value (`invalid type: string "two", expected a whole number of worker
/// threads (0 = one per core)`) or of a number out of `T`'s range (`invalid value:
/// integer `-1`, expected …`).
pub(super) fn whole<'de, D, T>(d: D, what: &'static str) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64> + TryFrom<i64>,
{
    struct V<T>(&'static str, PhantomData<T>);
    impl<T: TryFrom<u64> + TryFrom<i64>> Visitor<'_> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_u64<E: de::Error>(self, n: u64) -> Result<T, E> {
            T::try_from(n).map_err(|_| E::invalid_value(de::Unexpected::Unsigned(n), &self))
        }
        fn visit_i64<E: de::Error>(self, n: i64) -> Result<T, E> {
            T::try_from(n).map_err(|_| E::invalid_value(de::Unexpected::Signed(n), &self))
        }
    }
    d.deserialize_u64(V(what, PhantomData))
}

/// One of `words`, read as the value at the same place in `values`: any other word is
/// an unknown one (`unknown variant `fast`, expected one of `sync`, `batch`, `none``),
/// any other value says which words the key takes.
pub(super) fn word<'de, D, T>(
    d: D,
    words: &'static [&'static str],
    values: &[T],
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Copy,
{
    struct V(&'static [&'static str]);
    impl Visitor<'_> for V {
        type Value = usize;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("one of ")?;
            for (i, w) in self.0.iter().enumerate() {
                let sep = if i == 0 { "" } else { ", " };
                write!(f, "{sep}`{w}`")?;
            }
            Ok(())
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<usize, E> {
            self.0
                .iter()
                .position(|w| *w == s)
                .ok_or_else(|| E::unknown_variant(s, self.0))
        }
    }
    debug_assert_eq!(words.len(), values.len());
    let at = d.deserialize_str(V(words))?;
    Ok(values[at])
}

/// A string; `what` says what the key takes, for the message of any other value.
pub(super) fn string<'de, D: Deserializer<'de>>(
    d: D,
    what: &'static str,
) -> Result<String, D::Error> {
    struct V(&'static str);
    impl Visitor<'_> for V {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<String, E> {
            Ok(s.to_string())
        }
    }
    d.deserialize_str(V(what))
}

/// A path, written as a string.
pub(super) fn path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    string(d, "a path (a string)").map(PathBuf::from)
}

/// [`path`], for a key that may be left out.
pub(super) fn path_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    path(d).map(Some)
}

#[cfg(test)]
mod tests {
    use crate::config::tests::problems;

    /// Every key of `[server]` and `[[endpoint]]` given values of the wrong kind: each
    /// message names the key and what it takes, never a Rust type (`usize`, `u32`,
    /// `path string`) nor only `wanted string or table`.
    #[test]
    fn a_bad_value_says_what_its_key_takes() {
        let text = r#"[server]
workers = "two"
max_line_bytes = -1
driver = 3
durability = { a = 1 }
data_dir = 5
socket = []
extra_ca_file = true
admin = 7878

[[endpoint]]
name = "a"
events = "t"
url = "http://h/"
method = 1
format = { a = 1 }
max_rps = 1.5
max_in_flight = 99999999999
disable_after = { "4xx" = "many" }
"#;
        assert_eq!(
            problems(text),
            [
                r#"2:11: server: field `workers`: invalid type: string "two", expected a whole number of worker threads (0 = one per core)"#,
                "3:18: server: field `max_line_bytes`: invalid value: integer `-1`, expected a whole number of bytes, at least 64",
                "4:10: server: field `driver`: invalid type: integer `3`, expected one of `auto`, `uring`, `legacy`",
                "5:14: server: field `durability`: invalid type: map, expected one of `sync`, `batch`, `none`",
                "6:12: server: field `data_dir`: invalid type: integer `5`, expected a path (a string)",
                "7:10: server: field `socket`: invalid type: sequence, expected a path (a string)",
                "8:17: server: field `extra_ca_file`: invalid type: boolean `true`, expected a path (a string)",
                r#"9:9: server: field `admin`: invalid type: integer `7878`, expected an IP address and port as a string, such as "127.0.0.1:7878""#,
                r#"13:10: endpoint a: field `events`: invalid type: string "t", expected a list of event types, such as ["sale"] or ["*"]"#,
                "15:10: endpoint a: field `method`: invalid type: integer `1`, expected one of `GET`, `POST`, `PUT`, `PATCH`",
                "16:10: endpoint a: field `format`: invalid type: map, expected one of `json`, `xml`, `form`, `text`",
                "17:11: endpoint a: field `max_rps`: invalid type: floating point `1.5`, expected a whole number of requests per second, 0 (unlimited) to 4294967295",
                "18:17: endpoint a: field `max_in_flight`: invalid value: integer `99999999999`, expected a whole number of concurrent requests, 1 to 4294967295",
                r#"19:27: endpoint a: field `disable_after.4xx`: invalid type: string "many", expected a whole number of consecutive failures, 1 to 4294967295"#,
            ]
        );
        // The words are read as they were, the numbers too.
        let file = crate::config::ConfigFile::parse(
            "[server]\nworkers = 3\ndriver = \"legacy\"\ndurability = \"none\"\ndata_dir = \"d\"\n\n\
             [[endpoint]]\nname = \"a\"\nevents = [\"t\"]\nurl = \"http://h/\"\nmethod = \"GET\"\n\
             format = \"xml\"\nmax_rps = 7\nmax_in_flight = 4294967295\n\
             disable_after = { \"4xx\" = 9 }\n",
            "f.toml",
        )
        .unwrap();
        assert!(file.problems.is_empty(), "{:?}", file.problems);
        let (s, e) = (&file.config.server, &file.config.endpoints[0]);
        assert_eq!((s.workers, s.data_dir.to_str()), (3, Some("d")));
        assert_eq!(s.driver, crate::config::Driver::Legacy);
        assert_eq!(s.durability, crate::config::Durability::None);
        assert_eq!(
            (e.method, e.format),
            (crate::config::Method::Get, crate::config::Format::Xml)
        );
        assert_eq!(
            (e.max_rps, e.max_in_flight, e.disable_after.c4xx),
            (7, u32::MAX, 9)
        );
    }

    #[test]
    fn a_date_time_is_no_table_of_headers() {
        let text = "[[endpoint]]\nname = \"a\"\nevents = [\"t\"]\nurl = \"http://h/\"\n\
                    headers = 1979-05-27T00:00:00Z\n";
        assert_eq!(
            problems(text),
            [
                "5:11: endpoint a: field `headers`: invalid type: date-time, expected a table of \
              header names to string values"
            ]
        );
    }
}
