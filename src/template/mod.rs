//! Request templates (SPEC §5): compiled once when an endpoint is created or changed,
//! rendered for every delivery.
//!
//! Layout:
//! - [`doc`]: [`Doc`], the event's `data` object as received (`Bytes`) plus a flat index
//!   of its values; numbers keep their text, strings their escaped form.
//! - [`compile`]: the template parser. `{path}` and `{join(path, var, "sub", "sep")}`
//!   placeholders become parts; the escaping of every placeholder is decided here, from
//!   the [`Context`] (and, for JSON bodies, from whether it stands inside a string literal
//!   of the template).
//! - [`json_check`]: the compile-time check that a json body is valid JSON with each
//!   placeholder read as one value (or string content) and each join as a whole array
//!   or object, so every rendered json body is valid JSON (SPEC §5).
//! - [`render`]: walks the parts into the caller's buffer: literal parts are shared
//!   `Bytes` copied as they are, values are written through the encoder chosen at compile
//!   time. Rendering never fails and does not allocate when `out` has the capacity.
//! - [`escape`]: the byte encoders (URL component, form, XML, header, JSON string).
//! - [`xml_name`]: which characters an XML element name may hold, for the element names
//!   of a default xml body.
//!
//! Data flow: endpoint config → [`Template::compile`] per URL, header value and body;
//! event → [`Doc::parse`] once per event; each delivery → [`Template::render`] into a
//! reused buffer, or [`render_default_body`] when the endpoint has no `body`.

mod compile;
mod doc;
mod escape;
#[cfg(test)]
mod examples;
mod json_check;
#[cfg(test)]
mod proptests;
mod render;
mod xml_name;

use std::sync::Arc;

pub use doc::{Doc, DocError};
pub use render::{render_default_body, Overflow, RenderBudget, MAX_RENDER_STEPS};

/// Where a template's output lands; decides the escaping at compile time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Context {
    /// The endpoint URL: values are percent-encoded as a URL component.
    Url,
    /// A header value: values lose every control character.
    Header,
    /// The request body, in the endpoint's format.
    Body(BodyFormat),
}

/// The endpoint's body `format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFormat {
    Json,
    Xml,
    Form,
    Text,
}

/// A template that does not compile, with the position of the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}\n{}", excerpt_window(.excerpt))]
pub struct TemplateError {
    /// 1-based line in the template source.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    pub message: String,
    /// The offending source line, a newline, and a caret under the column.
    pub excerpt: String,
    /// The part of `message` that quotes the source (a character found, a function's
    /// name), masked with the excerpt when the problem lies in a masked part.
    /// (Byte offsets, start and end.)
    pub(crate) quoted: Option<(u32, u32)>,
}

impl TemplateError {
    /// The same error with the source line in its excerpt masked (`*` for each
    /// character, tabs kept so the caret still points at the column): for templates that
    /// hold secrets, such as an `Authorization` header's, whose errors are printed and
    /// logged.
    pub fn masked(self) -> TemplateError {
        self.masked_with(|source| {
            source
                .chars()
                .map(|c| if c == '\t' { '\t' } else { '*' })
                .collect()
        })
    }

    /// The same error with the source line in its excerpt passed through `mask`, which
    /// must keep every character's column (so the caret still points at the problem):
    /// for templates that hold a secret in part, such as a URL's `?token=…`.
    /// When the problem's own column is masked, so is what the message quotes of it.
    pub fn masked_with(mut self, mask: impl FnOnce(&str) -> String) -> TemplateError {
        if let Some((source, caret)) = self.excerpt.split_once('\n') {
            let masked = mask(source);
            let col = self.column - 1;
            let hidden = source.chars().nth(col) != masked.chars().nth(col);
            if let Some((a, b)) = self.quoted.filter(|_| hidden) {
                let q = a as usize..b as usize;
                let stars = "*".repeat(self.message[q.clone()].chars().count());
                self.message.replace_range(q, &stars);
                self.quoted = None;
            }
            self.excerpt = format!("{masked}\n{caret}");
        }
        self
    }
}

/// Characters of the source line shown on each side of the problem's column; a longer
/// line is cut to them (`…` where cut), so an error in a 900 KB one-line body is not a
/// 900 KB message.
const EXCERPT_SIDE: usize = 70;

