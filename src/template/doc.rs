//! [`Doc`]: a read-only index over an event's raw `data` JSON.
//!
//! The event's `data` object is kept as the bytes that arrived (`Bytes`, shared, never
//! copied) plus a flat vector of [`Node`]s in document order, one per JSON value. Every
//! node records the byte span of its text in `raw`: numbers keep the text they came with
//! (`250.00` stays `250.00`), strings are kept in their escaped form so a JSON body can copy
//! them verbatim, and containers span from their opening to their closing bracket. A
//! container's children follow it directly; `next` skips a whole subtree, so walking the
//! members of an object touches only its direct children.
//!
//! The scanner below is a strict RFC 8259 validator (plus the rule of serde_json and
//! simd-json that a `\u` escape must not leave a lone surrogate), so whatever parses here
//! parses everywhere else in ricochet, and invalid input is an error, never a panic.
//! Duplicate keys resolve like serde_json: the last one wins (earlier ones are marked
//! shadowed once, at parse time, so look-ups never have to think about them).

use bytes::Bytes;

/// Why a `data` text is not a usable event document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocError {
    /// The bytes are not UTF-8 (`offset` is where the first invalid sequence starts).
    #[error("event data is not valid UTF-8 (at byte {offset})")]
    InvalidUtf8 { offset: usize },
    /// The text is not JSON.
    #[error("invalid JSON at byte {offset}: {reason}")]
    Syntax { offset: usize, reason: &'static str },
    /// Valid JSON, but `data` must be an object.
    #[error("event data must be a JSON object, found {found}")]
    NotAnObject { found: &'static str },
    /// Offsets are kept as `u32`.
    #[error("event data is too large: {len} bytes (at most 4 GiB)")]
    TooLarge { len: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Null,
    False,
    True,
    Number,
    String,
    Array,
    Object,
}

/// The value string contains at least one backslash escape.
const ESCAPED: u8 = 1;
/// The member key contains at least one backslash escape.
const KEY_ESCAPED: u8 = 2;
/// A later member of the same object has the same key; look-ups skip this one.
const SHADOWED: u8 = 4;

#[derive(Clone, Copy, Debug)]
pub(super) struct Node {
    pub(super) kind: Kind,
    flags: u8,
    /// Value text: for strings the content between the quotes, for containers the
    /// brackets included.
    start: u32,
    end: u32,
    /// Member key content between its quotes (empty for array elements and the root).
    key_start: u32,
    key_end: u32,
    /// FNV-1a of the decoded key.
    key_hash: u32,
    /// Index of the node after this one's subtree.
    next: u32,
}

/// A parsed, read-only view of an event's `data` JSON object. Build it once per event;
/// every template rendered for that event reads from it.
#[derive(Clone)]
pub struct Doc {
    raw: Bytes,
    nodes: Vec<Node>,
}

impl std::fmt::Debug for Doc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Doc")
            .field("raw", &String::from_utf8_lossy(&self.raw))
            .field("nodes", &self.nodes.len())
            .finish()
    }
}

/// A segment of a compiled path, ready for look-ups.
#[derive(Clone, Debug)]
pub(super) struct Seg {
    pub(super) name: Box<str>,
    pub(super) hash: u32,
    /// The segment read as an array index, when it is all digits.
    pub(super) index: Option<u32>,
}

impl Seg {
    pub(super) fn new(name: &str) -> Seg {
        let index = if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
            name.parse().ok()
        } else {
            None
        };
        Seg {
            name: name.into(),
            hash: fnv(FNV_SEED, name.as_bytes()),
            index,
        }
    }
}

/// Number of look-up hints kept during one render (direct-mapped by object index).
pub(super) const HINTS: usize = 8;

/// Per object, the member last found, where the next look-up starts: the same field
/// again (a top-level field read for every element of a join) costs one comparison,
/// and the next in document order (the common case: templates list fields in the order
/// the data has them) two. Any search order finds the same member, since duplicates
/// are shadowed at parse time.
pub(super) type Hints = [(u32, u32); HINTS];

pub(super) const NO_HINTS: Hints = [(u32::MAX, 0); HINTS];

