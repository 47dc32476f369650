//! The json body check (SPEC §5: every rendered json body is valid JSON).
//!
//! Runs once, at compile time, over the parts of a `format = "json"` body. The template
//! must be one RFC 8259 JSON value (whitespace around it allowed) when:
//! - a placeholder outside a string literal is read as one JSON value (it writes a
//!   string, a number, `true`/`false`, an object, an array or `null`);
//! - a placeholder inside a string literal is read as string content;
//! - a join outside a string literal is read as a list of 0..n elements. It must be the
//!   whole content (whitespace aside) of an array `[...]`, its sub-template exactly one
//!   value, or of an object `{...}`, its sub-template exactly one member `"key": value`;
//!   its separator must be `,` with optional whitespace around it. The sub-template is
//!   checked by the same rules.
//! - a join inside a string literal is string content: its sub-template and separator
//!   must be complete string content (valid escapes, no control character, no `"`).
//!
//! Literal text follows the RFC grammar: numbers without leading zeros, `true`,
//! `false`, `null`, strings with valid escapes and no lone `\u` surrogate (the rule
//! [`Doc::parse`](super::Doc::parse) applies to event data), no control characters in
//! strings. Under these rules any data renders valid JSON: each placeholder writes one
//! value or string content, and a join with 0, 1 or n elements renders `[]`/`{}` or
//! `,`-separated values/members.
//!
//! Errors carry the source offset of the first offending character (the opening
//! bracket or quote for an unclosed array, object or string).

use std::ops::Range;

use super::compile::{Esc, Ir};

/// Arrays and objects of a json body template nest at most this deep (the check
/// recurses; serde_json refuses deeper documents by default too).
pub(super) const MAX_NESTING: usize = 128;

const NOT_JSON: &str = "json body is not valid JSON here";
const JOIN_WHOLE: &str = "a join outside a string must be the whole content of [...] or {...}";

/// A template that breaks the rule: the source offset and the message.
#[derive(Debug)]
pub(super) struct Bad {
    pub(super) at: usize,
    pub(super) message: String,
}

type Res = Result<(), Bad>;

/// Checks the compiled parts of a json body. `lit_at[i]` is the source offset that
/// literal byte `lits[i]` came from.
pub(super) fn check(src: &str, parts: &[Ir], lits: &[u8], lit_at: &[usize]) -> Res {
    let c = Check { src, lits, lit_at };
    let mut cur = c.cursor(parts, src.len(), Piece::Body);
    let mut depth = 0;
    c.ws(&mut cur);
    c.value(&mut cur, &mut depth)?;
    c.ws(&mut cur);
    match c.peek(&cur) {
        Tok::End => Ok(()),
        _ => Err(c.not_json(
            &cur,
            format!(
                "expected the end of the body after the JSON value, found {}",
                c.found(&cur)
            ),
        )),
    }
}

/// What a cursor walks; names its end in messages.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Piece {
    Body,
    SubTemplate,
    Separator,
}

/// A join as the checker sees it.
#[derive(Clone, Copy)]
struct JoinTok<'a> {
    at: usize,
    body: &'a [Ir],
    body_end: usize,
    sep: &'a Range<usize>,
    sep_at: usize,
}

#[derive(Clone, Copy)]
enum Tok<'a> {
    /// One literal byte.
    Byte(u8),
    Value(Esc),
    Join(JoinTok<'a>),
    End,
}

/// Walks the parts of one sequence (body, sub-template or separator) token by token:
/// literal bytes one at a time, placeholders and joins whole.
struct Cur<'a> {
    parts: &'a [Ir],
    /// Current part, and byte offset inside it when it is a literal.
    part: usize,
    off: usize,
    /// Source offset reported for `End`.
    end_at: usize,
    piece: Piece,
}

struct Check<'a> {
    src: &'a str,
    lits: &'a [u8],
    lit_at: &'a [usize],
}

/// An array or an object (and the list a join in it stands for).
#[derive(Clone, Copy, PartialEq, Eq)]
enum List {
    Array,
    Object,
}