/// `excerpt` (a source line, a newline, a caret line) as shown: the source line cut to
/// [`EXCERPT_SIDE`] characters either side of the caret's column, and the caret put
/// under the problem by the columns the characters before it take on a terminal (two
/// for most CJK characters, none for a combining mark). Cut when shown, after any
/// masking, which needs the whole line.
fn excerpt_window(excerpt: &str) -> String {
    let Some((source, caret)) = excerpt.split_once('\n') else {
        return excerpt.to_string();
    };
    let len = source.chars().count();
    // The caret line has one character per source character before the caret.
    let col = caret.chars().count().saturating_sub(1).min(len);
    let (start, end) = if len <= 2 * EXCERPT_SIDE + 20 {
        (0, len)
    } else {
        (
            col.saturating_sub(EXCERPT_SIDE),
            (col + EXCERPT_SIDE).min(len),
        )
    };
    let mut out = String::with_capacity(4 * (end - start) + 2 * (col - start.min(col)) + 8);
    if start > 0 {
        out.push('…');
    }
    out.extend(source.chars().skip(start).take(end - start));
    if end < len {
        out.push('…');
    }
    out.push('\n');
    if start > 0 {
        out.push(' ');
    }
    for c in source.chars().skip(start).take(col.saturating_sub(start)) {
        match c {
            '\t' => out.push('\t'),
            c => {
                let w = unicode_width::UnicodeWidthChar::width(c).unwrap_or(1);
                out.extend(std::iter::repeat_n(' ', w));
            }
        }
    }
    out.push('^');
    out
}

/// A character that would not show in a message (a no-break space looks like a space
/// JSON allows, a zero-width space like nothing), named by its code point: `U+00A0 (a
/// no-break space)`. `None` for ASCII and for characters that show.
pub(crate) fn invisible(c: char) -> Option<String> {
    unseen(c).map(|(what, _)| format!("U+{:04X} ({what})", c as u32))
}

/// [`invisible`]'s name for `c` when it is refused in a URL's or a header's literal
/// text: one that shows as a space or as nothing and has no place in any script's text
/// (a no-break or other Unicode space, a zero-width space, a word joiner, a byte order
/// mark, a filler, a C1 control), so that it is there by a paste. Joiners, direction
/// marks, variation selectors and tag characters are part of emoji and of scripts'
/// text: kept.
pub(crate) fn pasted_blank(c: char) -> Option<String> {
    unseen(c)
        .filter(|&(_, pasted)| pasted)
        .and_then(|_| invisible(c))
}

/// What a character that would not show is, and whether it is only there by a paste.
fn unseen(c: char) -> Option<(&'static str, bool)> {
    Some(match c {
        '\u{a0}' => ("a no-break space", true),
        '\u{202f}' => ("a narrow no-break space", true),
        '\u{3000}' => ("an ideographic space", true),
        '\u{200b}' => ("a zero-width space", true),
        '\u{200c}' => ("a zero-width non-joiner", false),
        '\u{200d}' => ("a zero-width joiner", false),
        '\u{2060}' => ("a word joiner", true),
        '\u{feff}' => ("a byte order mark", true),
        '\u{ad}' => ("a soft hyphen", false),
        '\u{2028}' => ("a line separator", true),
        '\u{2029}' => ("a paragraph separator", true),
        '\u{115f}' | '\u{1160}' | '\u{3164}' | '\u{ffa0}' => ("a Hangul filler", true),
        '\u{2800}' => ("a blank braille pattern", true),
        '\u{34f}' => ("a combining grapheme joiner", false),
        '\u{180e}' => ("an invisible formatting character", true),
        c if c.is_ascii() => return None,
        c if c.is_control() => ("a control character", true),
        c if c.is_whitespace() => ("a space", true),
        '\u{61c}'
        | '\u{200e}'
        | '\u{200f}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2061}'..='\u{2064}'
        | '\u{2066}'..='\u{206f}'
        | '\u{1d173}'..='\u{1d17a}'
        | '\u{e0000}'..='\u{e007f}' => ("an invisible formatting character", false),
        _ => return None,
    })
}

/// A compiled template. Cheap to clone (the parts are shared), `Send + Sync`.
#[derive(Clone, Debug)]
pub struct Template {
    parts: Arc<[compile::Part]>,
    is_static: bool,
    size_hint: usize,
}

impl Template {
    /// Compiles `src` for the place its output lands. Errors carry line, column and an
    /// excerpt with a caret under the problem.
    pub fn compile(src: &str, ctx: Context) -> Result<Template, TemplateError> {
        let (parts, size_hint) = compile::compile(src, ctx)?;
        let is_static = parts.iter().all(|p| matches!(p, compile::Part::Lit(_)));
        Ok(Template {
            parts: parts.into(),
            is_static,
            size_hint,
        })
    }

    /// Appends the rendered text to `out`. A missing data point renders empty (`null`
    /// where a JSON body expects a value). A render past [`MAX_RENDER_STEPS`] stops
    /// there, `out` cut short anywhere (requests use [`Template::render_within`]).
    pub fn render(&self, doc: &Doc, out: &mut Vec<u8>) {
        let _ = self.render_within(doc, out, usize::MAX, &mut RenderBudget::new());
    }