impl Doc {
    /// Parses and indexes `raw`, the JSON text of an event's `data` object exactly as
    /// received. Leading and trailing whitespace is allowed; anything else that is not
    /// one JSON object is an error.
    pub fn parse(raw: Bytes) -> Result<Doc, DocError> {
        if raw.len() > u32::MAX as usize - 1 {
            return Err(DocError::TooLarge { len: raw.len() });
        }
        if let Err(e) = std::str::from_utf8(&raw) {
            return Err(DocError::InvalidUtf8 {
                offset: e.valid_up_to(),
            });
        }
        let nodes = Scanner::new(&raw).run()?;
        Ok(Doc { raw, nodes })
    }

    /// The JSON text this document was parsed from.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    pub(super) const ROOT: u32 = 0;

    #[inline]
    pub(super) fn node(&self, i: u32) -> &Node {
        &self.nodes[i as usize]
    }

    /// The node's text: string content (escaped), number text, literal, or the
    /// container's JSON text.
    #[inline]
    pub(super) fn text(&self, n: &Node) -> &[u8] {
        &self.raw[n.start as usize..n.end as usize]
    }

    #[inline]
    pub(super) fn is_escaped(n: &Node) -> bool {
        n.flags & ESCAPED != 0
    }

    /// Direct children of a container (non-shadowed members for objects).
    pub(super) fn children(&self, i: u32) -> Children<'_> {
        let end = self.node(i).next;
        Children {
            doc: self,
            cur: i + 1,
            end,
        }
    }

    /// The decoded key of an object member, written through `f` in chunks.
    pub(super) fn key_chunks(&self, n: &Node, f: impl FnMut(&[u8])) {
        let key = &self.raw[n.key_start as usize..n.key_end as usize];
        if n.flags & KEY_ESCAPED == 0 {
            let mut f = f;
            f(key);
        } else {
            unescape_chunks(key, f);
        }
    }

    /// The `i`th element of the array at `arr`; `visited` counts the elements passed.
    pub(super) fn nth(&self, arr: u32, i: u32, visited: &mut usize) -> Option<u32> {
        let end = self.node(arr).next;
        let mut c = arr + 1;
        let mut k = 0;
        while c < end {
            *visited += 1;
            if k == i {
                return Some(c);
            }
            k += 1;
            c = self.node(c).next;
        }
        None
    }

    /// The member of the object at `obj` whose key is `seg`; `visited` counts the
    /// members compared.
    #[inline]
    pub(super) fn member(
        &self,
        obj: u32,
        seg: &Seg,
        hints: &mut Hints,
        visited: &mut usize,
    ) -> Option<u32> {
        let end = self.node(obj).next;
        let first = obj + 1;
        if first >= end {
            return None;
        }
        let slot = obj as usize % HINTS;
        let start = if hints[slot].0 == obj {
            hints[slot].1
        } else {
            first
        };
        let mut c = start;
        loop {
            *visited += 1;
            let n = self.node(c);
            if n.key_hash == seg.hash && n.flags & SHADOWED == 0 && self.key_is(n, &seg.name) {
                // Next time, start at this member.
                hints[slot] = (obj, c);
                return Some(c);
            }
            c = n.next;
            if c >= end {
                c = first;
            }
            if c == start {
                return None;
            }
        }
    }

    #[inline]
    fn key_is(&self, n: &Node, name: &str) -> bool {
        let key = &self.raw[n.key_start as usize..n.key_end as usize];
        if n.flags & KEY_ESCAPED == 0 {
            return short_eq(key, name.as_bytes());
        }
        let mut rest = name.as_bytes();
        let mut ok = true;
        unescape_chunks(key, |chunk| {
            if ok && rest.starts_with(chunk) {
                rest = &rest[chunk.len()..];
            } else {
                ok = false;
            }
        });
        ok && rest.is_empty()
    }
}

/// Equality for short slices (keys) without a `memcmp` call: word loads, the last one
/// overlapping.
#[inline]
fn short_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], i: usize| u64::from_ne_bytes(s[i..i + 8].try_into().unwrap_or([0; 8]));
    let half = |s: &[u8], i: usize| u32::from_ne_bytes(s[i..i + 4].try_into().unwrap_or([0; 4]));
    if n >= 8 {
        let mut i = 0;
        while i + 8 < n {
            if word(a, i) != word(b, i) {
                return false;
            }
            i += 8;
        }
        word(a, n - 8) == word(b, n - 8)
    } else if n >= 4 {
        half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4)
    } else {
        a == b
    }
}

