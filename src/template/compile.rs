//! The template compiler: source text → parts.
//!
//! Grammar (SPEC §5):
//! ```text
//! template    = { literal | escape | placeholder }
//! escape      = "\{" | "\}" | "\\" | "\""          (writes the second character)
//! placeholder = "{" (letter | "_") … "}"           (any other "{" is literal text)
//!             = "{" path "}"
//!             | "{" "join(" path "," var "," string [ "," string ] ")" "}"
//! path        = name { "." segment }               (segment: [A-Za-z0-9_-]+)
//! string      = '"' template-until-unescaped-quote '"'
//! ```
//! A `\` before any other character is a literal backslash. Whitespace is allowed
//! between the arguments of `join`. A sub-template is parsed with the same rules (so
//! nested joins need no extra escaping); a separator is literal text with the escapes.
//!
//! Escaping is decided here. For JSON bodies a small state machine follows the literal
//! output (in a string / after a backslash) across parts; a placeholder inside a string
//! literal is written JSON-string-escaped, anywhere else as a JSON value. A join's
//! sub-template starts in the state of the join and must end in it (as must the
//! separator), so the decision holds for any number of elements. A JSON body is then
//! checked to be valid JSON under those readings ([`super::json_check`]), so it renders
//! valid JSON for any data.

use std::ops::Range;

use bytes::Bytes;

use super::doc::Seg;
use super::{BodyFormat, Context, TemplateError};
use crate::deliver::http1::{is_dot_segment, parse_port};

/// How a placeholder's value is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Esc {
    /// JSON body, outside a string: a JSON value (`null` when missing).
    JsonValue,
    /// JSON body, inside a string literal: escaped string content.
    JsonString,
    Url,
    Header,
    Xml,
    Form,
    Text,
}

/// A data-point reference: from the root of the event data, or from the element bound
/// by an enclosing join (`var` is that join's nesting level).
#[derive(Clone, Debug)]
pub(super) struct Path {
    pub(super) var: Option<u8>,
    pub(super) segs: Box<[Seg]>,
}

#[derive(Clone, Debug)]
pub(super) enum Part {
    Lit(Bytes),
    Value { path: Path, esc: Esc },
    Join(Box<Join>),
}

#[derive(Clone, Debug)]
pub(super) struct Join {
    pub(super) path: Path,
    /// Nesting level the element variable is bound at.
    pub(super) slot: u8,
    pub(super) body: Box<[Part]>,
    pub(super) sep: Bytes,
}

/// Joins nest at most this deep.
pub(super) const MAX_JOIN_DEPTH: usize = 8;

/// Compiles `src`; returns the parts and the number of literal bytes.
pub(super) fn compile(src: &str, ctx: Context) -> Result<(Vec<Part>, usize), TemplateError> {
    let mut c = Compiler {
        src,
        b: src.as_bytes(),
        pos: 0,
        ctx,
        lits: Vec::with_capacity(src.len()),
        lit_at: Vec::with_capacity(src.len()),
        json: Json::default(),
        vars: Vec::new(),
    };
    let ir = c.seq(None)?;
    if ctx == Context::Body(BodyFormat::Json) {
        super::json_check::check(src, &ir, &c.lits, &c.lit_at)
            .map_err(|bad| c.error(bad.at, bad.message))?;
    }
    let templated = ir.iter().any(|p| !matches!(p, Ir::Lit(_)));
    // A URL, and a form body (percent-encoded as a URL's query is), with placeholders.
    let percent_encoded = match ctx {
        Context::Url => Some("request target"),
        Context::Body(BodyFormat::Form) => Some("form encoding"),
        _ => None,
    };
    if let Some(what) = percent_encoded.filter(|_| templated) {
        if let Some(at) = stray_percent(&ir, &c.lits, &c.lit_at) {
            return Err(c.error(
                at,
                format!(
                    "a `%` that two hex digits do not follow: a value after it would \
                     complete the escape (`%2{{x}}` with `F` sends `%2F`, a `/`), and `%zz` \
                     is no valid {what}; write `%25` for a `%` the receiver should get"
                ),
            ));
        }
    }
    if ctx == Context::Url && templated {
        let shape = url_shape_of(&ir, &c.lits, &c.lit_at);
        let join_hash = hash_in_join(&ir, &c.lits, &c.lit_at, false);
        if let Some(at) = placeholder_in_fragment(&shape) {
            // In a join's separator, the placeholder it comes before is the next
            // element's: said as for any `#` in a join's text.
            if join_hash != Some((at, true)) {
                return Err(c.error(
                    at,
                    "a `#` before a placeholder: it starts the URL's fragment, which is never \
                     sent, so what follows would never reach the receiver; write `%23` for a \
                     `#` the receiver should get",
                ));
            }
        }
        if let Some((at, _)) = join_hash {
            return Err(c.error(
                at,
                "a `#` in a join's text: it starts the URL's fragment, which is never \
                 sent, so the elements after the first would never reach the receiver; \
                 write `%23` for a `#` the receiver should get",
            ));
        }
        if let Some((at, bad)) = literal_authority_fault(&shape) {
            let ch = c.char_at(at).to_string();
            return Err(match bad {
                AuthorityFault::NonAscii => c.error_quoting(
                    at,
                    "",
                    &ch,
                    " in the URL's host: a host name beyond ASCII is refused at every \
                     delivery; write an internationalized host name in its ASCII form \
                     (IDNA, `xn--…`)",
                ),
                AuthorityFault::Host => c.error_quoting(
                    at,
                    "",
                    &ch,
                    " in the URL's host: no host name or address holds it, so every \
                     delivery would fail as a malformed URL",
                ),
                AuthorityFault::PortRange => c.error(
                    at,
                    "a port outside 1 to 65535: every delivery would fail as a malformed URL",
                ),
                AuthorityFault::Port => c.error_quoting(
                    at,
                    "",
                    &ch,
                    " in the URL's port: a port is digits, so every delivery would fail as \
                     a malformed URL",
                ),
            });
        }
        if let Some(at) = literal_dot_segment(&shape) {
            return Err(c.error(
                at,
                "a `.` or `..` path segment: a rendered URL's path may have none (receivers \
                 resolve it to another path), so every delivery would fail; write the path \
                 it stands for",
            ));
        }
    }
    let size = c.lits.len();
    let lits = Bytes::from(c.lits);
    Ok((finish(ir, &lits), size))
}