    /// [`Template::render`], stopping with [`Overflow`] once `out` is longer than
    /// `max_len`, or `budget` is spent (what `out` holds then is cut short anywhere).
    /// One budget goes through every template of a request.
    pub fn render_within(
        &self,
        doc: &Doc,
        out: &mut Vec<u8>,
        max_len: usize,
        budget: &mut RenderBudget,
    ) -> Result<(), Overflow> {
        out.reserve(self.size_hint.min(max_len.saturating_sub(out.len())));
        render::render(&self.parts, doc, out, max_len, budget)
    }

    /// True when the template has no placeholder at all: it renders the same bytes for
    /// every event.
    pub fn is_static(&self) -> bool {
        self.is_static
    }

    /// What a template without placeholders renders (its escapes written out, as
    /// `\{` becomes `{`); `None` when it has placeholders.
    pub fn literal(&self) -> Option<Vec<u8>> {
        self.is_static.then(|| {
            self.parts
                .iter()
                .flat_map(|p| match p {
                    compile::Part::Lit(b) => b.iter().copied(),
                    _ => unreachable!("a static template has only literals"),
                })
                .collect()
        })
    }

    /// Number of literal bytes (join sub-templates and separators counted once): a
    /// lower bound for reserving the output buffer.
    pub fn size_hint(&self) -> usize {
        self.size_hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync_clone<T: Send + Sync + Clone>() {}

    #[test]
    fn public_types_are_shareable() {
        assert_send_sync_clone::<Template>();
        assert_send_sync_clone::<Doc>();
        assert_send_sync_clone::<TemplateError>();
        assert_send_sync_clone::<DocError>();
    }

    #[test]
    fn a_long_line_s_error_shows_the_part_around_the_problem() {
        // A 900 KB one-line body with a bad placeholder near its start and one near its
        // end: the message was the whole line and a caret line as long.
        let pad = "x".repeat(900_000);
        for src in [format!("ab{{Bad( {pad}"), format!("{pad}{{Bad(}} tail")] {
            let e = Template::compile(&src, Context::Body(BodyFormat::Text)).unwrap_err();
            let text = e.to_string();
            assert!(text.len() < 400, "{} bytes", text.len());
            let mut lines = text.lines().skip(1);
            let (shown, caret) = (lines.next().unwrap(), lines.next().unwrap());
            // The caret still stands under the problem's character.
            let at = caret.chars().count() - 1;
            assert_eq!(caret.chars().last(), Some('^'), "{caret}");
            assert_eq!(
                shown.chars().nth(at),
                src.chars().nth(e.column - 1),
                "{shown}\n{caret}"
            );
        }
        // A line of ordinary length is shown whole.
        let e = Template::compile("{\"a\": {B(}}", Context::Body(BodyFormat::Json)).unwrap_err();
        assert!(e.to_string().ends_with("{\"a\": {B(}}\n       ^"), "{e}");
    }

    #[test]
    fn the_caret_stands_under_the_problem_on_a_terminal() {
        // CJK characters take two columns, a combining mark none.
        let e = Template::compile(
            "{\"备注说明\": {upper(x)}}",
            Context::Body(BodyFormat::Json),
        )
        .unwrap_err();
        assert_eq!(e.column, 11);
        assert!(
            e.to_string()
                .ends_with("{\"备注说明\": {upper(x)}}\n              ^"),
            "{e}"
        );
        let e = Template::compile("e\u{301} {Bad(", Context::Body(BodyFormat::Text)).unwrap_err();
        assert!(e.to_string().ends_with("\n   ^"), "{e}");
    }

    #[test]
    fn static_flag_and_size_hint() {
        let t = Template::compile("https://partner.example/ping", Context::Url).unwrap();
        assert!(t.is_static());
        assert_eq!(t.size_hint(), "https://partner.example/ping".len());
        let t = Template::compile("https://x.example/?a={A}", Context::Url).unwrap();
        assert!(!t.is_static());
        assert_eq!(t.size_hint(), "https://x.example/?a=".len());
        // `{1}` and `{ A}` are literal text: still static.
        let t = Template::compile("{1} { A} \\{A\\}", Context::Body(BodyFormat::Text)).unwrap();
        assert!(t.is_static());
    }

    #[test]
    fn clones_render_the_same_on_other_threads() {
        let t = Template::compile("{\"id\": {Id}}", Context::Body(BodyFormat::Json)).unwrap();
        let doc = Arc::new(Doc::parse(bytes::Bytes::from_static(b"{\"Id\": 7.50}")).unwrap());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (t, doc) = (t.clone(), Arc::clone(&doc));
                std::thread::spawn(move || {
                    let mut out = Vec::new();
                    t.render(&doc, &mut out);
                    out
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), b"{\"id\": 7.50}");
        }
    }
}