pub(super) struct Children<'a> {
    doc: &'a Doc,
    cur: u32,
    end: u32,
}

impl Iterator for Children<'_> {
    type Item = u32;

    #[inline]
    fn next(&mut self) -> Option<u32> {
        while self.cur < self.end {
            let i = self.cur;
            let n = self.doc.node(i);
            self.cur = n.next;
            if n.flags & SHADOWED == 0 {
                return Some(i);
            }
        }
        None
    }
}

const FNV_SEED: u32 = 0x811c_9dc5;

#[inline]
fn fnv(mut h: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Decodes the escaped content of a JSON string that the scanner has validated, handing
/// out unescaped runs as they are and every escape as the UTF-8 of its character.
pub(super) fn unescape_chunks(s: &[u8], mut f: impl FnMut(&[u8])) {
    let mut i = 0;
    let mut run = 0;
    while i < s.len() {
        if s[i] != b'\\' {
            i += 1;
            continue;
        }
        if run < i {
            f(&s[run..i]);
        }
        let mut buf = [0u8; 4];
        let (c, used) = match s[i + 1] {
            b'n' => ('\n', 2),
            b't' => ('\t', 2),
            b'r' => ('\r', 2),
            b'b' => ('\u{8}', 2),
            b'f' => ('\u{c}', 2),
            b'u' => {
                let hi = hex4(&s[i + 2..i + 6]).unwrap_or(0xfffd);
                if (0xd800..0xdc00).contains(&hi) {
                    let lo = hex4(&s[i + 8..i + 12]).unwrap_or(0xdc00);
                    let cp = 0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00);
                    (char::from_u32(cp).unwrap_or('\u{fffd}'), 12)
                } else {
                    (char::from_u32(hi).unwrap_or('\u{fffd}'), 6)
                }
            }
            other => (char::from(other), 2),
        };
        f(c.encode_utf8(&mut buf).as_bytes());
        i += used;
        run = i;
    }
    if run < s.len() {
        f(&s[run..]);
    }
}

fn hex4(s: &[u8]) -> Option<u32> {
    if s.len() < 4 {
        return None;
    }
    let mut v = 0u32;
    for &b in &s[..4] {
        v = v * 16 + char::from(b).to_digit(16)?;
    }
    Some(v)
}

#[derive(Clone, Copy)]
enum State {
    Opened,
    Comma,
    Value,
}

struct Key {
    start: u32,
    end: u32,
    hash: u32,
    flags: u8,
}

const NO_KEY: Key = Key {
    start: 0,
    end: 0,
    hash: 0,
    flags: 0,
};

/// Bytes that end the fast scan through a string: the quote, the backslash, controls.
static STRING_SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = true;
        c += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

struct Scanner<'a> {
    b: &'a [u8],
    pos: usize,
    nodes: Vec<Node>,
    stack: Vec<u32>,
    table: Vec<u32>,
}

type Res<T> = Result<T, DocError>;

fn kind_name(b: u8) -> &'static str {
    match b {
        b'[' => "an array",
        b'"' => "a string",
        b't' | b'f' => "a boolean",
        b'n' => "null",
        b'-' | b'0'..=b'9' => "a number",
        _ => "something else",
    }
}

impl<'a> Scanner<'a> {
    fn new(b: &'a [u8]) -> Self {
        Scanner {
            b,
            pos: 0,
            nodes: Vec::with_capacity(b.len() / 16 + 4),
            stack: Vec::new(),
            table: Vec::new(),
        }
    }

    fn err<T>(&self, reason: &'static str) -> Res<T> {
        Err(DocError::Syntax {
            offset: self.pos,
            reason,
        })
    }