impl<'a> Check<'a> {
    fn cursor<'b>(&self, parts: &'b [Ir], end_at: usize, piece: Piece) -> Cur<'b> {
        Cur {
            parts,
            part: 0,
            off: 0,
            end_at,
            piece,
        }
    }

    fn peek<'b>(&self, cur: &Cur<'b>) -> Tok<'b> {
        match cur.parts.get(cur.part) {
            None => Tok::End,
            Some(Ir::Lit(r)) => Tok::Byte(self.lits[r.start + cur.off]),
            Some(Ir::Value { esc, .. }) => Tok::Value(*esc),
            Some(Ir::Join {
                at,
                body,
                body_end,
                sep,
                sep_at,
                ..
            }) => Tok::Join(JoinTok {
                at: *at,
                body,
                body_end: *body_end,
                sep,
                sep_at: *sep_at,
            }),
        }
    }

    /// Source offset of the current token.
    fn at(&self, cur: &Cur) -> usize {
        match cur.parts.get(cur.part) {
            None => cur.end_at,
            Some(Ir::Lit(r)) => self.lit_at[r.start + cur.off],
            Some(Ir::Value { at, .. } | Ir::Join { at, .. }) => *at,
        }
    }

    fn bump(&self, cur: &mut Cur) {
        match cur.parts.get(cur.part) {
            None => {}
            Some(Ir::Lit(r)) => {
                cur.off += 1;
                if r.start + cur.off >= r.end {
                    cur.part += 1;
                    cur.off = 0;
                }
            }
            Some(_) => cur.part += 1,
        }
    }

    /// The character a literal byte at the cursor starts.
    fn ch(&self, cur: &Cur, b: u8) -> char {
        if b.is_ascii() {
            char::from(b)
        } else {
            // A non-ASCII byte is never part of a template escape: the source holds the
            // same character at its offset.
            self.src[self.at(cur)..].chars().next().unwrap_or(' ')
        }
    }

    /// The current token, for messages.
    fn found(&self, cur: &Cur) -> String {
        match self.peek(cur) {
            Tok::Byte(b' ') => "a space".into(),
            Tok::Byte(b'\n' | b'\r') => "a line break".into(),
            Tok::Byte(b'\t') => "a tab".into(),
            Tok::Byte(b) if b < 0x20 || b == 0x7f => "a control character".into(),
            Tok::Byte(b) => {
                let c = self.ch(cur, b);
                super::invisible(c).unwrap_or_else(|| format!("`{c}`"))
            }
            Tok::Value(_) => "a placeholder".into(),
            Tok::Join(_) => "a join".into(),
            Tok::End => match cur.piece {
                Piece::Body => "the end of the body".into(),
                Piece::SubTemplate => "the end of the join sub-template".into(),
                Piece::Separator => "the end of the separator".into(),
            },
        }
    }

    fn not_json(&self, cur: &Cur, detail: impl std::fmt::Display) -> Bad {
        Bad {
            at: self.at(cur),
            message: format!("{NOT_JSON}: {detail}"),
        }
    }

    fn rule(&self, at: usize, message: impl Into<String>) -> Bad {
        Bad {
            at,
            message: message.into(),
        }
    }

    fn ws(&self, cur: &mut Cur) {
        while let Tok::Byte(b' ' | b'\t' | b'\n' | b'\r') = self.peek(cur) {
            self.bump(cur);
        }
    }

    /// Exactly one JSON value at the cursor.
    fn value(&self, cur: &mut Cur, depth: &mut usize) -> Res {
        match self.peek(cur) {
            Tok::Byte(b'{') => self.container(cur, depth, List::Object),
            Tok::Byte(b'[') => self.container(cur, depth, List::Array),
            Tok::Byte(b'"') => self.string(cur),
            Tok::Byte(b'-' | b'0'..=b'9') => self.number(cur),
            Tok::Byte(b't') => self.word(cur, b"true"),
            Tok::Byte(b'f') => self.word(cur, b"false"),
            Tok::Byte(b'n') => self.word(cur, b"null"),
            Tok::Value(esc) => {
                debug_assert_eq!(esc, Esc::JsonValue);
                self.bump(cur);
                Ok(())
            }
            Tok::Join(j) => Err(self.rule(j.at, JOIN_WHOLE)),
            Tok::Byte(b'\'') => Err(self.not_json(
                cur,
                "expected a value, found `'` (JSON strings take double quotes)",
            )),
            _ => Err(self.not_json(cur, format!("expected a value, found {}", self.found(cur)))),
        }
    }

    /// An array or an object whose opening bracket is at the cursor.
    fn container(&self, cur: &mut Cur, depth: &mut usize, list: List) -> Res {
        let open = self.at(cur);
        if *depth >= MAX_NESTING {
            return Err(self.rule(
                open,
                format!("json body: arrays and objects nest more than {MAX_NESTING} deep"),
            ));
        }
        *depth += 1;
        self.bump(cur);
        self.ws(cur);
        let close = match list {
            List::Array => b']',
            List::Object => b'}',
        };
        let (what, element) = match list {
            List::Array => ("array", "an array element"),
            List::Object => ("object", "an object member"),
        };
        let unclosed = || {
            self.rule(
                open,
                format!(
                    "{NOT_JSON}: unclosed {what}: missing `{}`",
                    char::from(close)
                ),
            )
        };
        match self.peek(cur) {
            Tok::Join(j) => {
                self.join_list(j, list, depth)?;
                self.bump(cur);
                self.ws(cur);
                match self.peek(cur) {
                    Tok::Byte(b) if b == close => {}
                    Tok::End => return Err(unclosed()),
                    _ => {
                        return Err(self.rule(
                            self.at(cur),
                            format!(
                                "{JOIN_WHOLE}: expected `{}` after the join, found {}",
                                char::from(close),
                                self.found(cur)
                            ),
                        ))
                    }
                }
            }
            Tok::Byte(b) if b == close => {}
            _ => loop {
                match list {
                    List::Array => self.value(cur, depth)?,
                    List::Object => self.member(cur, depth)?,
                }
                self.ws(cur);
                match self.peek(cur) {
                    Tok::Byte(b',') => {
                        self.bump(cur);
                        self.ws(cur);
                        if self.peek(cur) == Tok::Byte(close) {
                            return Err(self.not_json(
                                cur,
                                format!(
                                    "expected {} after `,`, found `{}` (a trailing comma is \
                                     not JSON)",
                                    match list {
                                        List::Array => "a value",
                                        List::Object => "a member",
                                    },
                                    char::from(close)
                                ),
                            ));
                        }
                    }
                    Tok::Byte(b) if b == close => break,
                    Tok::End => return Err(unclosed()),
                    _ => {
                        return Err(self.not_json(
                            cur,
                            format!(
                                "expected `,` or `{}` after {element}, found {}",
                                char::from(close),
                                self.found(cur)
                            ),
                        ))
                    }
                }
            },
        }
        self.bump(cur);
        *depth -= 1;
        Ok(())
    }

    /// One object member `"key": value` at the cursor.
    fn member(&self, cur: &mut Cur, depth: &mut usize) -> Res {
        match self.peek(cur) {
            Tok::Byte(b'"') => self.string(cur)?,
            Tok::Value(_) => {
                return Err(self.not_json(
                    cur,
                    "a member name must be a string; a placeholder outside quotes writes \
                     any JSON value (write \"{...}\")",
                ))
            }
            Tok::Join(j) => return Err(self.rule(j.at, JOIN_WHOLE)),
            Tok::Byte(b'\'') => {
                return Err(self.not_json(
                    cur,
                    "expected a member name, found `'` (JSON strings take double quotes)",
                ))
            }
            _ => {
                return Err(self.not_json(
                    cur,
                    format!(
                        "expected a member name in double quotes, found {}",
                        self.found(cur)
                    ),
                ))
            }
        }
        self.ws(cur);
        if self.peek(cur) != Tok::Byte(b':') {
            return Err(self.not_json(
                cur,
                format!(
                    "expected `:` after the member name, found {}",
                    self.found(cur)
                ),
            ));
        }
        self.bump(cur);
        self.ws(cur);
        self.value(cur, depth)
    }

    /// A join that is the whole content of an array or object: its sub-template is one
    /// value or one member, its separator a comma.
    fn join_list(&self, j: JoinTok, list: List, depth: &mut usize) -> Res {
        let mut body = self.cursor(j.body, j.body_end, Piece::SubTemplate);
        self.ws(&mut body);
        match list {
            List::Array => self.value(&mut body, depth)?,
            List::Object => self.member(&mut body, depth)?,
        }
        self.ws(&mut body);
        if self.peek(&body) != Tok::End {
            let what = match list {
                List::Array => "a join element in an array must be exactly one JSON value",
                List::Object => {
                    "a join element in an object must be exactly one member `\"key\": value`"
                }
            };
            return Err(self.rule(
                self.at(&body),
                format!(
                    "{what}: expected the end of the sub-template, found {}",
                    self.found(&body)
                ),
            ));
        }

        let sep = [Ir::Lit(j.sep.clone())];
        let mut sep = self.cursor(
            if j.sep.is_empty() { &[] } else { &sep },
            j.sep_at,
            Piece::Separator,
        );
        self.ws(&mut sep);
        let mut ok = self.peek(&sep) == Tok::Byte(b',');
        if ok {
            self.bump(&mut sep);
            self.ws(&mut sep);
            ok = self.peek(&sep) == Tok::End;
        }
        if ok {
            return Ok(());
        }
        let at = match self.peek(&sep) {
            Tok::End => j.sep_at,
            _ => self.at(&sep),
        };
        let what = match list {
            List::Array => "array",
            List::Object => "object",
        };
        Err(self.rule(
            at,
            format!("a join in an {what} needs the separator \",\" (whitespace around it is fine)"),
        ))
    }

    /// A string literal whose opening quote is at the cursor.
    fn string(&self, cur: &mut Cur) -> Res {
        let open = self.at(cur);
        self.bump(cur);
        self.string_content(cur)?;
        match self.peek(cur) {
            Tok::Byte(b'"') => {
                self.bump(cur);
                Ok(())
            }
            _ => Err(self.rule(open, format!("{NOT_JSON}: unclosed string: missing `\"`"))),
        }
    }

    /// String content up to a `"` or the end (neither consumed).
    fn string_content(&self, cur: &mut Cur) -> Res {
        loop {
            match self.peek(cur) {
                Tok::Byte(b'"') | Tok::End => return Ok(()),
                Tok::Byte(b'\\') => self.escape(cur)?,
                Tok::Byte(b) if b < 0x20 => {
                    return Err(self.not_json(
                        cur,
                        format!(
                            "{} in a string (write it as an escape such as `\\n`)",
                            self.found(cur)
                        ),
                    ))
                }
                Tok::Byte(_) => self.bump(cur),
                Tok::Value(esc) => {
                    debug_assert_eq!(esc, Esc::JsonString);
                    self.bump(cur);
                }
                Tok::Join(j) => {
                    self.string_join(j)?;
                    self.bump(cur);
                }
            }
        }
    }

    /// A join inside a string: its sub-template and separator are string content.
    fn string_join(&self, j: JoinTok) -> Res {
        let sep = [Ir::Lit(j.sep.clone())];
        let pieces = [
            (j.body, j.body_end, Piece::SubTemplate),
            (
                if j.sep.is_empty() { &[][..] } else { &sep[..] },
                j.sep_at,
                Piece::Separator,
            ),
        ];
        for (parts, end_at, piece) in pieces {
            let mut cur = self.cursor(parts, end_at, piece);
            self.string_content(&mut cur)?;
            if self.peek(&cur) != Tok::End {
                return Err(self.rule(
                    self.at(&cur),
                    "a join inside a JSON string must stay inside it: this `\"` would end \
                     the string",
                ));
            }
        }
        Ok(())
    }

    /// A `\` escape at the cursor, inside a string.
    fn escape(&self, cur: &mut Cur) -> Res {
        let start = self.at(cur);
        self.bump(cur);
        match self.peek(cur) {
            Tok::Byte(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                self.bump(cur);
                Ok(())
            }
            Tok::Byte(b'u') => {
                self.bump(cur);
                let hi = self.hex4(cur)?;
                if (0xdc00..0xe000).contains(&hi) {
                    return Err(self.rule(
                        start,
                        format!("{NOT_JSON}: `\\u{hi:04x}` is a lone low surrogate"),
                    ));
                }
                if (0xd800..0xdc00).contains(&hi) {
                    let lone = || {
                        self.rule(
                            start,
                            format!(
                                "{NOT_JSON}: `\\u{hi:04x}` is a lone high surrogate (a low \
                                 surrogate `\\udc00`..`\\udfff` must follow)"
                            ),
                        )
                    };
                    for b in [b'\\', b'u'] {
                        if self.peek(cur) != Tok::Byte(b) {
                            return Err(lone());
                        }
                        self.bump(cur);
                    }
                    let lo = self.hex4(cur)?;
                    if !(0xdc00..0xe000).contains(&lo) {
                        return Err(lone());
                    }
                }
                Ok(())
            }
            Tok::Byte(b) => Err(self.not_json(
                cur,
                format!(
                    "invalid escape `\\{}` in a string (JSON has `\\\"` `\\\\` `\\/` `\\b` \
                     `\\f` `\\n` `\\r` `\\t` `\\uXXXX`)",
                    self.ch(cur, b)
                ),
            )),
            _ => Err(self.not_json(
                cur,
                format!("expected an escape after `\\`, found {}", self.found(cur)),
            )),
        }
    }

    /// Four hex digits after `\u`.
    fn hex4(&self, cur: &mut Cur) -> Result<u32, Bad> {
        let mut v = 0;
        for _ in 0..4 {
            match self.peek(cur) {
                Tok::Byte(b) if b.is_ascii_hexdigit() => {
                    v = v * 16 + char::from(b).to_digit(16).unwrap_or(0);
                    self.bump(cur);
                }
                _ => {
                    return Err(self.not_json(
                        cur,
                        format!("`\\u` takes four hex digits, found {}", self.found(cur)),
                    ))
                }
            }
        }
        Ok(v)
    }

    /// A number at the cursor (RFC 8259: `-? (0 | [1-9][0-9]*) (.[0-9]+)? ([eE][+-]?[0-9]+)?`).
    fn number(&self, cur: &mut Cur) -> Res {
        if self.peek(cur) == Tok::Byte(b'-') {
            self.bump(cur);
        }
        match self.peek(cur) {
            Tok::Byte(b'0') => {
                self.bump(cur);
                if let Tok::Byte(b'0'..=b'9') = self.peek(cur) {
                    return Err(self.not_json(cur, "a number cannot have a leading zero"));
                }
            }
            Tok::Byte(b'1'..=b'9') => self.digits(cur),
            _ => {
                return Err(self.not_json(
                    cur,
                    format!("expected a digit after `-`, found {}", self.found(cur)),
                ))
            }
        }
        if self.peek(cur) == Tok::Byte(b'.') {
            self.bump(cur);
            self.some_digits(cur, "after `.`")?;
        }
        if let Tok::Byte(b'e' | b'E') = self.peek(cur) {
            self.bump(cur);
            if let Tok::Byte(b'+' | b'-') = self.peek(cur) {
                self.bump(cur);
            }
            self.some_digits(cur, "in the exponent")?;
        }
        Ok(())
    }

    fn digits(&self, cur: &mut Cur) {
        while let Tok::Byte(b'0'..=b'9') = self.peek(cur) {
            self.bump(cur);
        }
    }

    fn some_digits(&self, cur: &mut Cur, after: &str) -> Res {
        if let Tok::Byte(b'0'..=b'9') = self.peek(cur) {
            self.digits(cur);
            return Ok(());
        }
        Err(self.not_json(
            cur,
            format!("expected a digit {after}, found {}", self.found(cur)),
        ))
    }

    /// `true`, `false` or `null` at the cursor.
    fn word(&self, cur: &mut Cur, word: &[u8]) -> Res {
        let start = self.at(cur);
        for &b in word {
            if self.peek(cur) != Tok::Byte(b) {
                return Err(self.rule(
                    start,
                    format!(
                        "{NOT_JSON}: expected `{}` (a JSON literal is true, false or null; \
                         text needs double quotes)",
                        String::from_utf8_lossy(word)
                    ),
                ));
            }
            self.bump(cur);
        }
        Ok(())
    }
}