fn finish(ir: Vec<Ir>, lits: &Bytes) -> Vec<Part> {
    ir.into_iter()
        .map(|p| match p {
            Ir::Lit(r) => Part::Lit(lits.slice(r)),
            Ir::Value { path, esc, .. } => Part::Value { path, esc },
            Ir::Join {
                path,
                slot,
                body,
                sep,
                ..
            } => Part::Join(Box::new(Join {
                path,
                slot,
                body: finish(body, lits).into(),
                sep: lits.slice(sep),
            })),
        })
        .collect()
}

/// A URL template as literal bytes with their source offsets, a value as `None`, a join
/// as two elements and its separator (its literal text is the template's too).
type Shape = Vec<Option<(u8, usize)>>;

/// The most entries a shape with every join as two elements may have; a template whose
/// shape would be longer is read with every join as one element. Each nesting level
/// doubles a join's text (eight levels write the innermost 256 times): a 200 KB URL
/// template took 1.8 GB and 5 s to compile, and the 1 MiB the admin API takes would
/// have taken some 12 GB. A URL of ordinary size is far below it.
const MAX_SHAPE: usize = 1 << 20;

/// The shape of a URL template (`ir`): its joins as two elements each, or as one when
/// that shape would be over [`MAX_SHAPE`]. What the compile-time URL checks read; the
/// rendered URL is judged again at each delivery.
fn url_shape_of(ir: &[Ir], lits: &[u8], lit_at: &[usize]) -> Shape {
    let twice = shape_len(ir) <= MAX_SHAPE;
    let mut shape = Vec::new();
    url_shape(ir, lits, lit_at, twice, &mut shape);
    shape
}

/// The length of the shape of `ir` with its joins as two elements (saturating).
fn shape_len(ir: &[Ir]) -> usize {
    ir.iter().fold(0usize, |n, p| {
        n.saturating_add(match p {
            Ir::Lit(r) => r.len(),
            Ir::Value { .. } => 1,
            Ir::Join { body, sep, .. } => {
                shape_len(body).saturating_mul(2).saturating_add(sep.len())
            }
        })
    })
}

/// Appends the shape of `ir` to `out`, every join as two elements and its separator
/// (`twice`), or as one.
fn url_shape(ir: &[Ir], lits: &[u8], lit_at: &[usize], twice: bool, out: &mut Shape) {
    let lit = |r: &Range<usize>| r.clone().map(|i| Some((lits[i], lit_at[i])));
    for p in ir {
        match p {
            Ir::Lit(r) => out.extend(lit(r)),
            Ir::Value { .. } => out.push(None),
            Ir::Join { body, sep, .. } => {
                url_shape(body, lits, lit_at, twice, out);
                if twice {
                    out.extend(lit(sep));
                    url_shape(body, lits, lit_at, twice, out);
                }
            }
        }
    }
}

/// The source offset of a literal `%` in a URL template with placeholders that two hex
/// digits of the same literal text do not follow (a URL without placeholders is the
/// operator's own, sent as written). A value after it would complete the escape with
/// its first characters, so the value would not be one segment or query value as
/// written; and hex digits from a join's text may not be there (an empty array renders
/// none of it).
fn stray_percent(ir: &[Ir], lits: &[u8], lit_at: &[usize]) -> Option<usize> {
    let run = |r: &Range<usize>| {
        let b = &lits[r.clone()];
        let hex = |i: usize| b.get(i).is_some_and(|c| c.is_ascii_hexdigit());
        (0..b.len())
            .find(|&i| b[i] == b'%' && !(hex(i + 1) && hex(i + 2)))
            .map(|i| lit_at[r.start + i])
    };
    ir.iter().find_map(|p| match p {
        Ir::Lit(r) => run(r),
        Ir::Value { .. } => None,
        Ir::Join { body, sep, .. } => stray_percent(body, lits, lit_at).or_else(|| run(sep)),
    })
}

/// The source offset of a path segment of a URL template that is literal text only and
/// reads `.` or `..` ([`is_dot_segment`]): rendered, it is such a segment whatever the
/// values give, since a value never renders a `/` (it is percent-encoded). A value is a
/// segment's text of unknown content, so a segment holding one is not judged here (the
/// rendered URL is, at each delivery). A join's literal text counts as the template's,
/// as rendered for two elements (`{join(a, i, "{i}/../")}` is refused; one that renders
/// such a segment only for some other count of elements is judged per delivery), or
/// for one in a template too large for that ([`MAX_SHAPE`]).
fn literal_dot_segment(shape: &Shape) -> Option<usize> {
    let byte = |i: usize| shape.get(i).copied().flatten().map(|(b, _)| b);
    let scheme_end = (0..shape.len()).find(|&i| {
        byte(i) == Some(b':') && byte(i + 1) == Some(b'/') && byte(i + 2) == Some(b'/')
    })? + 3;
    let is = |i: usize, set: &[u8]| byte(i).is_some_and(|b| set.contains(&b));
    let path_start = (scheme_end..shape.len()).find(|&i| is(i, b"/?#"))?;
    let path_end = (path_start..shape.len())
        .find(|&i| is(i, b"?#"))
        .unwrap_or(shape.len());
    let path = &shape[path_start..path_end];
    path.split(|x| matches!(x, Some((b'/', _))))
        .find_map(|seg| {
            // Up to its first literal `;`: what follows is parameters, whatever values
            // they hold (`..;v={V}`).
            let cut = seg
                .iter()
                .position(|x| matches!(x, Some((b';', _))))
                .unwrap_or(seg.len());
            let text: Option<Vec<u8>> = seg[..cut].iter().map(|x| x.map(|(b, _)| b)).collect();
            let text = text?;
            is_dot_segment(&text).then(|| seg[0].map(|(_, at)| at))?
        })
}

/// What is wrong with a character of a URL template's literal authority
/// ([`literal_authority_fault`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuthorityFault {
    /// A character beyond ASCII in the host (an internationalized name's).
    NonAscii,
    /// A character no host name or address holds (`~`, `%`, `$` …).
    Host,
    /// A character other than a digit in the port.
    Port,
    /// A port of literal digits only that is not one of 1 to 65535.
    PortRange,
}

