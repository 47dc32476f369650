//! One ingest line → a [`NewEvent`] (SPEC §3).
//!
//! simd-json validates the whole line and reads the envelope fields from its tape; the
//! `data` object is kept as the exact bytes the producer sent (a small scanner finds its
//! span), so numbers and strings reach the receivers as they came. Buffers are reused
//! across lines. This module must not allocate for anything but the event it returns.

use bytes::Bytes;
use simd_json::prelude::*;

use crate::commit::NewEvent;
use crate::config::valid_event_type;

/// Why a line was rejected (`err invalid <message>`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(msg: impl Into<String>) -> Invalid {
    Invalid(msg.into())
}

/// SPEC §3: an `id` is 1..128 bytes without whitespace. "Whitespace" is Unicode's
/// (U+00A0, U+2028, …, not only ASCII), and control characters are refused too: the id is
/// written into the ack line and into every request's `webhook-id` header, where neither
/// may appear. Ids of the form ricochet generates (`evt_` + 16 hex digits) are reserved,
/// so a producer's id never names another event.
fn check_event_id(id: &str) -> Result<(), Invalid> {
    if id.is_empty() || id.len() > 128 {
        return Err(invalid("field `id` must be 1..128 bytes"));
    }
    let bad = if id.is_ascii() {
        id.bytes().any(|b| b <= b' ' || b == 0x7f)
    } else {
        id.chars().any(|c| c.is_whitespace() || c.is_control())
    };
    if bad {
        return Err(invalid(
            "field `id` must not contain whitespace or control characters",
        ));
    }
    if crate::store::parse_generated_id(id).is_some() {
        return Err(invalid(
            "field `id`: ids of the form evt_<16 hex digits> are reserved for generated ids",
        ));
    }
    Ok(())
}

/// 9999-12-31T23:59:59.999Z in Unix milliseconds: the last time RFC 3339 can write.
pub const MAX_TIME_MS: u64 = 253_402_300_799_999;

/// 1973-03-03T09:46:40Z in Unix milliseconds. A smaller number is far likelier Unix
/// seconds (any time from then until the year 5138) than a millisecond time in 1970–73:
/// read as milliseconds it would put an event's time, or a window's edge, decades back.
pub const MIN_MS_TIME: u64 = 100_000_000_000;

/// Whether `n`, given as Unix milliseconds, looks like Unix seconds ([`MIN_MS_TIME`]).
pub fn looks_like_seconds(n: u64) -> bool {
    n < MIN_MS_TIME
}

/// Reusable parser state, one per connection.
pub struct LineParser {
    scratch: Vec<u8>,
    buffers: simd_json::Buffers,
    /// A line's copy with its numbers beyond the f64 range written as `0.0`, parsed
    /// again when simd-json refuses one (unused by other lines).
    in_range: Vec<u8>,
    /// A line's copy with its unpaired surrogate escapes written as `\ufffd` (the
    /// event's data is taken from it), when simd-json refuses one.
    paired: Vec<u8>,
    /// How far ahead of now an event's `time` may be ([`LineParser::for_ingest`]).
    max_ahead_ms: Option<u64>,
}

/// Its buffers start empty and grow to the lines it parses (then stay, up to
/// [`KEEP_BYTES`]): a connection that sends nothing holds none of them. With 4 KiB
/// each from the start (simd-json's among them), 1,000 idle connections held 102 KiB
/// each, with a 64 KiB first read and a 16 KiB ack buffer (docs/performance.md, "Open
/// ingest connections").
impl Default for LineParser {
    fn default() -> Self {
        LineParser {
            scratch: Vec::new(),
            buffers: simd_json::Buffers::new(0),
            in_range: Vec::new(),
            paired: Vec::new(),
            max_ahead_ms: None,
        }
    }
}

impl LineParser {
    /// A parser for events to accept, with the server's `retention`: an event whose
    /// `time` is further ahead than that is refused, since it would pass retention
    /// (counted from its acceptance) before its first attempt is due (at its time), and
    /// so expire unsent, with only a counter to say so.
    pub fn for_ingest(retention: std::time::Duration) -> LineParser {
        LineParser {
            max_ahead_ms: Some(retention.as_millis() as u64),
            ..LineParser::default()
        }
    }
}

/// `err invalid not JSON: …` for a line simd-json refused.
fn not_json(e: &simd_json::Error, line: &[u8]) -> Invalid {
    invalid(format!("not JSON: {}", json_error(e, line)))
}