impl PartialEq for Tok<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Tok::Byte(a), Tok::Byte(b)) => a == b,
            (Tok::Value(a), Tok::Value(b)) => a == b,
            (Tok::End, Tok::End) => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::{BodyFormat, Context, Doc, Template, TemplateError};
    use super::MAX_NESTING;

    const JSON: Context = Context::Body(BodyFormat::Json);

    /// Data sets every accepted template is rendered with: many elements, one, none,
    /// nothing at all, and values of other types where arrays are expected.
    const DATA: [&str; 5] = [
        r#"{"Id": 7, "Name": "a\"b\\c\n\u2028", "Amount": 250.00, "Nil": null,
            "Customer": {"City": "SF", "Tags": ["x", "y"]}, "tags": ["x", "y,z", "\""],
            "items": [{"sku": "A1", "qty": 2}, {"sku": "B\"2", "qty": 1.50}, {"sku": null}],
            "m": [{"name": "a", "v": 1, "vs": [1, 2]}, {"name": "b\"", "v": {"x": [null]}, "vs": []}],
            "orders": [{"Id": 10, "lines": [{"sku": "a"}, {"sku": "b"}]}, {"Id": 20, "lines": []}]}"#,
        r#"{"items": [{"sku": "A1"}], "m": [{"name": "only", "v": "s", "vs": ["t"]}],
            "tags": [1], "orders": [{"Id": 1, "lines": [{"sku": "x"}]}]}"#,
        r#"{"items": [], "m": [], "tags": [], "orders": [], "Customer": {}}"#,
        r#"{}"#,
        r#"{"items": 1, "m": "x", "tags": null, "orders": {"lines": []}, "Customer": []}"#,
    ];

    #[track_caller]
    fn accepted(src: &str) {
        let t = Template::compile(src, JSON).unwrap_or_else(|e| panic!("{src}\n{e}"));
        for data in DATA {
            let doc = Doc::parse(Bytes::from_static(data.as_bytes())).unwrap();
            let mut out = Vec::new();
            t.render(&doc, &mut out);
            if let Err(e) = serde_json::from_slice::<serde_json::Value>(&out) {
                panic!(
                    "{src}\ndata {data}\nrendered {}\n{e}",
                    String::from_utf8_lossy(&out)
                );
            }
        }
    }

    fn err(src: &str) -> TemplateError {
        match Template::compile(src, JSON) {
            Ok(_) => panic!("{src:?} compiled"),
            Err(e) => e,
        }
    }

    #[track_caller]
    fn refused(src: &str, line: usize, column: usize, msg: &str) {
        let e = err(src);
        assert_eq!((e.line, e.column), (line, column), "{src:?}: {e}");
        assert!(
            e.message.contains(msg),
            "{src:?}: {:?} lacks {msg:?}",
            e.message
        );
        // Only json bodies are checked.
        assert!(
            Template::compile(src, Context::Body(BodyFormat::Text)).is_ok(),
            "{src:?} as text"
        );
    }

    #[test]
    fn accepts_json_with_placeholders_as_values() {
        for src in [
            r#"{"id": {Id}, "name": "{Name}", "amount": {Amount}, "nil": {Nil}, "no": {Nope}}"#,
            // Values that are objects and arrays.
            r#"{"c": {Customer}, "t": {tags}, "both": [{Customer}, {tags}, {Customer.Tags}]}"#,
            // A value or a string as the whole body; whitespace around it.
            "{Id}",
            "\"{Name} and {Customer}\"",
            " \n\t{\"a\": [ ], \"b\": { }, \"c\": []}\r\n",
            "[0, -0, 1.5, -12.0E-2, 1e+3, 10, true, false, null, \"\"]",
            // JSON escapes, spelled with the template's own: `\\\"` writes `\"`.
            r#"["\\\" \\\\ \/ \b \f \n \r \t \u00e9 \uD83D\ude00 {Name}"]"#,
            // Placeholders inside keys.
            r#"{"{Name}": 1, "k-{Id}": {Id}}"#,
            // The spec examples, fixed.
            r#"{"skus": [{join(items, i, "{i.sku}")}]}"#,
            r#"{"skus": "{join(items, i, "{i.sku}")}"}"#,
            r#"{"skus": "{join(items, i, "{i.sku}", " \\n ")}"}"#,
            // Joins of values; separators with whitespace around the comma.
            r#"[{join(items, i, "\{\"sku\": {i.sku}, \"qty\": {i.qty}\}")}]"#,
            "[ {join(tags, t, \"{t}\", \" ,\n \")} ]",
            r#"[{join(tags, t, "[{t}, \"{t}\"]", ",")}]"#,
            // Joins of members: `{` before a space or `{` is literal text.
            r#"{ {join(m, k, "\"{k.name}\": {k.v}")} }"#,
            r#"{{join(m, k, "\"{k.name}\":{k.v}", ", ")}}"#,
            r#"{"m": { {join(m, k, "\"{k.name}-{Id}\": [{join(k.vs, v, "{v}")}]")} }}"#,
            // Nested joins.
            r#"{"orders": [{join(orders, o, "\{\"id\": {o.Id}, \"lines\": [{join(o.lines, l, "{l.sku}", ", ")}], \"skus\": \"{join(o.lines, l, "{l.sku}", " ")}\"\}")}]}"#,
            r#"[{join(orders, o, "[{join(o.lines, l, "[{join(tags, t, "{t}")}]")}]")}]"#,
        ] {
            accepted(src);
        }
    }

    #[test]
    fn accepts_every_seed_body_shape() {
        // The seed's action body: a join of objects inside an array, inside an object.
        accepted(
            "{\n  \"Payout\": {Amount},\n  \"items\": [{join(items, i, \"\\{\\\"sku\\\":\\\"{i.sku}\\\",\\\"quantity\\\":{i.qty}\\}\")}],\n  \"Note\": {Nope}\n}",
        );
    }

    #[test]
    fn accepts_the_loadtest_template_body() {
        let toml = include_str!("../../loadtest/scenarios/templates.toml");
        let line = toml
            .lines()
            .find_map(|l| l.strip_prefix("body = '"))
            .expect("a body line");
        accepted(line.strip_suffix('\'').expect("one-line literal string"));
    }

    #[test]
    fn refuses_text_that_is_not_json() {
        refused("hello {X} world", 1, 1, "expected a value, found `h`");
        refused("", 1, 1, "expected a value, found the end of the body");
        refused("{\"a\": 1} x", 1, 10, "expected the end of the body");
        refused("{\"a\": tru}", 1, 7, "expected `true`");
        refused(
            "{\"a\": {X}x}",
            1,
            10,
            "expected `,` or `}` after an object member",
        );
        refused("[nul{X}]", 1, 2, "expected `null`");
        refused("{'a': 1}", 1, 2, "double quotes");
        refused("['a']", 1, 2, "double quotes");
        refused(
            "[1 2]",
            1,
            4,
            "expected `,` or `]` after an array element, found `2`",
        );
        refused("{\"a\" 1}", 1, 6, "expected `:` after the member name");
        refused("{\"a\": 1 \"b\": 2}", 1, 9, "expected `,` or `}`");
        refused("[é]", 1, 2, "found `é`");
        // One that would not show is named: it looks like a space JSON allows.
        refused(
            "{\"a\": 1,\u{a0}\"b\": 2}",
            1,
            9,
            "expected a member name in double quotes, found U+00A0 (a no-break space)",
        );
        refused("\u{feff}{}", 1, 1, "found U+FEFF (a byte order mark)");
        // A line and column on a later line.
        refused(
            "{\n  \"a\": 1,\n  \"b\": hello\n}",
            3,
            8,
            "expected a value, found `h`",
        );
    }

    #[test]
    fn refuses_values_next_to_each_other() {
        refused(
            "[{A} {B}]",
            1,
            6,
            "after an array element, found a placeholder",
        );
        refused("{\"a\": {A} \"b\": 1}", 1, 11, "found `\"`");
        refused("[1{A}]", 1, 3, "found a placeholder");
        refused("[\"x\"{A}]", 1, 5, "found a placeholder");
        refused(
            "{A}{B}",
            1,
            4,
            "expected the end of the body after the JSON value",
        );
        refused("[-{A}]", 1, 3, "expected a digit after `-`");
    }

    #[test]
    fn refuses_trailing_commas_and_unclosed_containers() {
        refused("[1, 2, ]", 1, 8, "a trailing comma is not JSON");
        refused("{\"a\": 1, }", 1, 10, "a trailing comma is not JSON");
        refused("[1, 2", 1, 1, "unclosed array: missing `]`");
        refused("{\"a\": [1]", 1, 1, "unclosed object: missing `}`");
        refused("{\"a\": \"x", 1, 7, "unclosed string");
        refused(
            "{\"a\": ",
            1,
            7,
            "expected a value, found the end of the body",
        );
        refused("[1,", 1, 4, "expected a value, found the end of the body");
    }

    #[test]
    fn refuses_bad_numbers() {
        refused("[01]", 1, 3, "leading zero");
        refused("[-007]", 1, 4, "leading zero");
        refused("[1.]", 1, 4, "expected a digit after `.`");
        refused("[.5]", 1, 2, "expected a value, found `.`");
        refused("[1e]", 1, 4, "expected a digit in the exponent");
        refused("[1e+]", 1, 5, "expected a digit in the exponent");
        refused("[+1]", 1, 2, "expected a value, found `+`");
    }

    #[test]
    fn refuses_bad_strings() {
        refused(r#"["a\qb"]"#, 1, 5, "invalid escape `\\q`");
        refused(
            r#"["\u00{X}"]"#,
            1,
            7,
            "`\\u` takes four hex digits, found a placeholder",
        );
        refused(
            r#"["\u12"]"#,
            1,
            7,
            "`\\u` takes four hex digits, found `\"`",
        );
        refused(r#"["\ud800"]"#, 1, 3, "lone high surrogate");
        refused(r#"["\ud800\u0041"]"#, 1, 3, "lone high surrogate");
        refused(r#"["\ud800{X}"]"#, 1, 3, "lone high surrogate");
        refused(r#"["\udc00"]"#, 1, 3, "lone low surrogate");
        refused("[\"a\nb\"]", 1, 4, "a line break in a string");
        refused("[\"a\tb\"]", 1, 4, "a tab in a string");
    }

    #[test]
    fn refuses_a_placeholder_as_a_member_name() {
        // `{K}` could write a number or an object: only a quoted `"{K}"` is a name.
        refused("{ {K}: 1 }", 1, 3, "a member name must be a string");
        refused(
            "{\"a\": 1, {K}: 2}",
            1,
            10,
            "a member name must be a string",
        );
        accepted("{ \"{K}\": 1 }");
    }

    #[test]
    fn refuses_joins_that_are_not_a_whole_array_or_object() {
        let whole = "a join outside a string must be the whole content of [...] or {...}";
        refused(r#"{"skus": {join(items, i, "{i.sku}")}}"#, 1, 10, whole);
        refused(r#"{join(items, i, "{i}")}"#, 1, 1, whole);
        // An empty array would render `[1, ]`.
        refused(r#"[1, {join(items, i, "{i}")}]"#, 1, 5, whole);
        refused(r#"[{join(items, i, "{i}")}, 1]"#, 1, 25, whole);
        refused(
            r#"[{join(items, i, "{i}")} {join(tags, t, "{t}")}]"#,
            1,
            26,
            whole,
        );
        refused(r#"{"a": 1, {join(m, k, "\"{k}\": 1")}}"#, 1, 10, whole);
        // A join as the whole sub-template of another: an element could be empty.
        refused(
            r#"[{join(orders, o, "{join(o.lines, l, "{l}")}")}]"#,
            1,
            20,
            whole,
        );
        refused(r#"[{join(items, i, "{i}")}"#, 1, 1, "unclosed array");
    }

    #[test]
    fn join_elements_are_one_value_or_one_member() {
        refused(
            r#"[{join(items, i, "{i}, {i}")}]"#,
            1,
            22,
            "a join element in an array must be exactly one JSON value: expected the end of the sub-template, found `,`",
        );
        refused(
            r#"[{join(items, i, "")}]"#,
            1,
            19,
            "expected a value, found the end of the join sub-template",
        );
        refused(r#"[{join(items, i, "[{i}")}]"#, 1, 19, "unclosed array");
        refused(
            r#"{ {join(m, k, "{k}")} }"#,
            1,
            16,
            "a member name must be a string",
        );
        refused(
            r#"{ {join(m, k, "\"a\": 1, \"b\": 2")} }"#,
            1,
            24,
            "a join element in an object must be exactly one member",
        );
        refused(
            r#"{ {join(m, k, "\"a\"")} }"#,
            1,
            21,
            "expected `:` after the member name, found the end of the join sub-template",
        );
    }

    #[test]
    fn join_separators_outside_strings_are_commas() {
        refused(
            r#"[{join(items, i, "{i}", ";")}]"#,
            1,
            26,
            "a join in an array needs the separator \",\"",
        );
        refused(
            r#"[{join(items, i, "{i}", "")}]"#,
            1,
            25,
            "needs the separator",
        );
        refused(
            r#"[{join(items, i, "{i}", ",,")}]"#,
            1,
            27,
            "needs the separator",
        );
        refused(
            r#"[{join(items, i, "{i}", "\n")}]"#,
            1,
            26,
            "needs the separator",
        );
        refused(
            r#"{ {join(m, k, "\"{k.name}\": 1", "; ")} }"#,
            1,
            35,
            "a join in an object needs the separator \",\"",
        );
        accepted(r#"[{join(items, i, "{i}", " , ")}]"#);
    }

    #[test]
    fn joins_inside_strings_stay_inside() {
        // Closing and reopening the string keeps the state machine balanced, but the
        // output would be `"xa" "yxb" "y"`.
        refused(r#""{join(a, i, "x\" \"y")}""#, 1, 16, "must stay inside it");
        refused(
            r#""{join(a, i, "{i}", "\", \"")}""#,
            1,
            22,
            "must stay inside it",
        );
        refused(r#""{join(a, i, "\q")}""#, 1, 16, "invalid escape");
        refused(
            "\"{join(a, i, \"{i}\", \"\t\")}\"",
            1,
            22,
            "a tab in a string",
        );
        accepted(r#"{"a": "<{join(tags, t, "[{t}] \\\"{Name}\\\"", "\\n")}>"}"#);
    }

    #[test]
    fn the_documented_examples() {
        // docs/templates.md, "Json bodies are checked".
        for (src, msg) in [
            ("hello {Name}", "expected a value, found `h`"),
            (
                r#"{"a": {A} {B}}"#,
                "expected `,` or `}` after an object member, found a placeholder",
            ),
            (
                "[1, 2, ]",
                "expected a value after `,`, found `]` (a trailing comma is not JSON)",
            ),
            (
                r#"{"skus": {join(items, i, "{i.sku}")}}"#,
                "a join outside a string",
            ),
            (r#"[1, {join(items, i, "{i}")}]"#, "a join outside a string"),
            (
                r#"[{join(items, i, "{i}", "; ")}]"#,
                "a join in an array needs the separator \",\"",
            ),
            (
                r#"[{join(items, i, "{i.a}, {i.b}")}]"#,
                "a join element in an array must be exactly one JSON value",
            ),
            ("{ {Key}: 1 }", "a member name must be a string"),
            ("[007]", "a number cannot have a leading zero"),
            (
                "{'a': 1}",
                "expected a member name, found `'` (JSON strings take double quotes)",
            ),
        ] {
            let e = err(src);
            assert!(e.message.contains(msg), "{src}: {e}");
        }
        for (src, data, want) in [
            (
                r#"{"skus": [{join(items, i, "{i.sku}")}]}"#,
                r#"{"items": [{"sku": "A-1"}, {"sku": "B-2"}]}"#,
                r#"{"skus": ["A-1","B-2"]}"#,
            ),
            (
                r#"{"skus": "{join(items, i, "{i.sku}")}"}"#,
                r#"{"items": [{"sku": "A-1"}, {"sku": "B-2"}]}"#,
                r#"{"skus": "A-1,B-2"}"#,
            ),
            (
                r#"{ {join(props, p, "\"{p.name}\": {p.value}")} }"#,
                r#"{"props": [{"name": "color", "value": "red"}, {"name": "size", "value": 42}]}"#,
                r#"{ "color": "red","size": 42 }"#,
            ),
            (
                r#"{ {join(props, p, "\"{p.name}\": {p.value}")} }"#,
                r#"{"props": []}"#,
                "{  }",
            ),
        ] {
            let t = Template::compile(src, JSON).unwrap();
            let mut out = Vec::new();
            t.render(&Doc::parse(Bytes::from(data)).unwrap(), &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let ok = format!("{}{}", "[".repeat(MAX_NESTING), "]".repeat(MAX_NESTING));
        // (serde_json's own default limit stops just short of this: compile only.)
        assert!(Template::compile(&ok, JSON).is_ok());
        let deep = format!(
            "{}{}",
            "[".repeat(MAX_NESTING + 1),
            "]".repeat(MAX_NESTING + 1)
        );
        let e = err(&deep);
        assert_eq!((e.line, e.column), (1, MAX_NESTING + 1), "{e}");
        assert!(e.message.contains("nest more than 128 deep"), "{e}");
        // Far deeper input is refused without exhausting the stack.
        let e = err(&"[{\"a\": ".repeat(100_000));
        assert!(e.message.contains("nest more than"), "{e}");
    }

    #[test]
    fn the_error_reads_like_the_others() {
        let e = err("{\n  \"skus\": {join(items, i, \"{i.sku}\")}\n}");
        assert_eq!(
            e.to_string(),
            "line 2, column 11: a join outside a string must be the whole content of [...] or {...}\n  \"skus\": {join(items, i, \"{i.sku}\")}\n          ^"
        );
        let e = err("{\"a\": 1,\n \"b\": [1, 2,]}");
        assert_eq!(
            e.to_string(),
            "line 2, column 13: json body is not valid JSON here: expected a value after `,`, found `]` (a trailing comma is not JSON)\n \"b\": [1, 2,]}\n            ^"
        );
    }

    #[test]
    fn other_contexts_are_not_checked() {
        for ctx in [
            Context::Url,
            Context::Header,
            Context::Body(BodyFormat::Xml),
            Context::Body(BodyFormat::Form),
            Context::Body(BodyFormat::Text),
        ] {
            assert!(Template::compile("hello{X}[1,", ctx).is_ok(), "{ctx:?}");
        }
    }
}