    #[inline]
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.pos) {
            self.pos += 1;
        }
    }

    fn run(mut self) -> Res<Vec<Node>> {
        self.skip_ws();
        let Some(&first) = self.b.get(self.pos) else {
            return self.err("no JSON value");
        };
        self.value(NO_KEY)?;
        let mut st = State::Opened;
        while let Some(&top) = self.stack.last() {
            let is_obj = self.nodes[top as usize].kind == Kind::Object;
            let close = if is_obj { b'}' } else { b']' };
            self.skip_ws();
            let Some(&b) = self.b.get(self.pos) else {
                return self.err(if is_obj {
                    "unterminated object"
                } else {
                    "unterminated array"
                });
            };
            match st {
                State::Value => {
                    if b == b',' {
                        self.pos += 1;
                        st = State::Comma;
                    } else if b == close {
                        self.close(top);
                    } else if is_obj {
                        return self.err("expected `,` or `}`");
                    } else {
                        return self.err("expected `,` or `]`");
                    }
                }
                State::Opened if b == close => {
                    self.close(top);
                    st = State::Value;
                }
                State::Opened | State::Comma => {
                    let key = if is_obj {
                        if b != b'"' {
                            return self.err("expected a string key");
                        }
                        let key = self.key()?;
                        self.skip_ws();
                        if self.b.get(self.pos) != Some(&b':') {
                            return self.err("expected `:` after the key");
                        }
                        self.pos += 1;
                        key
                    } else {
                        NO_KEY
                    };
                    st = if self.value(key)? {
                        State::Opened
                    } else {
                        State::Value
                    };
                }
            }
        }
        self.skip_ws();
        if self.pos != self.b.len() {
            return self.err("trailing characters after the JSON value");
        }
        if first != b'{' {
            return Err(DocError::NotAnObject {
                found: kind_name(first),
            });
        }
        Ok(self.nodes)
    }

    fn push(&mut self, kind: Kind, flags: u8, start: usize, end: usize, key: &Key) {
        let next = self.nodes.len() as u32 + 1;
        self.nodes.push(Node {
            kind,
            flags: flags | key.flags,
            start: start as u32,
            end: end as u32,
            key_start: key.start,
            key_end: key.end,
            key_hash: key.hash,
            next,
        });
    }

    /// Scans one value at `pos` (after whitespace). Returns true when it opened a
    /// container, whose members the caller's loop scans.
    fn value(&mut self, key: Key) -> Res<bool> {
        self.skip_ws();
        let start = self.pos;
        let Some(&b) = self.b.get(start) else {
            return self.err("expected a value");
        };
        match b {
            b'{' | b'[' => {
                let kind = if b == b'{' { Kind::Object } else { Kind::Array };
                self.stack.push(self.nodes.len() as u32);
                self.push(kind, 0, start, start, &key);
                self.pos += 1;
                return Ok(true);
            }
            b'"' => {
                let (escaped, end) = self.string()?;
                let flags = if escaped { ESCAPED } else { 0 };
                self.push(Kind::String, flags, start + 1, end, &key);
            }
            b't' => self.literal(b"true", Kind::True, &key)?,
            b'f' => self.literal(b"false", Kind::False, &key)?,
            b'n' => self.literal(b"null", Kind::Null, &key)?,
            b'-' | b'0'..=b'9' => {
                self.number()?;
                self.push(Kind::Number, 0, start, self.pos, &key);
            }
            _ => return self.err("expected a value"),
        }
        Ok(false)
    }

    fn close(&mut self, top: u32) {
        self.pos += 1;
        self.stack.pop();
        let next = self.nodes.len() as u32;
        let n = &mut self.nodes[top as usize];
        n.end = self.pos as u32;
        n.next = next;
        if n.kind == Kind::Object {
            self.shadow_duplicates(top);
        }
    }

    fn literal(&mut self, word: &'static [u8], kind: Kind, key: &Key) -> Res<()> {
        let start = self.pos;
        if !self.b[start..].starts_with(word) {
            return self.err("invalid literal (expected true, false or null)");
        }
        self.pos += word.len();
        self.push(kind, 0, start, self.pos, key);
        Ok(())
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.b.get(self.pos) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Res<()> {
        if self.b[self.pos] == b'-' {
            self.pos += 1;
        }
        match self.b.get(self.pos) {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return self.err("invalid number: expected a digit"),
        }
        if self.b.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return self.err("invalid number: expected a digit after `.`");
            }
        }
        if let Some(b'e' | b'E') = self.b.get(self.pos) {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.b.get(self.pos) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return self.err("invalid number: expected a digit in the exponent");
            }
        }
        Ok(())
    }

    /// Scans a string whose opening quote is at `pos`; leaves `pos` after the closing
    /// quote and returns (contains escapes, index of the closing quote).
    fn string(&mut self) -> Res<(bool, usize)> {
        let b = self.b;
        let mut i = self.pos + 1;
        let mut escaped = false;
        loop {
            while i < b.len() && !STRING_SPECIAL[usize::from(b[i])] {
                i += 1;
            }
            let Some(&c) = b.get(i) else {
                self.pos = i;
                return self.err("unterminated string");
            };
            match c {
                b'"' => {
                    self.pos = i + 1;
                    return Ok((escaped, i));
                }
                b'\\' => {
                    escaped = true;
                    match b.get(i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                        Some(b'u') => {
                            let Some(hi) = b.get(i + 2..i + 6).and_then(hex4) else {
                                self.pos = i;
                                return self.err("invalid \\u escape: expected 4 hex digits");
                            };
                            if (0xdc00..0xe000).contains(&hi) {
                                self.pos = i;
                                return self.err("invalid \\u escape: lone low surrogate");
                            }
                            if (0xd800..0xdc00).contains(&hi) {
                                let lo = match (b.get(i + 6), b.get(i + 7)) {
                                    (Some(b'\\'), Some(b'u')) => {
                                        b.get(i + 8..i + 12).and_then(hex4)
                                    }
                                    _ => None,
                                };
                                match lo {
                                    Some(lo) if (0xdc00..0xe000).contains(&lo) => i += 12,
                                    _ => {
                                        self.pos = i;
                                        return self.err("invalid \\u escape: lone high surrogate");
                                    }
                                }
                            } else {
                                i += 6;
                            }
                        }
                        _ => {
                            self.pos = i;
                            return self.err("invalid escape in string");
                        }
                    }
                }
                0..=0x1f => {
                    self.pos = i;
                    return self.err("control character in string (must be escaped)");
                }
                _ => i += 1,
            }
        }
    }

    fn key(&mut self) -> Res<Key> {
        let start = self.pos + 1;
        let (escaped, end) = self.string()?;
        let raw = &self.b[start..end];
        let (hash, flags) = if escaped {
            let mut h = FNV_SEED;
            unescape_chunks(raw, |c| h = fnv(h, c));
            (h, KEY_ESCAPED)
        } else {
            (fnv(FNV_SEED, raw), 0)
        };
        Ok(Key {
            start: start as u32,
            end: end as u32,
            hash,
            flags,
        })
    }

    fn decoded_key(&self, n: &Node) -> Vec<u8> {
        let mut v = Vec::new();
        unescape_chunks(&self.b[n.key_start as usize..n.key_end as usize], |c| {
            v.extend_from_slice(c)
        });
        v
    }

    fn same_key(&self, a: u32, b: u32) -> bool {
        let (na, nb) = (&self.nodes[a as usize], &self.nodes[b as usize]);
        if na.key_hash != nb.key_hash {
            return false;
        }
        let ka = &self.b[na.key_start as usize..na.key_end as usize];
        let kb = &self.b[nb.key_start as usize..nb.key_end as usize];
        if (na.flags | nb.flags) & KEY_ESCAPED == 0 {
            ka == kb
        } else {
            self.decoded_key(na) == self.decoded_key(nb)
        }
    }

    /// Marks every member of the object at `obj` that a later member with the same key
    /// overrides.
    fn shadow_duplicates(&mut self, obj: u32) {
        let end = self.nodes[obj as usize].next;
        let mut count = 0usize;
        let mut c = obj + 1;
        while c < end {
            count += 1;
            c = self.nodes[c as usize].next;
        }
        if count < 2 {
            return;
        }
        if count <= 16 {
            let mut j = self.nodes[obj as usize + 1].next;
            while j < end {
                let mut i = obj + 1;
                while i < j {
                    if self.nodes[i as usize].flags & SHADOWED == 0 && self.same_key(i, j) {
                        self.nodes[i as usize].flags |= SHADOWED;
                    }
                    i = self.nodes[i as usize].next;
                }
                j = self.nodes[j as usize].next;
            }
            return;
        }
        // Open addressing over node indices + 1 (0 = empty).
        let size = (count * 2).next_power_of_two();
        let mask = size - 1;
        let mut table = std::mem::take(&mut self.table);
        table.clear();
        table.resize(size, 0);
        let mut j = obj + 1;
        while j < end {
            let mut slot = self.nodes[j as usize].key_hash as usize & mask;
            loop {
                let e = table[slot];
                if e == 0 {
                    table[slot] = j + 1;
                    break;
                }
                if self.same_key(e - 1, j) {
                    self.nodes[e as usize - 1].flags |= SHADOWED;
                    table[slot] = j + 1;
                    break;
                }
                slot = (slot + 1) & mask;
            }
            j = self.nodes[j as usize].next;
        }
        self.table = table;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(s: &str) -> Doc {
        Doc::parse(Bytes::copy_from_slice(s.as_bytes())).unwrap()
    }

    fn err(s: &str) -> DocError {
        Doc::parse(Bytes::copy_from_slice(s.as_bytes())).unwrap_err()
    }

    fn get<'a>(d: &'a Doc, path: &str) -> Option<&'a [u8]> {
        let mut hints = NO_HINTS;
        let mut cur = Doc::ROOT;
        for s in path.split('.') {
            let seg = Seg::new(s);
            cur = match d.node(cur).kind {
                Kind::Object => d.member(cur, &seg, &mut hints, &mut 0)?,
                Kind::Array => d.nth(cur, seg.index?, &mut 0)?,
                _ => return None,
            };
        }
        Some(d.text(d.node(cur)))
    }

    #[test]
    fn keeps_number_text_and_escaped_strings() {
        let d = doc(r#" {"Amount": 250.00, "Exp": -1.50E+3, "S": "a\"b\u00e9", "Z": 0} "#);
        assert_eq!(get(&d, "Amount"), Some(&b"250.00"[..]));
        assert_eq!(get(&d, "Exp"), Some(&b"-1.50E+3"[..]));
        assert_eq!(get(&d, "S"), Some(&br#"a\"b\u00e9"#[..]));
        assert_eq!(get(&d, "Z"), Some(&b"0"[..]));
        assert_eq!(get(&d, "Nope"), None);
    }

    #[test]
    fn nested_paths_and_indexes() {
        let d = doc(r#"{"a":{"b":[10,{"c":"x"},[1,2]],"0":"zero"},"e":{}}"#);
        assert_eq!(get(&d, "a.b.0"), Some(&b"10"[..]));
        assert_eq!(get(&d, "a.b.1.c"), Some(&b"x"[..]));
        assert_eq!(get(&d, "a.b.2"), Some(&b"[1,2]"[..]));
        assert_eq!(get(&d, "a.b.3"), None);
        assert_eq!(get(&d, "a.0"), Some(&b"zero"[..]));
        assert_eq!(get(&d, "a.b.1.c.d"), None);
        assert_eq!(get(&d, "e"), Some(&b"{}"[..]));
        assert_eq!(get(&d, "e.x"), None);
    }

    #[test]
    fn lookups_in_any_order_agree() {
        let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
        let body: Vec<String> = keys.iter().map(|k| format!("\"{k}\":\"v{k}\"")).collect();
        let d = doc(&format!("{{{}}}", body.join(",")));
        // forwards, backwards, and a stride: the hint must never change the answer
        let mut hints = NO_HINTS;
        let order: Vec<usize> = (0..40)
            .chain((0..40).rev())
            .chain((0..40).map(|i| i * 7 % 40))
            .collect();
        for i in order {
            let seg = Seg::new(&keys[i]);
            let m = d.member(Doc::ROOT, &seg, &mut hints, &mut 0).unwrap();
            assert_eq!(d.text(d.node(m)), format!("v{}", keys[i]).as_bytes());
        }
        assert!(d
            .member(Doc::ROOT, &Seg::new("k40"), &mut hints, &mut 0)
            .is_none());
    }

    #[test]
    fn escaped_keys_match_their_decoded_name() {
        let d = doc(r#"{"\u004frderId":"A","Cust\/x":1}"#);
        assert_eq!(get(&d, "OrderId"), Some(&b"A"[..]));
        assert_eq!(get(&d, "Cust/x"), Some(&b"1"[..]));
    }

    #[test]
    fn duplicate_keys_last_wins_small_and_large() {
        let d = doc(r#"{"a":1,"b":2,"a":3,"\u0061":4}"#);
        assert_eq!(get(&d, "a"), Some(&b"4"[..]));
        assert_eq!(d.children(Doc::ROOT).count(), 2);
        let mut s = String::from("{");
        for i in 0..30 {
            s.push_str(&format!("\"k{}\":{i},", i % 10));
        }
        s.push_str("\"last\":true}");
        let d = doc(&s);
        for i in 0..10 {
            assert_eq!(
                get(&d, &format!("k{i}")),
                Some(format!("{}", 20 + i).as_bytes())
            );
        }
        assert_eq!(d.children(Doc::ROOT).count(), 11);
    }

    #[test]
    fn rejects_invalid_json_cleanly() {
        for bad in [
            "",
            "   ",
            "{",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{\"a\":1 \"b\":2}",
            "{a:1}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":-}",
            "{\"a\":1e}",
            "{\"a\":+1}",
            "{\"a\":tru}",
            "{\"a\":\"x}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\u12\"}",
            "{\"a\":\"\\ud800\"}",
            "{\"a\":\"\\udc00\"}",
            "{\"a\":\"\\ud800\\u0041\"}",
            "{\"a\":\"tab\there\"}",
            "{\"a\":[1,2}",
            "{\"a\":[1,]}",
            "{} x",
            "{}{}",
        ] {
            assert!(
                matches!(err(bad), DocError::Syntax { .. }),
                "{bad:?} gave {:?}",
                Doc::parse(Bytes::copy_from_slice(bad.as_bytes()))
            );
        }
        assert_eq!(err("[1]"), DocError::NotAnObject { found: "an array" });
        assert_eq!(err(" \"s\" "), DocError::NotAnObject { found: "a string" });
        assert!(matches!(err("[1"), DocError::Syntax { .. }));
        let bad_utf8 = Bytes::from_static(b"{\"a\":\"\xff\"}");
        assert_eq!(
            Doc::parse(bad_utf8).unwrap_err(),
            DocError::InvalidUtf8 { offset: 6 }
        );
    }

    #[test]
    fn error_offsets_point_at_the_problem() {
        assert_eq!(
            err("{\"a\": 1, \"b\": nul}"),
            DocError::Syntax {
                offset: 14,
                reason: "invalid literal (expected true, false or null)"
            }
        );
    }

    #[test]
    fn unescape_decodes_every_escape() {
        let mut out = Vec::new();
        unescape_chunks(br#"a\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00z"#, |c| {
            out.extend_from_slice(c)
        });
        assert_eq!(out, "a\"\\/\u{8}\u{c}\n\r\t\u{e9}\u{1f600}z".as_bytes());
    }

    #[test]
    fn short_eq_matches_slice_equality() {
        let words: Vec<Vec<u8>> = (0..40)
            .map(|n| (0..n).map(|i| b'a' + (i * 7 % 26) as u8).collect())
            .collect();
        for a in &words {
            for b in &words {
                assert_eq!(short_eq(a, b), a == b);
                for i in 0..b.len() {
                    let mut c = b.clone();
                    c[i] ^= 1;
                    assert_eq!(short_eq(a, &c), *a == c);
                }
            }
        }
    }

    #[test]
    fn deep_nesting_does_not_recurse() {
        let depth = 100_000;
        let s = format!("{{\"a\":{}{}}}", "[".repeat(depth), "]".repeat(depth));
        let d = doc(&s);
        assert_eq!(d.node(Doc::ROOT).kind, Kind::Object);
        let s = format!("{{\"a\":{}}}", "[".repeat(depth));
        assert!(matches!(err(&s), DocError::Syntax { .. }));
    }
}