/// The source offset of the first literal character of the authority (after `://`, up
/// to the first literal `/`, `?` or `#`) of a URL template whose authority holds a
/// placeholder that no rendered URL could send: every delivery would fail as a
/// malformed URL (`https://{Shop}.bücher.example/`, `http://{H}~/`, `http://{H}:80a/`).
/// A value never renders a `/`, `?` or `#` (they are percent-encoded), so the literal
/// ones end the authority whatever the values are. A host holds `A-Z a-z 0-9 . - _`
/// (an address in brackets, hex digits, `:` and `.`), a port digits (and all literal,
/// a number from 1 to 65535). An authority
/// without a placeholder is judged whole when the endpoint is compiled (`parse_url`),
/// and one with a literal `@` is refused there as credentials.
fn literal_authority_fault(shape: &Shape) -> Option<(usize, AuthorityFault)> {
    let byte = |i: usize| shape.get(i).copied().flatten().map(|(b, _)| b);
    let start = (0..shape.len()).find(|&i| {
        byte(i) == Some(b':') && byte(i + 1) == Some(b'/') && byte(i + 2) == Some(b'/')
    })? + 3;
    let end = (start..shape.len())
        .find(|&i| matches!(byte(i), Some(b'/' | b'?' | b'#')))
        .unwrap_or(shape.len());
    let authority = &shape[start..end];
    if !authority.contains(&None) || authority.iter().any(|x| matches!(x, Some((b'@', _)))) {
        return None;
    }
    // The port starts at the first `:` after the host: after the `]` of an address in
    // brackets, else anywhere.
    let bracketed = matches!(authority.first(), Some(Some((b'[', _))));
    let host_end = if bracketed {
        authority
            .iter()
            .position(|x| matches!(x, Some((b']', _))))
            .map_or(authority.len(), |i| i + 1)
    } else {
        0
    };
    let port_at = (host_end..authority.len())
        .find(|&i| matches!(authority[i], Some((b':', _))))
        .unwrap_or(authority.len());
    let fault = authority.iter().enumerate().find_map(|(i, x)| {
        let (b, at) = (*x)?;
        let fault = if i > port_at {
            (!b.is_ascii_digit()).then_some(AuthorityFault::Port)?
        } else if !b.is_ascii() {
            AuthorityFault::NonAscii
        } else if b.is_ascii_alphanumeric()
            || matches!(b, b'.' | b'-' | b'_')
            || i == port_at
            || (bracketed && i < host_end && matches!(b, b':' | b'[' | b']'))
        {
            return None;
        } else {
            AuthorityFault::Host
        };
        Some((at, fault))
    });
    if fault.is_some() {
        return fault;
    }
    // A port all literal digits (the placeholder is in the host) must be one.
    let port = authority.get(port_at + 1..).unwrap_or_default();
    let digits: Option<Vec<u8>> = port.iter().map(|x| x.map(|(b, _)| b)).collect();
    match (digits, port.first()) {
        (Some(digits), Some(&Some((_, at)))) if parse_port(&digits).is_err() => {
            Some((at, AuthorityFault::PortRange))
        }
        _ => None,
    }
}

/// The source offset of a URL template's first literal `#` when a placeholder follows
/// it: the fragment is never sent, so those values would never reach the receiver (a
/// `#` in a join's separator or sub-template cuts the URL off at the second element).
fn placeholder_in_fragment(shape: &Shape) -> Option<usize> {
    let hash = shape.iter().position(|x| matches!(x, Some((b'#', _))))?;
    if shape[hash + 1..].contains(&None) {
        shape[hash].map(|(_, at)| at)
    } else {
        None
    }
}

/// The source offset of the first literal `#` in a join's sub-template or separator
/// (`inside`: `ir` is a join's sub-template). Rendered for two elements, the second comes
/// after it, in the fragment, which is never sent; [`placeholder_in_fragment`] has
/// already refused those with a placeholder after the `#` (but in a separator), this
/// the rest (`{join(a, i, "x", "#")}`). With it, whether it is in a separator.
fn hash_in_join(ir: &[Ir], lits: &[u8], lit_at: &[usize], inside: bool) -> Option<(usize, bool)> {
    let hash = |r: &Range<usize>| r.clone().find(|&i| lits[i] == b'#').map(|i| lit_at[i]);
    ir.iter().find_map(|p| match p {
        Ir::Lit(r) if inside => hash(r).map(|at| (at, false)),
        Ir::Join { body, sep, .. } => {
            hash_in_join(body, lits, lit_at, true).or_else(|| hash(sep).map(|at| (at, true)))
        }
        _ => None,
    })
}

/// A part before the literal bytes are frozen: literal text is a range of
/// `Compiler::lits`. Placeholders keep their source offsets for the json body check.
pub(super) enum Ir {
    Lit(Range<usize>),
    Value {
        path: Path,
        esc: Esc,
        /// Source offset of the `{`.
        at: usize,
    },
    Join {
        path: Path,
        slot: u8,
        body: Vec<Ir>,
        sep: Range<usize>,
        /// Source offset of the `{`.
        at: usize,
        /// Source offset of the `"` that closes the sub-template.
        body_end: usize,
        /// Source offset of the separator's opening `"` (of the `{` for the default).
        sep_at: usize,
    },
}

/// Where the literal output of a JSON template stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Json {
    in_string: bool,
    /// Inside a string, right after a backslash.
    escape: bool,
}

impl Json {
    #[inline]
    fn feed(&mut self, b: u8) {
        if self.in_string {
            if self.escape {
                self.escape = false;
            } else if b == b'\\' {
                self.escape = true;
            } else if b == b'"' {
                self.in_string = false;
            }
        } else if b == b'"' {
            self.in_string = true;
        }
    }
}

struct Compiler<'a> {
    src: &'a str,
    b: &'a [u8],
    pos: usize,
    ctx: Context,
    /// Every literal byte of the template (sub-templates and separators included),
    /// unescaped; frozen into one shared `Bytes` at the end.
    lits: Vec<u8>,
    /// The source offset each byte of `lits` came from (for the json body check).
    lit_at: Vec<usize>,
    json: Json,
    /// Join variables in scope, outermost first.
    vars: Vec<&'a str>,
}

type Res<T> = Result<T, TemplateError>;

/// Said of a non-ASCII letter in a placeholder's name, where it starts or later.
const NAME_IS_ASCII: &str =
    "a data point's name is ASCII letters, digits, `_` and `-`; write `\\{` for a `{` the \
     output should have";

fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_seg(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

impl<'a> Compiler<'a> {
    fn error(&self, at: usize, message: impl Into<String>) -> TemplateError {
        let mut at = at.min(self.src.len());
        while !self.src.is_char_boundary(at) {
            at -= 1;
        }
        let line_start = self.src[..at].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.src[at..].find('\n').map_or(self.src.len(), |i| at + i);
        let text = self.src[line_start..line_end].trim_end_matches('\r');
        let before = &self.src[line_start..at];
        let mut excerpt = String::with_capacity(text.len() * 2 + 2);
        excerpt.push_str(text);
        excerpt.push('\n');
        excerpt.extend(before.chars().map(|c| if c == '\t' { '\t' } else { ' ' }));
        excerpt.push('^');
        TemplateError {
            line: self.src[..line_start].matches('\n').count() + 1,
            column: before.chars().count() + 1,
            message: message.into(),
            excerpt,
            quoted: None,
        }
    }

    /// An error whose message quotes `quoted`, a piece of the source, between
    /// backticks: `before` + `quoted` + `after`.
    fn error_quoting(&self, at: usize, before: &str, quoted: &str, after: &str) -> TemplateError {
        let mut e = self.error(at, format!("{before}`{quoted}`{after}"));
        let start = before.len() + 1;
        e.quoted = Some((start as u32, (start + quoted.len()) as u32));
        e
    }

    /// The character at `at`, for messages.
    fn char_at(&self, at: usize) -> char {
        self.src[at..].chars().next().unwrap_or(' ')
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\r' | b'\n') = self.peek() {
            self.pos += 1;
        }
    }

    /// Appends one literal byte that came from source offset `at`.
    fn lit(&mut self, b: u8, at: usize) -> Res<()> {
        match self.ctx {
            Context::Header if (b < 0x20 && b != b'\t') || b == 0x7f => {
                return Err(self.error(at, "control character in a header template"));
            }
            // A C1 control (U+0080..U+009F, `C2 80`..`C2 9F`): removed from values, so
            // refused in the literal text too.
            Context::Header if (0x80..=0x9f).contains(&b) && at > 0 && self.b[at - 1] == 0xc2 => {
                return Err(self.error(at - 1, "control character in a header template"));
            }
            // Never valid in a URL, whatever the placeholders render: every delivery
            // would fail as a malformed URL.
            Context::Url if b <= b' ' || b == 0x7f => {
                return Err(self.error(at, "whitespace or control character in a URL"));
            }
            // A space or invisible character pasted with the URL or a header's value (a
            // no-break space, a zero-width space) would be sent in every request: a
            // `Bearer\u{a0}token` fails every delivery as a wrong credential.
            Context::Url | Context::Header if b >= 0xc2 => {
                if let Some(named) = super::pasted_blank(self.char_at(at)) {
                    let place = match self.ctx {
                        Context::Url => "a URL",
                        _ => "a header template",
                    };
                    return Err(self.error(at, format!("{named} in {place}")));
                }
            }
            Context::Body(BodyFormat::Json) => self.json.feed(b),
            _ => {}
        }
        self.lits.push(b);
        self.lit_at.push(at);
        Ok(())
    }

    /// Parses literal text and placeholders up to the end of the source (`sub` = None)
    /// or up to the unescaped `"` that closes a join sub-template opened at `sub`.
    fn seq(&mut self, sub: Option<usize>) -> Res<Vec<Ir>> {
        let mut parts = Vec::new();
        let mut lit_start = self.lits.len();
        loop {
            let Some(c) = self.peek() else {
                if let Some(open) = sub {
                    return Err(
                        self.error(open, "unclosed join sub-template: missing the closing `\"`")
                    );
                }
                break;
            };
            match c {
                b'"' if sub.is_some() => break,
                b'\\' => match self.b.get(self.pos + 1) {
                    Some(&e @ (b'{' | b'}' | b'\\' | b'"')) => {
                        self.lit(e, self.pos)?;
                        self.pos += 2;
                    }
                    _ => {
                        self.lit(b'\\', self.pos)?;
                        self.pos += 1;
                    }
                },
                // SPEC §5: a letter after `{` opens a placeholder. A name is ASCII, so
                // one opened by another letter (`{Übertrag}`) is refused, as the same
                // letter later in a name is, not sent as text.
                b'{' if self.src[self.pos + 1..]
                    .chars()
                    .next()
                    .is_some_and(|c| !c.is_ascii() && c.is_alphabetic()) =>
                {
                    return Err(self.error(self.pos + 1, NAME_IS_ASCII));
                }
                b'{' if self.b.get(self.pos + 1).is_some_and(|&b| is_name_start(b)) => {
                    if self.lits.len() > lit_start {
                        parts.push(Ir::Lit(lit_start..self.lits.len()));
                    }
                    parts.push(self.placeholder()?);
                    lit_start = self.lits.len();
                }
                _ => {
                    self.lit(c, self.pos)?;
                    self.pos += 1;
                }
            }
        }
        if self.lits.len() > lit_start {
            parts.push(Ir::Lit(lit_start..self.lits.len()));
        }
        Ok(parts)
    }

    /// The escaping of a placeholder that opens at `open`.
    fn esc_here(&self, open: usize) -> Res<Esc> {
        Ok(match self.ctx {
            Context::Url => Esc::Url,
            Context::Header => Esc::Header,
            Context::Body(BodyFormat::Json) if self.json.escape => {
                return Err(self.error(
                    open,
                    "a placeholder cannot follow a `\\` that starts a JSON escape \
                     (a backslash in the output is written `\\\\\\\\` in the template)",
                ));
            }
            Context::Body(BodyFormat::Json) if self.json.in_string => Esc::JsonString,
            Context::Body(BodyFormat::Json) => Esc::JsonValue,
            Context::Body(BodyFormat::Xml) => Esc::Xml,
            Context::Body(BodyFormat::Form) => Esc::Form,
            Context::Body(BodyFormat::Text) => Esc::Text,
        })
    }

    /// `[A-Za-z0-9_-]*` at `pos`.
    fn segment(&mut self) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(is_seg) {
            self.pos += 1;
        }
        &self.src[start..self.pos]
    }

    /// A dotted path whose first character (a letter or `_`) is at `pos`.
    fn path_segments(&mut self) -> Res<Vec<&'a str>> {
        let mut segs = vec![self.segment()];
        while self.peek() == Some(b'.') {
            self.pos += 1;
            let at = self.pos;
            let s = self.segment();
            if s.is_empty() {
                return Err(self.error(at, "expected a field name after `.`"));
            }
            segs.push(s);
        }
        Ok(segs)
    }

    fn resolve(&self, segs: &[&str]) -> Path {
        match self.vars.iter().rposition(|v| *v == segs[0]) {
            Some(slot) => Path {
                var: Some(slot as u8),
                segs: segs[1..].iter().map(|s| Seg::new(s)).collect(),
            },
            None => Path {
                var: None,
                segs: segs.iter().map(|s| Seg::new(s)).collect(),
            },
        }
    }

    fn expect_close(&mut self, open: usize, what: &str) -> Res<()> {
        match self.peek() {
            Some(b'}') => {
                self.pos += 1;
                Ok(())
            }
            None => Err(self.error(open, "unclosed placeholder: missing `}`")),
            Some(_) => {
                let c = self.char_at(self.pos);
                let after_name = self.pos > 0 && is_seg(self.b[self.pos - 1]);
                if after_name && !c.is_ascii() && c.is_alphabetic() {
                    return Err(self.error(self.pos, NAME_IS_ASCII));
                }
                Err(self.error_found(
                    self.pos,
                    &format!("expected {what}`}}` to close the placeholder, found "),
                ))
            }
        }
    }

    /// An error at `at` whose message ends in the character found there: quoted, or
    /// named by its code point when it would not show (a no-break space).
    fn error_found(&self, at: usize, before: &str) -> TemplateError {
        let c = self.char_at(at);
        match super::invisible(c) {
            Some(named) => self.error(at, format!("{before}{named}")),
            None => self.error_quoting(at, before, &c.to_string(), ""),
        }
    }

    /// A placeholder whose `{` is at `pos` (followed by a letter or `_`).
    fn placeholder(&mut self) -> Res<Ir> {
        let open = self.pos;
        let esc = self.esc_here(open)?;
        self.pos += 1;
        let name_at = self.pos;
        let segs = self.path_segments()?;
        if self.peek() == Some(b'(') {
            if segs.len() > 1 || segs[0] != "join" {
                return Err(self.error_quoting(
                    name_at,
                    "unknown function ",
                    &segs.join("."),
                    " (the only function is `join`)",
                ));
            }
            self.pos += 1;
            return self.join(open);
        }
        let what = if segs.len() == 1 {
            "`.`, `(` or "
        } else {
            "`.` or "
        };
        self.expect_close(open, what)?;
        Ok(Ir::Value {
            path: self.resolve(&segs),
            esc,
            at: open,
        })
    }

    fn expect_comma(&mut self, after: &str) -> Res<()> {
        self.skip_ws();
        if self.peek() != Some(b',') {
            return Err(self.error(self.pos, format!("join: expected `,` after {after}")));
        }
        self.pos += 1;
        self.skip_ws();
        Ok(())
    }

    /// Checks that a sub-template or separator ended in the JSON state it started in.
    fn json_balanced(&self, start: Json, at: usize, what: &str) -> Res<()> {
        if self.json == start {
            return Ok(());
        }
        let msg = if self.json.escape {
            format!("the join {what} ends with a `\\` that starts a JSON escape")
        } else if self.json.in_string {
            format!(
                "the join {what} leaves a JSON string open (it must end outside a string, \
                 where the join stands)"
            )
        } else {
            format!(
                "the join {what} closes the JSON string the join stands in (it must end \
                 inside it)"
            )
        };
        Err(self.error(at, msg))
    }

    /// `join(` has been read; `open` is the placeholder's `{`.
    fn join(&mut self, open: usize) -> Res<Ir> {
        self.skip_ws();
        if !self.peek().is_some_and(is_name_start) {
            return Err(self.error(
                self.pos,
                "join: expected the path of an array as the first argument",
            ));
        }
        let segs = self.path_segments()?;
        let path = self.resolve(&segs);
        self.expect_comma("the array path")?;

        let var_at = self.pos;
        if !self.peek().is_some_and(is_name_start) {
            return Err(self.error(
                var_at,
                "join: expected a variable name as the second argument",
            ));
        }
        while self
            .peek()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            self.pos += 1;
        }
        let var = &self.src[var_at..self.pos];
        self.expect_comma("the variable name")?;

        if self.peek() != Some(b'"') {
            return Err(self.error(
                self.pos,
                "join: expected the sub-template as a quoted string",
            ));
        }
        if self.vars.len() >= MAX_JOIN_DEPTH {
            return Err(self.error(
                open,
                format!("joins are nested more than {MAX_JOIN_DEPTH} deep"),
            ));
        }
        let sub_open = self.pos;
        self.pos += 1;
        let slot = self.vars.len() as u8;
        let start = self.json;
        self.vars.push(var);
        let body = self.seq(Some(sub_open))?;
        self.vars.pop();
        self.json_balanced(start, self.pos, "sub-template")?;
        let body_end = self.pos;
        self.pos += 1;

        self.skip_ws();
        let mut sep_at = open;
        let sep = if self.peek() == Some(b',') {
            self.pos += 1;
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.error(self.pos, "join: expected the separator as a quoted string"));
            }
            sep_at = self.pos;
            let sep = self.separator()?;
            self.json_balanced(start, self.pos - 1, "separator")?;
            self.skip_ws();
            sep
        } else {
            let at = self.lits.len();
            self.lits.push(b',');
            self.lit_at.push(open);
            at..at + 1
        };
        match self.peek() {
            Some(b')') => self.pos += 1,
            None => return Err(self.error(open, "unclosed join: missing `)`")),
            Some(_) => {
                return Err(self.error_found(
                    self.pos,
                    "join: expected `)` after the last argument, found ",
                ))
            }
        }
        self.expect_close(open, "")?;
        Ok(Ir::Join {
            path,
            slot,
            body,
            sep,
            at: open,
            body_end,
            sep_at,
        })
    }

    /// A quoted separator at `pos`: literal text with the four escapes.
    fn separator(&mut self) -> Res<Range<usize>> {
        let open = self.pos;
        self.pos += 1;
        let start = self.lits.len();
        loop {
            match self.peek() {
                None => {
                    return Err(
                        self.error(open, "unclosed separator string: missing the closing `\"`")
                    )
                }
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(start..self.lits.len());
                }
                Some(b'\\') => match self.b.get(self.pos + 1) {
                    Some(&e @ (b'{' | b'}' | b'\\' | b'"')) => {
                        self.lit(e, self.pos)?;
                        self.pos += 2;
                    }
                    _ => {
                        self.lit(b'\\', self.pos)?;
                        self.pos += 1;
                    }
                },
                Some(c) => {
                    self.lit(c, self.pos)?;
                    self.pos += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{BodyFormat, Context, Template, TemplateError};

    const JSON: Context = Context::Body(BodyFormat::Json);
    const TEXT: Context = Context::Body(BodyFormat::Text);

    fn err(src: &str, ctx: Context) -> TemplateError {
        match Template::compile(src, ctx) {
            Ok(_) => panic!("{src:?} compiled"),
            Err(e) => e,
        }
    }

    #[track_caller]
    fn assert_err(src: &str, ctx: Context, line: usize, column: usize, msg: &str) {
        let e = err(src, ctx);
        assert_eq!((e.line, e.column), (line, column), "{src:?}: {e}");
        assert!(
            e.message.contains(msg),
            "{src:?}: {:?} lacks {msg:?}",
            e.message
        );
    }

    #[test]
    fn unclosed_placeholder_points_at_its_brace() {
        assert_err("abc {OrderId", TEXT, 1, 5, "unclosed placeholder");
        assert_err("{a.b", TEXT, 1, 1, "unclosed placeholder");
    }

    #[test]
    fn bad_character_in_placeholder() {
        assert_err("x={Order Id}", TEXT, 1, 9, "found ` `");
        assert_err("{a.}", TEXT, 1, 4, "expected a field name after `.`");
        assert_err("{a.b(x)}", TEXT, 1, 2, "unknown function `a.b`");
        // `{` before a letter opens a placeholder (SPEC §5), a non-ASCII one too: the
        // name is refused where it starts, as it is when such a letter comes later
        // (`{é}` was sent as text, `{Wäh}` refused).
        assert_err("?u={Übertrag}", TEXT, 1, 5, "a data point's name is ASCII");
        assert_err("{é}", TEXT, 1, 2, "write `\\{` for a `{`");
        assert_err("?w={Währung}", TEXT, 1, 6, "a data point's name is ASCII");
        // After a join's `)` it is only a character found.
        assert_err("{join(a, i, \"x\")ä}", TEXT, 1, 17, "found `ä`");
        // One that would not show is named.
        assert_err("{Id\u{a0}}", TEXT, 1, 4, "found U+00A0 (a no-break space)");
        // Other characters after `{` open nothing: digits, symbols, combining marks.
        assert!(Template::compile("{1é} {€} {\u{301}}", TEXT)
            .unwrap()
            .is_static());
    }

    #[test]
    fn unknown_function_names_it_on_the_right_line() {
        let src = "{\n  \"a\": {upper(Name)}\n}";
        let e = err(src, JSON);
        assert_eq!((e.line, e.column), (2, 9));
        assert_eq!(
            e.message,
            "unknown function `upper` (the only function is `join`)"
        );
        assert_eq!(e.excerpt, "  \"a\": {upper(Name)}\n        ^");
        assert_eq!(
            e.to_string(),
            "line 2, column 9: unknown function `upper` (the only function is `join`)\n  \"a\": {upper(Name)}\n        ^"
        );
    }

    #[test]
    fn a_literal_dot_segment_in_a_rendered_url_is_refused() {
        const URL: Context = Context::Url;
        let msg = "a `.` or `..` path segment";
        assert_err("http://h/a/../b/{A}", URL, 1, 12, msg);
        assert_err("http://h/a/..?x={A}", URL, 1, 12, msg);
        assert_err("http://h/./x/{A}", URL, 1, 10, msg);
        assert_err("http://{H}/%2e%2E/x", URL, 1, 12, msg);
        assert_err("http://h/{A}/..", URL, 1, 14, msg);
        assert_err("http://h/{join(a, i, \"{i}\", \"/\")}/./", URL, 1, 35, msg);
        // Within a join's literal text (as rendered for two elements).
        assert_err("http://h/{join(l, i, \"{i}/../\")}end", URL, 1, 27, msg);
        assert_err("http://h/{join(l, i, \"..\", \"/\")}/c", URL, 1, 23, msg);
        // A segment with a placeholder in it, dots in the query or within a segment,
        // a join that puts what follows in the query: judged per delivery, or no dot
        // segment at all.
        assert_urls_compile(&[
            "http://h/a/..{A}/b",
            "http://h/{A}../b",
            "http://h/a/...?b={A}",
            "http://h/a/.x/{A}",
            "http://h/a?x=/../&y={A}",
            "http://h/a/{A}#/../",
            "http://h/{join(a, i, \"/..{i}\")}",
            "http://h/{join(a, i, \"?x={i}\", \"&\")}/../",
            // A URL without placeholders is sent as written.
            "http://h/a/../b",
        ]);
        // With `;parameters`, as receivers that drop them before resolving see it.
        assert_err("http://h/p/..;v=1/{A}", URL, 1, 12, msg);
        assert_err("http://h/p/..;v={V}/x", URL, 1, 12, msg);
        assert_urls_compile(&[
            "http://h/p/{A};..",
            "http://h/p/..{A};x",
            "http://h/p/;..{A}",
        ]);
    }

    /// The shape the URL checks walk for `src`, a URL template.
    fn shape_of(src: &str) -> super::Shape {
        let mut c = super::Compiler {
            src,
            b: src.as_bytes(),
            pos: 0,
            ctx: Context::Url,
            lits: Vec::new(),
            lit_at: Vec::new(),
            json: super::Json::default(),
            vars: Vec::new(),
        };
        let ir = c.seq(None).unwrap();
        super::url_shape_of(&ir, &c.lits, &c.lit_at)
    }

    #[test]
    fn nested_joins_in_a_url_do_not_multiply_what_compiling_takes() {
        // Each join's text is written twice into the shape the URL checks walk, so
        // eight nested joins wrote the innermost text 256 times: a 200 KB URL template
        // took 1.8 GB and 5 s to compile, the 1 MiB the admin API takes some 12 GB.
        let nested = |inner: &str| {
            let mut src = inner.to_string();
            for d in 0..8 {
                src = format!("{{join(a, v{d}, \"{src}\")}}");
            }
            format!("http://h/p/{src}")
        };
        let big = nested(&format!("{{x}}{}", "a".repeat(20_000)));
        assert!(shape_of(&big).len() <= super::MAX_SHAPE);
        // Its literal dot segments are still refused, as rendered for one element.
        let pad = "a".repeat(20_000);
        let dots = nested(&format!("{pad}/../{{x}}"));
        let col = dots.find("/../").unwrap() + 2;
        assert_err(&dots, Context::Url, 1, col, "a `.` or `..` path segment");
        // A template of ordinary size keeps the two-element reading: `x`, `/`, `x`.
        assert_eq!(
            shape_of("http://h/{join(a, i, \"x\", \"/\")}").len(),
            "http://h/x/x".len()
        );
    }

    #[test]
    fn a_percent_no_two_hex_digits_follow_is_refused_in_a_templated_url() {
        for (src, col) in [
            ("http://h/files/%2{x}", 16),
            ("http://h/p?q=%{y}", 14),
            ("http://h/p?q=%zz&v={v}", 14),
            ("http://h/{p}?q=100%", 19),
            (r#"http://h/?a={join(xs, x, "{x}%", ",")}"#, 30),
            // Hex digits from a join's text: an empty array renders none of them.
            (r#"http://h/?a=%{join(xs, x, "41", "")}{y}"#, 13),
        ] {
            assert_err(
                src,
                Context::Url,
                1,
                col,
                "a `%` that two hex digits do not follow",
            );
        }
        for ok in [
            "http://h/a%20b/{p}?q=%2F{x}",
            "http://h/%7e%7E?x={x}",
            // Without placeholders: the operator's own, sent as written.
            "http://h/p?q=100%",
        ] {
            assert!(Template::compile(ok, Context::Url).is_ok(), "{ok}");
        }
    }

    #[test]
    fn a_percent_no_two_hex_digits_follow_is_refused_in_a_templated_form_body() {
        const FORM: Context = Context::Body(BodyFormat::Form);
        for (src, col) in [("path=%2{x}", 6), ("a=%zz&b={x}", 3), ("a={x}%", 6)] {
            assert_err(src, FORM, 1, col, "a `%` that two hex digits do not follow");
        }
        for ok in ["a=%2F&b={x}", "a=100%"] {
            assert!(Template::compile(ok, FORM).is_ok(), "{ok}");
        }
    }

    #[test]
    fn a_placeholder_in_a_url_s_fragment_is_refused() {
        const URL: Context = Context::Url;
        let msg = "a `#` before a placeholder";
        assert_err("http://h/pb#{Oid}", URL, 1, 12, msg);
        assert_err("http://h/pb?a={A}#x&b={B}", URL, 1, 18, msg);
        // A join's separator: the second element would be cut off, and all after it
        // (said as for any `#` in a join's text: the placeholder it comes before is the
        // next element's).
        assert_err(
            "http://h/pb?skus={join(items, i, \"{i}\", \"#\")}&oid={Oid}",
            URL,
            1,
            42,
            "a `#` in a join's text",
        );
        assert_err("http://h/{join(a, i, \"#{i}\")}", URL, 1, 23, msg);
        // A `#` in a join's text with no placeholder after it: the elements after the
        // first are in the fragment all the same.
        let msg = "a `#` in a join's text";
        assert_err(
            "http://h/p?x={A}&s={join(a, i, \"x\", \"#\")}",
            URL,
            1,
            38,
            msg,
        );
        assert_err("http://h/p?x={A}&s={join(a, i, \"x#\")}", URL, 1, 34, msg);
        // A fragment after every placeholder is never sent and loses nothing; `%23` is a
        // `#` the receiver gets.
        assert_urls_compile(&[
            "http://h/pb?a={A}#top",
            "http://h/pb?a={A}%23{B}",
            "http://h/pb#frag",
        ]);
    }

    /// Literal text in the host or port of a URL whose authority has a placeholder that
    /// no host or port holds: every delivery failed at once as a malformed URL while
    /// `check` said ok (an internationalized name's letters beside a placeholder,
    /// `https://{S}.bücher.example/`, among them), where the same authority without a
    /// placeholder is refused.
    #[test]
    fn a_templated_authority_no_host_or_port_could_hold_is_refused() {
        const URL: Context = Context::Url;
        let host = "in the URL's host: no host name or address holds it, so every delivery \
                    would fail as a malformed URL";
        let port =
            "in the URL's port: a port is digits, so every delivery would fail as a malformed URL";
        for (url, column, msg) in [
            (
                "https://{S}.bücher.example/hook",
                14,
                "`ü` in the URL's host: a host name beyond ASCII is refused at every \
                 delivery; write an internationalized host name in its ASCII form (IDNA, \
                 `xn--…`)"
                    .to_string(),
            ),
            ("http://{S}.example~/x", 19, format!("`~` {host}")),
            ("http://{S}$.example/x", 11, format!("`$` {host}")),
            ("http://{S}%41.example/x", 11, format!("`%` {host}")),
            ("http://x{S}[::1]/", 12, format!("`[` {host}")),
            ("http://{S}.example:80a/?q={Q}", 22, format!("`a` {port}")),
            ("http://{S}:80:81/", 14, format!("`:` {port}")),
            ("http://[fd00::{N}]:8x/", 21, format!("`x` {port}")),
            ("http://h:{P}x/{A}", 13, format!("`x` {port}")),
            (
                "http://{H}.example:99999/",
                20,
                "a port outside 1 to 65535".to_string(),
            ),
            ("http://{H}:0/", 12, "a port outside 1 to 65535".to_string()),
        ] {
            assert_err(url, URL, 1, column, &msg);
        }
        assert_urls_compile(&[
            "http://{S}.example.com:8080/x",
            "http://{S}-1_a.example.com.:/x",
            "http://{H}:{P}0/x",
            "http://{H}:00080/x",
            "http://{H}:65535/x",
            "http://h:{P}/x",
            "http://[fd00::{N}]:8080/x",
            "http://{H}",
            "http://{H}?q=~$",
            "http://{H}#~",
            "http://{join(hs, h, \"{h}\", \".\")}.example/",
            // Without a placeholder in the authority: judged whole by `parse_url` when
            // the endpoint compiles, with its own words.
            "http://bücher.example/{P}",
            "http://h:80a/{P}",
            // Credentials: refused by the endpoint's check, as such.
            "http://{U}:{P}@h/",
        ]);
    }

    fn assert_urls_compile(urls: &[&str]) {
        for url in urls {
            Template::compile(url, Context::Url).unwrap_or_else(|e| panic!("{url:?}: {e}"));
        }
    }

    #[test]
    fn a_space_or_invisible_character_pasted_into_a_url_is_refused() {
        for (url, named) in [
            (
                "http://h/pb?oid={OrderId}\u{a0}",
                "U+00A0 (a no-break space)",
            ),
            (
                "http://h/pb?oid={\u{200b}OrderId}",
                "U+200B (a zero-width space)",
            ),
            ("http://h/pb\u{3000}?a={A}", "U+3000 (an ideographic space)"),
            ("\u{feff}http://h/pb", "U+FEFF (a byte order mark)"),
        ] {
            let e = err(url, Context::Url);
            assert_eq!(e.message, format!("{named} in a URL"), "{url:?}");
            let at = url
                .find(|c: char| super::super::invisible(c).is_some())
                .unwrap();
            assert_eq!(e.column, url[..at].chars().count() + 1, "{url:?}");
        }
        // Other non-ASCII text is sent percent-encoded, as before.
        assert_urls_compile(&["http://h/café?q={Q}&w=€"]);
        // In a header's value too (pasted into a credential, it fails every delivery).
        let e = err("Bearer\u{a0}{Token}", Context::Header);
        assert_eq!(e.message, "U+00A0 (a no-break space) in a header template");
        assert_eq!(e.column, 7);
        assert!(Template::compile("Grüße {Name} ❤\u{fe0f}", Context::Header).is_ok());
        // Joiners are emoji's and scripts' own text: kept, in a header and in a URL.
        for text in ["👨\u{200d}👩\u{200d}👧 {Name}", "می\u{200c}خواهم {Name}"] {
            assert!(Template::compile(text, Context::Header).is_ok(), "{text}");
            let url = format!("http://h/{text}").replace(' ', "/");
            assert!(Template::compile(&url, Context::Url).is_ok(), "{url}");
        }
        // Named as what they are.
        for (c, named) in [
            ('\u{85}', "U+0085 (a control character)"),
            ('\u{3164}', "U+3164 (a Hangul filler)"),
            ('\u{e0020}', "U+E0020 (an invisible formatting character)"),
        ] {
            assert_eq!(super::super::invisible(c).as_deref(), Some(named));
        }
    }

    #[test]
    fn column_counts_characters_and_caret_keeps_tabs() {
        let e = err("é\t{x", TEXT);
        assert_eq!((e.line, e.column), (1, 3));
        assert_eq!(e.excerpt, "é\t{x\n \t^");
        let e = err("a\r\nb {x", TEXT);
        assert_eq!((e.line, e.column), (2, 3));
        assert_eq!(e.excerpt, "b {x\n  ^");
    }

    #[test]
    fn bad_join_syntax() {
        assert_err("{join(}", TEXT, 1, 7, "first argument");
        assert_err(
            "http://h/x y?a={A}",
            Context::Url,
            1,
            11,
            "whitespace or control",
        );
        assert_err(
            "http://h/x?a={A}\t",
            Context::Url,
            1,
            17,
            "whitespace or control",
        );
        assert_err(
            "{join(items i, \"x\")}",
            TEXT,
            1,
            13,
            "`,` after the array path",
        );
        assert_err("{join(items, 1, \"x\")}", TEXT, 1, 14, "variable name");
        assert_err(
            "{join(items, i \"x\")}",
            TEXT,
            1,
            16,
            "`,` after the variable name",
        );
        assert_err(
            "{join(items, i, x)}",
            TEXT,
            1,
            17,
            "sub-template as a quoted string",
        );
        assert_err(
            "{join(items, i, \"{i}",
            TEXT,
            1,
            17,
            "unclosed join sub-template",
        );
        assert_err(
            "{join(items, i, \"{i}\", x)}",
            TEXT,
            1,
            24,
            "separator as a quoted string",
        );
        assert_err(
            "{join(items, i, \"{i}\", \";)}",
            TEXT,
            1,
            24,
            "unclosed separator",
        );
        assert_err(
            "{join(items, i, \"{i}\", \";\", \"x\")}",
            TEXT,
            1,
            27,
            "expected `)`",
        );
        assert_err("{join(items, i, \"{i}\"", TEXT, 1, 1, "unclosed join");
        assert_err(
            "{join(items, i, \"{i}\")",
            TEXT,
            1,
            1,
            "unclosed placeholder",
        );
        assert_err("{join(items, i, \"{i}\") }", TEXT, 1, 23, "found ` `");
        assert_err(
            "{join(items, i, \"{i.}\")}",
            TEXT,
            1,
            21,
            "field name after `.`",
        );
        assert_err(
            "{join(items, i, \"{nope(i)}\")}",
            TEXT,
            1,
            19,
            "unknown function `nope`",
        );
    }

    #[test]
    fn join_arguments_may_span_lines() {
        let src = "[{join(items, i, \n  \"\\{\\\"sku\\\":\\\"{i.sku}\\\"\\}\"\n  , \",\n \"\n)}]";
        assert!(Template::compile(src, JSON).is_ok());
        let e = err("[{join(items, i,\n  \"{i}\"\n  ; )}]", JSON);
        assert_eq!((e.line, e.column), (3, 3));
    }

    #[test]
    fn joins_nest_eight_deep_at_most() {
        let mut src = String::from("{x}");
        for d in 0..8 {
            src = format!("{{join(a, v{d}, \"{src}\")}}");
        }
        // Eight levels: the sub-templates nest without extra escaping.
        assert!(Template::compile(&src, TEXT).is_ok(), "{src}");
        let nine = format!("{{join(a, v9, \"{src}\")}}");
        let e = err(&nine, TEXT);
        assert!(e.message.contains("nested more than 8 deep"), "{e}");
    }

    #[test]
    fn json_placeholder_after_a_pending_backslash_is_refused() {
        // `\\` writes one backslash: inside a JSON string it would escape the value.
        assert_err("{\"a\": \"x\\\\{v}\"}", JSON, 1, 11, "follow a `\\`");
        // Outside JSON it is fine.
        assert!(Template::compile("x\\\\{v}", TEXT).is_ok());
        // `\\\\` writes two backslashes: a complete JSON escape.
        assert!(Template::compile("{\"a\": \"x\\\\\\\\{v}\"}", JSON).is_ok());
    }

    #[test]
    fn json_join_must_keep_its_string_state() {
        assert_err(
            "[{join(a, i, \"\\\"{i}\")}]",
            JSON,
            1,
            20,
            "leaves a JSON string open",
        );
        assert_err(
            "\"{join(a, i, \"{i}\\\"\")}\"",
            JSON,
            1,
            20,
            "closes the JSON string",
        );
        assert_err(
            "[{join(a, i, \"{i}\", \"\\\"\")}]",
            JSON,
            1,
            24,
            "separator leaves a JSON string open",
        );
        // Inside a string, a quoted separator would close it; a plain one is fine.
        assert!(Template::compile("\"{join(a, i, \"{i}\", \" | \")}\"", JSON).is_ok());
        // The same sub-templates are fine outside JSON.
        assert!(Template::compile("[{join(a, i, \"\\\"{i}\")}]", TEXT).is_ok());
    }

    #[test]
    fn header_literal_must_not_hold_control_characters() {
        assert_err(
            "Bearer x\r\nX-Evil: 1",
            Context::Header,
            1,
            9,
            "control character",
        );
        assert!(Template::compile("Bearer\t{Token}", Context::Header).is_ok());
        assert_err("é\u{85}x", Context::Header, 1, 2, "control character");
        // `C2 A1` is no C1 control (a no-break space, `C2 A0`, is refused as invisible).
        assert!(Template::compile("é\u{a1}\u{100}{Token}", Context::Header).is_ok());
    }
}