/// A JSON syntax error in `line` in plain words, with where it was found (simd-json's
/// own `Display` names its internal variants, and its first pass finds bad UTF-8 and raw
/// control characters without saying where).
fn json_error(e: &simd_json::Error, line: &[u8]) -> String {
    use simd_json::ErrorType as E;
    if let Err(u) = std::str::from_utf8(line) {
        return format!("invalid UTF-8 (at byte {})", u.valid_up_to());
    }
    if let Some(at) = line
        .iter()
        .position(|&b| b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r'))
    {
        return format!("a raw control character (at byte {at}): escape it (\\u00XX)");
    }
    // simd-json places string errors at byte 0: find them (one before where simd-json
    // stopped, not a later one past an earlier error of another kind).
    if let Some((at, found)) = string_error(line) {
        let in_a_string = matches!(
            e.error(),
            E::InvalidEscape | E::InvalidUnicodeEscape | E::InvalidUnicodeCodepoint
        );
        if in_a_string || e.index() == 0 || at <= e.index() {
            return found;
        }
    }
    // serde_json's reading of the line, where simd-json's is vague. A whole value with
    // something after it is said at the first byte that follows (simd-json places it
    // at the value's last byte, or at byte 0 when what follows opens a string); a line
    // cut short inside a value (simd-json: a syntax error), and one whose value cannot
    // start where it does (`bad1`; simd-json: something follows it), are said so.
    let mut values =
        serde_json::Deserializer::from_slice(line).into_iter::<serde::de::IgnoredAny>();
    match values.next() {
        Some(Ok(_)) => {
            let end = values.byte_offset();
            if let Some(n) = line[end..]
                .iter()
                .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
            {
                return at_char(
                    "not one JSON value (something follows it, or it is cut)",
                    end + n,
                    line,
                );
            }
        }
        Some(Err(se)) if se.is_eof() => {
            return at_char("the line ends inside a value", line.len(), line);
        }
        Some(Err(se)) => {
            let msg = se.to_string();
            if msg.starts_with("expected value") {
                let at = se.column().saturating_sub(1);
                return at_char("no JSON value starts like this", at, line);
            }
            if msg.starts_with("expected ident") {
                return at_char("not true, false or null", e.index(), line);
            }
        }
        None => {}
    }
    let what = match e.error() {
        E::Eof => "the text ends inside a value",
        E::TrailingData | E::InternalError => {
            "not one JSON value (something follows it, or it is cut)"
        }
        E::InvalidUtf8 => "invalid UTF-8",
        E::InvalidEscape | E::InvalidUnicodeEscape | E::InvalidUnicodeCodepoint => {
            "a bad escape in a string"
        }
        E::InvalidNumber | E::InvalidExponent => "a bad number",
        E::UnterminatedString => "an unterminated string",
        E::DepthLimitExceeded => "nested too deep",
        E::KeyMustBeAString | E::ExpectedObjectKey => "an object key that is not a string",
        _ => "a syntax error",
    };
    at_char(what, e.index(), line)
}

/// `what` with the byte offset `at` in `line` (valid UTF-8) and the character there,
/// whole (simd-json gives its byte, read as Latin-1: a no-break space showed as 'Â').
fn at_char(what: &str, at: usize, line: &[u8]) -> String {
    let c = std::str::from_utf8(line)
        .ok()
        .and_then(|s| {
            s.char_indices()
                .find(|&(i, c)| i <= at && at < i + c.len_utf8())
        })
        .map(|(_, c)| c);
    match c {
        Some(c) if !c.is_control() => format!("{what} (at byte {at}, {c:?})"),
        _ => format!("{what} (at byte {at})"),
    }
}

/// The first problem inside a string of `line` (valid UTF-8, no raw control character
/// but tab, CR or LF), in plain words with its byte offset: a raw tab or line break, an
/// unknown escape, a `\\u` without four hex digits.
fn string_error(line: &[u8]) -> Option<(usize, String)> {
    let hex4 = |at: usize| {
        line.get(at..at + 4)
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    };
    let mut i = 0;
    let mut in_string = false;
    while i < line.len() {
        let b = line[i];
        if !in_string {
            in_string = b == b'"';
            i += 1;
            continue;
        }
        match b {
            b'"' => in_string = false,
            b'\t' | b'\n' | b'\r' => {
                return Some((
                    i,
                    format!(
                    "a raw tab or line break in a string (at byte {i}): escape it (\\t, \\n, \\r)"
                ),
                ))
            }
            b'\\' => match line.get(i + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 1,
                // (A surrogate without its other half is read as U+FFFD before this
                // is asked: [`write_unpaired_surrogates_as_replacement`].)
                Some(b'u') if hex4(i + 2) => i += 5,
                Some(b'u') => {
                    return Some((
                        i,
                        format!(
                            "a bad escape in a string (at byte {i}): \\u takes four hex digits"
                        ),
                    ))
                }
                _ => return Some((i, format!("a bad escape in a string (at byte {i})"))),
            },
            _ => {}
        }
        i += 1;
    }
    None
}

/// Writes every `\uXXXX` escape of `line` that is half of a surrogate pair without its
/// other half as `\ufffd` (U+FFFD, the replacement character), in place: the same
/// length. Returns whether it wrote any.
fn write_unpaired_surrogates_as_replacement(line: &mut [u8]) -> bool {
    let unit = |line: &[u8], at: usize| -> Option<u16> {
        let h = line.get(at..at + 6)?.strip_prefix(b"\\u")?;
        u16::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()
    };
    let mut changed = false;
    let mut i = 0;
    let mut in_string = false;
    while i < line.len() {
        match line[i] {
            b'"' => in_string = !in_string,
            b'\\' if in_string => {
                match unit(line, i) {
                    Some(0xD800..=0xDBFF)
                        if unit(line, i + 6).is_some_and(|l| (0xDC00..=0xDFFF).contains(&l)) =>
                    {
                        i += 12;
                        continue;
                    }
                    Some(0xD800..=0xDFFF) => {
                        line[i..i + 6].copy_from_slice(b"\\ufffd");
                        changed = true;
                        i += 6;
                        continue;
                    }
                    _ => i += 1, // the escaped byte is skipped below
                }
            }
            _ => {}
        }
        i += 1;
    }
    changed
}

/// Writes every number of `line` that is beyond the f64 range (`1e309`, a 400-digit
/// integer) as `0.0` padded with spaces, in place: simd-json refuses such numbers,
/// although RFC 8259 allows them. Returns whether it wrote any. (`data` is kept as the
/// producer's bytes, so its receivers get the number as it came; an envelope field given
/// such a number is refused by its type check, as `0.0` would be.)
fn write_huge_numbers_in_range(line: &mut [u8]) -> bool {
    let mut changed = false;
    let mut i = 0;
    while i < line.len() {
        match line[i] {
            b'"' => {
                i = skip_string(line, i).unwrap_or(line.len());
                continue;
            }
            // Outside strings only numbers have digits.
            b'-' | b'0'..=b'9' => {
                let end = line[i..]
                    .iter()
                    .position(|c| !matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                    .map_or(line.len(), |n| i + n);
                let huge = std::str::from_utf8(&line[i..end])
                    .ok()
                    .filter(|t| is_json_number(t))
                    .and_then(|t| t.parse::<f64>().ok())
                    .is_some_and(f64::is_infinite);
                if huge && end - i >= 3 {
                    line[i..i + 3].copy_from_slice(b"0.0");
                    line[i + 3..end].fill(b' ');
                    changed = true;
                }
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    changed
}

/// RFC 8259's number: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
fn is_json_number(t: &str) -> bool {
    let b = t.strip_prefix('-').unwrap_or(t).as_bytes();
    let digits = |b: &[u8]| b.iter().take_while(|c| c.is_ascii_digit()).count();
    let int = digits(b);
    if int == 0 || (int > 1 && b[0] == b'0') {
        return false;
    }
    let mut rest = &b[int..];
    if let [b'.', r @ ..] = rest {
        let n = digits(r);
        if n == 0 {
            return false;
        }
        rest = &r[n..];
    }
    if let [b'e' | b'E', r @ ..] = rest {
        let r = r
            .strip_prefix(b"+")
            .or_else(|| r.strip_prefix(b"-"))
            .unwrap_or(r);
        let n = digits(r);
        if n == 0 {
            return false;
        }
        rest = &r[n..];
    }
    rest.is_empty()
}

/// Bytes of buffers a [`LineParser`] keeps between lines; a larger line's are given
/// back ([`LineParser::trim`]), so an idle connection does not hold its largest line's.
pub const KEEP_BYTES: usize = 256 << 10;

impl LineParser {
    /// Gives back buffers grown past [`KEEP_BYTES`] for a large line.
    pub fn trim(&mut self) {
        if [&self.scratch, &self.in_range, &self.paired]
            .iter()
            .any(|b| b.capacity() > KEEP_BYTES)
        {
            // Its settings stay (a reset parser took any `time` after a large line).
            *self = LineParser {
                max_ahead_ms: self.max_ahead_ms,
                ..LineParser::default()
            };
        }
    }

    /// Parses one line (without its line terminator).
    pub fn parse(&mut self, line: &[u8]) -> Result<NewEvent, Invalid> {
        let max_ahead_ms = self.max_ahead_ms;
        let given = line;
        self.scratch.clear();
        self.scratch.extend_from_slice(line);
        let e = match simd_json::to_tape_with_buffers(&mut self.scratch, &mut self.buffers) {
            Ok(tape) => return event(tape, line, max_ahead_ms),
            Err(e) => e,
        };
        // A `\ud83d` without its other half (a character cut in two, as a JavaScript
        // `substring` leaves it): JSON's grammar allows it, simd-json does not, and most
        // receivers' parsers would refuse the body. Read as U+FFFD, in the data kept
        // too (the escape is as long).
        self.paired.clear();
        self.paired.extend_from_slice(line);
        let (line, e) = if write_unpaired_surrogates_as_replacement(&mut self.paired) {
            self.scratch.clear();
            self.scratch.extend_from_slice(&self.paired);
            match simd_json::to_tape_with_buffers(&mut self.scratch, &mut self.buffers) {
                Ok(tape) => {
                    let ev = event(tape, &self.paired, max_ahead_ms)?;
                    return keys_kept_whole(ev, given, &self.paired);
                }
                Err(e) => (&self.paired[..], e),
            }
        } else {
            (line, e)
        };
        // A number beyond the f64 range: read with it written in range, `data` kept as
        // the producer's bytes.
        if !matches!(
            e.error(),
            simd_json::ErrorType::InvalidNumber | simd_json::ErrorType::InvalidExponent
        ) {
            return Err(not_json(&e, line));
        }
        self.in_range.clear();
        self.in_range.extend_from_slice(line);
        if !write_huge_numbers_in_range(&mut self.in_range) {
            return Err(not_json(&e, line));
        }
        let tape = simd_json::to_tape_with_buffers(&mut self.in_range, &mut self.buffers)
            .map_err(|e| not_json(&e, line))?;
        let ev = event(tape, line, max_ahead_ms)?;
        keys_kept_whole(ev, given, line)
    }
}

/// `ev`, read from `paired` (`line` with its unpaired surrogates written as U+FFFD), unless
/// one of them was in its `id` or `account`: read as U+FFFD, `"x\ud800"` and `"x\udbff"`
/// would be one id, and the second event would be answered `dup` and never delivered
/// (an `account` would route as another one). Such a key is no Unicode text (it has no
/// UTF-8 bytes), so it is refused. (Its `type` is refused by its pattern already.)
fn keys_kept_whole(ev: NewEvent, line: &[u8], paired: &[u8]) -> Result<NewEvent, Invalid> {
    for (key, value) in [("id", &ev.ext_id), ("account", &ev.account)] {
        if !value.as_deref().is_some_and(|v| v.contains('\u{fffd}')) {
            continue;
        }
        if line == paired {
            // Nothing was rewritten (only numbers beyond the f64 range were).
            break;
        }
        // The rewrite kept every length, so the value's span is the same in both.
        let rewritten = match member_span(paired, key) {
            Some((s, e)) => line[s..e] != paired[s..e],
            None => true,
        };
        if rewritten {
            return Err(invalid(format!(
                "field `{key}` has half of a surrogate pair (\\uD800-\\uDFFF) without its \
                 other half: not Unicode text"
            )));
        }
    }
    Ok(ev)
}

/// The byte span of the value of top-level member `key` of `b` (a JSON object already
/// parsed), its key written plain or with escapes: [`top_level_value_span`] compares
/// keys as written, which is enough for `data` (refused otherwise) but not for the
/// other fields. For lines on the error path only: it decodes every escaped key.
fn member_span(b: &[u8], key: &str) -> Option<(usize, usize)> {
    value_span_where(
        b,
        |raw| {
            if raw.contains(&b'\\') {
                serde_json::from_slice::<String>(raw).is_ok_and(|k| k == key)
            } else {
                &raw[1..raw.len() - 1] == key.as_bytes()
            }
        },
        false,
    )
}

/// The event of a parsed line: the envelope checked, `data` taken from `line`'s bytes.
fn event(
    tape: simd_json::tape::Tape<'_>,
    line: &[u8],
    max_ahead_ms: Option<u64>,
) -> Result<NewEvent, Invalid> {
    let root = tape.as_value();
    let obj = root
        .as_object()
        .ok_or_else(|| invalid("a line must be a JSON object"))?;

    // One pass over the members. A field of the envelope given twice is refused:
    // JSON leaves it to each parser which one counts (RFC 8259 §4), so a gateway
    // checking the last `type` or `account` would pass what ricochet routes by the
    // first.
    let (mut type_v, mut id_v, mut account_v, mut time_v, mut data_v) =
        (None, None, None, None, None);
    let mut last_is_data = false;
    for (k, v) in obj.iter() {
        last_is_data = k == "data";
        let slot = match k {
            "type" => &mut type_v,
            "id" => &mut id_v,
            "account" => &mut account_v,
            "time" => &mut time_v,
            "data" => &mut data_v,
            _ => continue,
        };
        if slot.replace(v).is_some() {
            return Err(invalid(format!("field `{k}` is given more than once")));
        }
    }

    let type_v = type_v.ok_or_else(|| invalid("missing field `type`"))?;
    let etype = type_v
        .as_str()
        .ok_or_else(|| invalid("field `type` must be a string"))?;
    if !valid_event_type(etype) {
        return Err(invalid("field `type` must match [a-z0-9_.-]{1,64}"));
    }
    let ext_id = match id_v {
        None => None,
        Some(v) if v.is_null() => None,
        Some(v) => {
            let s = v
                .as_str()
                .ok_or_else(|| invalid("field `id` must be a string"))?;
            check_event_id(s)?;
            Some(s.to_string())
        }
    };
    let account = match account_v {
        None => None,
        Some(v) if v.is_null() => None,
        Some(v) => Some(
            v.as_str()
                .ok_or_else(|| invalid("field `account` must be a string"))?
                .to_string(),
        ),
    };
    let time_ms = match time_v {
        None => None,
        Some(v) if v.is_null() => None,
        Some(v) => {
            if let Some(s) = v.as_str() {
                Some(parse_rfc3339_ms(s).map_err(|e| match e {
                    TimeError::BeforeEpoch => {
                        invalid("field `time` is before 1970-01-01T00:00:00Z")
                    }
                    TimeError::Syntax => {
                        invalid("field `time` must be RFC 3339 or Unix milliseconds")
                    }
                })?)
            } else if let Some(n) = v.as_u64() {
                if looks_like_seconds(n) {
                    return Err(invalid(
                        "field `time` is before 1973-03-03 as Unix milliseconds: Unix \
                             seconds? (Unix milliseconds or RFC 3339 expected)",
                    ));
                }
                Some(n)
            } else {
                return Err(invalid(
                    "field `time` must be RFC 3339 or Unix milliseconds",
                ));
            }
        }
    };
    // RFC 3339 ends at year 9999, and the log shows times in it: a later one is a
    // mistake (microseconds, say), and would hold its deliveries for ever.
    if time_ms.is_some_and(|t| t > MAX_TIME_MS) {
        return Err(invalid(
            "field `time` is after 9999-12-31T23:59:59.999Z (Unix milliseconds expected)",
        ));
    }
    if let (Some(t), Some(ahead)) = (time_ms, max_ahead_ms) {
        if t > crate::worker::now_ms().saturating_add(ahead) {
            return Err(invalid(format!(
                "field `time` is more than the retention ({}) ahead: its deliveries \
                     would expire before their first attempt",
                crate::config::format_duration(std::time::Duration::from_millis(ahead))
            )));
        }
    }
    match data_v {
        None => return Err(invalid("missing field `data`")),
        Some(v) if !v.is_object() => return Err(invalid("field `data` must be an object")),
        Some(_) => {}
    }
    // Usually `data` is the last member, and then its value runs to the line's
    // closing brace: no need to scan it.
    let (start, end) = top_level_value_span(line, b"data", last_is_data)
        .ok_or_else(|| invalid("field `data` must be written with a plain key"))?;
    Ok(NewEvent {
        ext_id,
        etype: etype.to_string(),
        account,
        time_ms,
        data: Bytes::copy_from_slice(&line[start..end]),
    })
}

/// Why an RFC 3339 time was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeError {
    Syntax,
    /// A valid time before the Unix epoch: times are kept as unsigned milliseconds.
    BeforeEpoch,
}

/// RFC 3339 → unix milliseconds, a fraction of one dropped (rounded down: a time less than
/// a millisecond before 1970, `1969-12-31T23:59:59.9999Z`, is before 1970, not 1970's
/// first instant, as `/` rounding towards zero made it).
pub fn parse_rfc3339_ms(s: &str) -> Result<u64, TimeError> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|_| TimeError::Syntax)?;
    let ms = t.unix_timestamp_nanos().div_euclid(1_000_000);
    u64::try_from(ms).map_err(|_| TimeError::BeforeEpoch)
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// End (exclusive) of the string starting at `b[i] == '"'`.
/// A byte loop: the strings it meets (the envelope's keys and values before `data`) are
/// short, and `memchr2`'s set-up costs more instructions than it saves on them.
fn skip_string(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// End (exclusive) of the JSON value starting at `i`.
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = skip_string(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                j += 1;
            }
            Some(j)
        }
    }
}

/// The byte span of the value of top-level key `key` in a JSON object that is already
/// known to be valid. The first occurrence wins, as in simd-json's object lookup.
/// `key_is_last`: the caller knows `key` occurs once, as the object's last member, so its
/// value ends where the object does and is not scanned.
fn top_level_value_span(b: &[u8], key: &[u8], key_is_last: bool) -> Option<(usize, usize)> {
    value_span_where(b, |raw| &raw[1..raw.len() - 1] == key, key_is_last)
}

/// The byte span of the value of the first top-level member of `b` (a JSON object
/// already known to be valid) whose key, as written with its quotes, `is_key` takes.
/// `key_is_last` as for [`top_level_value_span`].
fn value_span_where(
    b: &[u8],
    is_key: impl Fn(&[u8]) -> bool,
    key_is_last: bool,
) -> Option<(usize, usize)> {
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(b, i);
        match b.get(i)? {
            b'}' => return None,
            b',' => {
                i += 1;
                continue;
            }
            b'"' => {}
            _ => return None,
        }
        let kend = skip_string(b, i)?;
        let same = is_key(&b[i..kend]);
        i = skip_ws(b, kend);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        if same && key_is_last {
            let close = b.iter().rposition(|&c| c == b'}')?;
            let end = b[..close]
                .iter()
                .rposition(|c| !matches!(c, b' ' | b'\t' | b'\n' | b'\r'))?
                + 1;
            return (end > i).then_some((i, end));
        }
        let vend = skip_value(b, i)?;
        if same {
            return Some((i, vend));
        }
        i = vend;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(line: &str) -> Result<NewEvent, Invalid> {
        LineParser::default().parse(line.as_bytes())
    }

    #[test]
    fn full_line() {
        let e = p(r#"{"type":"action_inquiry","id":"inq-1","account":"partner-555","time":"2026-04-08T10:05:00Z","data":{"Amount": 250.00, "s":"a\"}b"}}"#).unwrap();
        assert_eq!(e.etype, "action_inquiry");
        assert_eq!(e.ext_id.as_deref(), Some("inq-1"));
        assert_eq!(e.account.as_deref(), Some("partner-555"));
        assert_eq!(e.time_ms, Some(1_775_642_700_000));
        assert_eq!(&e.data[..], br#"{"Amount": 250.00, "s":"a\"}b"}"#);
    }

    #[test]
    fn a_large_line_s_buffers_are_given_back() {
        let mut parser = LineParser::default();
        let big = format!(r#"{{"type":"t","data":{{"p":"{}"}}}}"#, "a".repeat(900_000));
        parser.parse(big.as_bytes()).unwrap();
        assert!(parser.scratch.capacity() > KEEP_BYTES);
        parser.trim();
        assert!(parser.scratch.capacity() <= KEEP_BYTES);
        parser.parse(br#"{"type":"t","data":{}}"#).unwrap();
    }

    #[test]
    fn numbers_beyond_the_f64_range_are_taken_as_they_came() {
        let big = "9".repeat(401);
        let data = format!(
            r#"{{"N":1e309, "M":-1E+400,"s":"1e309 \" 2e999","B":{big},"a":[1.8e308],"t":1e-400}}"#
        );
        let e = p(&format!(r#"{{"type":"t","data":{data},"id":"x"}}"#)).unwrap();
        assert_eq!(&e.data[..], data.as_bytes());
        assert_eq!(e.ext_id.as_deref(), Some("x"));
        // In an envelope field such a number is the wrong type, as any number would be.
        let err = p(r#"{"type":"t","time":1e400,"data":{}}"#).unwrap_err().0;
        assert!(err.contains("`time`"), "{err}");
        // A number that is not one is still refused, where it is.
        let err = p(r#"{"type":"t","data":{"a":1e309,"b":01}}"#)
            .unwrap_err()
            .0;
        assert!(err.starts_with("not JSON: a bad number"), "{err}");
    }

    #[test]
    fn a_surrogate_without_its_other_half_is_read_as_the_replacement_character() {
        for (raw, kept) in [
            (r#""\ud83d""#, r#""\ufffd""#),
            (r#""ab\uDC00c""#, r#""ab\ufffdc""#),
            (r#""\ud83d\ude00\udc00""#, r#""\ud83d\ude00\ufffd""#),
            (r#""\ud83d\u0041""#, r#""\ufffd\u0041""#),
            (r#""\ud83d\ud83d\ude00""#, r#""\ufffd\ud83d\ude00""#),
            (r#""\\ud83d""#, r#""\\ud83d""#),
        ] {
            let line = format!(r#"{{"type":"t","data":{{"name":{raw},"n":1e400}}}}"#);
            let ev = p(&line).unwrap_or_else(|e| panic!("{raw}: {}", e.0));
            let want = format!(r#"{{"name":{kept},"n":1e400}}"#);
            assert_eq!(&ev.data[..], want.as_bytes(), "{raw}");
        }
        // In a key too, and the envelope reads on.
        let ev = p(r#"{"type":"t","id":"a","data":{"\udc00":1}}"#).unwrap();
        assert_eq!(
            (ev.ext_id.as_deref(), &ev.data[..]),
            (Some("a"), &br#"{"\ufffd":1}"#[..])
        );
        // Another error still refuses the line, and says where.
        let err = p(r#"{"type":"t","data":{"a":"\ud83d","b":x}}"#)
            .unwrap_err()
            .0;
        assert!(err.starts_with("not JSON: "), "{err}");
    }

    #[test]
    fn an_id_or_account_with_half_a_surrogate_pair_is_refused() {
        // Read as U+FFFD these two ids were one: the second event was answered `dup`
        // and never delivered.
        for line in [
            r#"{"type":"t","id":"x\ud800","data":{}}"#,
            r#"{"type":"t","id":"x\udbff","data":{"s":"\udc00"}}"#,
            r#"{"type":"t","id":"x\uDC00y","data":{"n":1e400}}"#,
            r#"{"type":"t","\u0069d":"x\ud83d","data":{}}"#,
        ] {
            let err = p(line).unwrap_err().0;
            assert!(
                err.starts_with("field `id` has half of a surrogate pair"),
                "{line}: {err}"
            );
        }
        let err = p(r#"{"type":"t","account":"a\ud83d","id":"a","data":{}}"#)
            .unwrap_err()
            .0;
        assert!(err.starts_with("field `account` has half"), "{err}");
        // U+FFFD sent as such is an id like any other, also beside a surrogate in `data`
        // or in a key ricochet does not read.
        for line in [
            r#"{"type":"t","id":"x\ufffd","account":"\ufffd","data":{"s":"\ud800"}}"#,
            "{\"type\":\"t\",\"id\":\"x\u{fffd}\",\"data\":{\"n\":1e400,\"s\":\"\\ud800\"}}",
            r#"{"type":"t","other":"\ud800","id":"x\ufffd","data":{}}"#,
            r#"{"type":"t","\u0069d":"x\ufffd","\u0061ccount":"\ufffd","data":{"s":"\ud800"}}"#,
        ] {
            let ev = p(line).unwrap_or_else(|e| panic!("{line}: {}", e.0));
            assert_eq!(ev.ext_id.as_deref(), Some("x\u{fffd}"), "{line}");
        }
        // A whole pair is one character.
        let ev = p(r#"{"type":"t","id":"x\ud83d\ude00","data":{"s":"\ud800"}}"#).unwrap();
        assert_eq!(ev.ext_id.as_deref(), Some("x\u{1f600}"));
    }

    #[test]
    fn string_errors_say_where_they_are() {
        for (line, want) in [
            (
                "{\"type\":\"t\",\"data\":{\"a\":\"x\ty\"}}",
                "not JSON: a raw tab or line break in a string (at byte 26): escape it (\\t, \\n, \\r)",
            ),
            (
                r#"{"type":"t","data":{"a":"x\qy"}}"#,
                "not JSON: a bad escape in a string (at byte 26)",
            ),
            (
                r#"{"type":"t","data":{"a":"x\u12"}}"#,
                "not JSON: a bad escape in a string (at byte 26): \\u takes four hex digits",
            ),
        ] {
            assert_eq!(p(line).unwrap_err().0, want, "{line}");
        }
        // An earlier error of another kind is the one reported.
        let err = p(r#"{"type":"t","data":{"a":x,"b":"\q"}}"#).unwrap_err().0;
        assert!(!err.contains("escape"), "{err}");
        // A tab between values is whitespace.
        assert!(p("{\"type\":\"t\",\t\"data\":{}}").is_ok());
    }

    #[test]
    fn minimal_and_unix_time() {
        let e = p(r#"{"data":{},"type":"t","time":1700000000123}"#).unwrap();
        assert_eq!(e.time_ms, Some(1_700_000_000_123));
        assert!(e.ext_id.is_none());
        assert_eq!(&e.data[..], b"{}");
    }

    #[test]
    fn rejects_with_reasons() {
        for (line, needle) in [
            ("not json", "not JSON"),
            ("[1]", "object"),
            (r#"{"data":{}}"#, "`type`"),
            (r#"{"type":"Bad Type","data":{}}"#, "`type`"),
            (r#"{"type":5,"data":{}}"#, "`type`"),
            (r#"{"type":"t"}"#, "`data`"),
            (r#"{"type":"t","data":[1]}"#, "`data`"),
            (r#"{"type":"t","data":{},"id":"a b"}"#, "`id`"),
            (r#"{"type":"t","data":{},"id":""}"#, "`id`"),
            (r#"{"type":"t","data":{},"account":1}"#, "`account`"),
            (r#"{"type":"t","data":{},"time":"yesterday"}"#, "`time`"),
        ] {
            let err = p(line).unwrap_err().0;
            assert!(err.contains(needle), "{line}: {err}");
        }
        // In plain words, not simd-json's variant names, and where.
        assert_eq!(
            p("{\"type\":\"t\",\"data\":{\"a\":\"\u{1}\"}}")
                .unwrap_err()
                .0,
            "not JSON: a raw control character (at byte 25): escape it (\\u00XX)"
        );
        let bad_utf8 = LineParser::default()
            .parse(b"{\"type\":\"t\",\"data\":{\"a\":\"\xff\"}}")
            .unwrap_err()
            .0;
        assert_eq!(bad_utf8, "not JSON: invalid UTF-8 (at byte 25)");
        for line in [
            r#"{"type":"t","data":{}} {"type":"t","data":{}}"#,
            r#"{"type":"t","data":{}"#,
            r#"{"type":"t","data":{}}}"#,
            r#"{"type":"t","data":{"a":1.e}}"#,
            r#"{"type":"t","data":{"a":"\q"}}"#,
        ] {
            let err = p(line).unwrap_err().0;
            assert!(err.starts_with("not JSON: "), "{line}: {err}");
            assert!(err.contains("(at byte "), "{line}: {err}");
            assert!(
                !err.contains("Error") && !err.contains("character"),
                "{line}: {err}"
            );
        }
        let long = format!(r#"{{"type":"t","data":{{}},"id":"{}"}}"#, "x".repeat(129));
        assert!(p(&long).is_err());
        // The position and character are what follows the value, whole: not the
        // value's last byte, nor one byte of a character read as Latin-1 ('Â').
        assert_eq!(
            p("{\"type\":\"t\",\"data\":{}} \r {\"x\":1}")
                .unwrap_err()
                .0,
            "not JSON: not one JSON value (something follows it, or it is cut) (at byte 25, '{')"
        );
        let err = p("\u{a0}{\"type\":\"t\",\"data\":{}}").unwrap_err().0;
        assert!(err.ends_with("(at byte 0, '\\u{a0}')"), "{err}");
        let err = p("{\"type\":\"t\",\"data\":{}}é").unwrap_err().0;
        assert!(err.ends_with("(at byte 22, 'é')"), "{err}");
        // Cut short inside a value (simd-json: "a syntax error"); a value that cannot
        // start where it does (simd-json: "something follows it, or it is cut").
        for (line, want) in [
            (
                r#"{"type":"t","data":{"#,
                "not JSON: the line ends inside a value (at byte 20)",
            ),
            (
                r#"{"type":"t","data":{"a":[1,"#,
                "not JSON: the line ends inside a value (at byte 27)",
            ),
            (
                "bad1",
                "not JSON: no JSON value starts like this (at byte 0, 'b')",
            ),
            (
                r#"{"type":"t","data":nope}"#,
                "not JSON: not true, false or null (at byte 19, 'n')",
            ),
        ] {
            assert_eq!(p(line).unwrap_err().0, want, "{line}");
        }
        // What follows opens a string (simd-json put it at byte 0, "a syntax error").
        for (line, at) in [
            ("{\"type\":\"t\",\"data\":{}}\"", 22),
            ("{\"type\":\"t\",\"data\":{}} \"abc", 23),
        ] {
            assert_eq!(
                p(line).unwrap_err().0,
                format!("not JSON: not one JSON value (something follows it, or it is cut) (at byte {at}, '\"')"),
                "{line}"
            );
        }
    }

    #[test]
    fn ids_refuse_any_whitespace_controls_and_the_generated_form() {
        for id in [
            r"a\u00a0b", // no-break space
            r"v\u000bt", // vertical tab (not ASCII whitespace to Rust)
            r"n\u0085l", // next line
            r"l\u2028s", // line separator
            r"c\u0001x", // a C0 control
            r"d\u007fx", // DEL
            r"e\u009bx", // a C1 control
            r"tab\tid",
            "evt_00000000000000ab",
            "evt_00000000000000AB",
        ] {
            let line = format!(r#"{{"type":"t","data":{{}},"id":"{id}"}}"#);
            let err = p(&line).unwrap_err().0;
            assert!(err.contains("`id`"), "{id}: {err}");
        }
        for id in [
            "ünïcödé-ïd",
            "a/b:c#d",
            "evt_abc",
            "evt_00000000000000abc",
            "x_00000000000000ab",
            "evt_+00000000000000a",
        ] {
            let line = format!(r#"{{"type":"t","data":{{}},"id":"{id}"}}"#);
            let e = p(&line).unwrap_or_else(|err| panic!("{id}: {err}"));
            assert_eq!(e.ext_id.as_deref(), Some(id));
        }
        let id128 = "é".repeat(64);
        let line = format!(r#"{{"type":"t","data":{{}},"id":"{id128}"}}"#);
        assert!(p(&line).is_ok());
        let line = format!(r#"{{"type":"t","data":{{}},"id":"{id128}x"}}"#);
        assert!(p(&line).unwrap_err().0.contains("1..128 bytes"));
    }

    #[test]
    fn integers_past_64_bits_in_data_are_json_and_pass_as_they_came() {
        let data = r#"{"n":123456789012345678901234567890,"m":-98765432109876543210}"#;
        let e = p(&format!(r#"{{"type":"t","data":{data}}}"#)).unwrap();
        assert_eq!(&e.data[..], data.as_bytes());
        // Not a time, though: `time` is Unix milliseconds.
        let err = p(r#"{"type":"t","data":{},"time":123456789012345678901234567890}"#)
            .unwrap_err()
            .0;
        assert!(err.contains("`time`"), "{err}");
    }

    #[test]
    fn times_before_1970_are_refused_as_such() {
        let at = |t: &str| p(&format!(r#"{{"type":"t","data":{{}},"time":{t}}}"#));
        assert_eq!(at(r#""1970-01-01T00:00:00Z""#).unwrap().time_ms, Some(0));
        assert_eq!(
            at(r#""1970-01-01T00:00:00.0009Z""#).unwrap().time_ms,
            Some(0)
        );
        for t in [
            r#""1969-12-31T23:59:59Z""#,
            r#""0001-01-01T00:00:00Z""#,
            // Less than a millisecond before: not rounded up to 1970.
            r#""1969-12-31T23:59:59.9999Z""#,
            r#""1970-01-01T00:59:59.999999999+01:00""#,
        ] {
            assert_eq!(
                at(t).unwrap_err().0,
                "field `time` is before 1970-01-01T00:00:00Z",
                "{t}"
            );
        }
        assert!(at(r#""yesterday""#)
            .unwrap_err()
            .0
            .contains("must be RFC 3339"));
    }

    #[test]
    fn a_number_time_that_looks_like_unix_seconds_is_refused() {
        let at = |t: &str| p(&format!(r#"{{"type":"t","data":{{}},"time":{t}}}"#));
        // The seed's 2024-04-08T10:05:00Z in seconds, which read as milliseconds was
        // 1970-01-20T19:42:50.700Z.
        for t in ["1712570700", "0", "99999999999"] {
            let err = at(t).unwrap_err().0;
            assert!(err.contains("Unix seconds?"), "{t}: {err}");
        }
        assert_eq!(at("100000000000").unwrap().time_ms, Some(MIN_MS_TIME));
        assert_eq!(
            at("1712570700000").unwrap().time_ms,
            Some(1_712_570_700_000)
        );
        // Written as RFC 3339, a time in 1970 is what it says.
        assert_eq!(
            at(r#""1970-01-20T19:42:50.700Z""#).unwrap().time_ms,
            Some(1_712_570_700)
        );
    }

    #[test]
    fn times_past_year_9999_are_refused() {
        let at = |t: &str| p(&format!(r#"{{"type":"t","data":{{}},"time":{t}}}"#));
        assert_eq!(at("253402300799999").unwrap().time_ms, Some(MAX_TIME_MS));
        assert_eq!(
            at(r#""9999-12-31T23:59:59.999Z""#).unwrap().time_ms,
            Some(MAX_TIME_MS)
        );
        // Microseconds by mistake, and the largest integers.
        for t in [
            "1796290522969350",
            "253402300800000",
            "18446744073709551615",
        ] {
            assert!(at(t).unwrap_err().0.contains("9999-12-31"), "{t}");
        }
    }

    #[test]
    fn a_time_further_ahead_than_the_retention_is_refused_at_ingest() {
        let line = |t: u64| format!(r#"{{"type":"t","data":{{}},"time":{t}}}"#);
        let now = crate::worker::now_ms();
        let mut ingest = LineParser::for_ingest(std::time::Duration::from_secs(3600));
        let e = ingest.parse(line(now + 7_200_000).as_bytes()).unwrap_err();
        assert_eq!(
            e.0,
            "field `time` is more than the retention (1h) ahead: its deliveries would \
             expire before their first attempt"
        );
        let soon = now + 1_800_000;
        assert_eq!(
            ingest.parse(line(soon).as_bytes()).unwrap().time_ms,
            Some(soon)
        );
        // Other parsers (`render`, the samples) take any time.
        let far = now + 7_200_000;
        assert_eq!(p(&line(far)).unwrap().time_ms, Some(far));
        // Still so once a large line's buffers went back.
        let big = format!(
            r#"{{"type":"t","data":{{"pad":"{}"}}}}"#,
            "x".repeat(KEEP_BYTES)
        );
        ingest.parse(big.as_bytes()).unwrap();
        ingest.trim();
        assert!(ingest.scratch.capacity() <= KEEP_BYTES);
        assert!(ingest.parse(line(far).as_bytes()).is_err());
    }

    #[test]
    fn span_finder_skips_nested_keys() {
        let b = br#"{"x":{"data":1},"arr":["data",{"data":2}],"data" : {"k":[1,{"a":"}"}]} }"#;
        let (s, e) = top_level_value_span(b, b"data", false).unwrap();
        assert_eq!(&b[s..e], br#"{"k":[1,{"a":"}"}]}"#);
        // The shortcut for a last member gives the same span, whitespace trimmed.
        let (s2, e2) = top_level_value_span(b, b"data", true).unwrap();
        assert_eq!((s2, e2), (s, e));
    }

    #[test]
    fn data_span_whether_last_first_or_repeated() {
        let data = r#"{"a":"}","b":[{"c":{}}],"n":-1.5e3}"#;
        for line in [
            format!(r#"{{"type":"t","data":{data}}}"#),
            format!("{{ \"type\":\"t\", \"data\" :\t{data} \r\n}}  "),
            format!(r#"{{"data":{data},"type":"t"}}"#),
            format!(r#"{{"type":"t","data":{data},"id":"x"}}"#),
        ] {
            let e = p(&line).unwrap_or_else(|err| panic!("{line}: {err}"));
            assert_eq!(&e.data[..], data.as_bytes(), "{line}");
        }
        // Strings with escaped quotes and backslashes before and inside `data`.
        let data = r#"{"q":"a\"}\\","r":"\\"}"#;
        for line in [
            format!(r#"{{"id":"x\"y\\","type":"t","data":{data}}}"#),
            format!(r#"{{"id":"x\"y\\","data":{data},"type":"t"}}"#),
        ] {
            let e = p(&line).unwrap_or_else(|err| panic!("{line}: {err}"));
            assert_eq!(&e.data[..], data.as_bytes(), "{line}");
            assert_eq!(e.ext_id.as_deref(), Some("x\"y\\"), "{line}");
        }
        // A field of the envelope given twice is refused, whichever a parser would keep;
        // an escaped spelling is the same key. Repeats inside `data` are its own.
        for (line, field) in [
            (
                r#"{"type":"t","data":{"first":1},"data":{"last":2}}"#,
                "data",
            ),
            (
                r#"{"type":"first","id":"a","type":"second","data":{}}"#,
                "type",
            ),
            (r#"{"type":"t","id":"a","data":{},"id":"b"}"#, "id"),
            (
                r#"{"type":"t","account":"a","account":null,"data":{}}"#,
                "account",
            ),
            (
                r#"{"type":"t","time":"2026-01-01T00:00:00Z","time":2,"data":{}}"#,
                "time",
            ),
            (r#"{"type":"t","\u0074ype":"u","data":{}}"#, "type"),
        ] {
            let err = p(line).unwrap_err().0;
            assert_eq!(
                err,
                format!("field `{field}` is given more than once"),
                "{line}"
            );
        }
        let e = p(r#"{"type":"t","data":{"k":1,"k":2},"x":1,"x":2}"#).unwrap();
        assert_eq!(&e.data[..], br#"{"k":1,"k":2}"#);
        // An escaped key is refused rather than guessed at, last or not.
        let err = p(r#"{"type":"t","d\u0061ta":{}}"#).unwrap_err().0;
        assert!(err.contains("plain key"), "{err}");
    }
}
