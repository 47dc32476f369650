//! Rendering: compiled parts + [`Doc`] → bytes appended to the caller's buffer.
//!
//! Nothing here allocates: literal parts are copied from shared `Bytes`, values are
//! looked up in the document's index and written through the encoder the compiler
//! chose, the join variables and look-up hints live on the stack.

use super::compile::{Esc, Part, Path, MAX_JOIN_DEPTH};
use super::doc::{unescape_chunks, Doc, Hints, Kind, NO_HINTS};
use super::escape;
use super::xml_name::{is_name_char, is_name_start};
use super::BodyFormat;

struct Cx {
    /// The element each enclosing join has bound, by nesting level.
    vars: [u32; MAX_JOIN_DEPTH],
    hints: Hints,
    /// The longest `out` may grow.
    max_len: usize,
    /// What the render may still take, in eighths of a step ([`RenderBudget`]).
    left: usize,
}

/// The most steps one request's renders may take, its URL, headers and body together:
/// a step is a part a join's element renders, or eight members or elements passed while
/// data points are looked up (a comparison costs about an eighth of a part). About
/// 50 ms of a worker at worst. The output's length bounds the work of parts that write;
/// this bounds the rest. Joins nested over one array
/// (`{join(items, i, "{join(items, j, …)}", …)}`) render n² (up to n⁸) parts, most
/// writing nothing when a data point is missing: 30,000 elements took 11 s with an
/// empty body, the worker's ingest and deliveries stopped meanwhile; and a look-up
/// passes every member of a large object when the key is missing. A join over every
/// element of the largest event (a 1 MiB line holds at most ~500,000) with 8 parts each
/// stays within it.
pub const MAX_RENDER_STEPS: usize = 1 << 22;

/// What one request's renders may still take ([`MAX_RENDER_STEPS`] to begin with):
/// passed to each of its templates in turn. Kept in eighths of a step, the cost of a
/// member or element passed in a look-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenderBudget(usize);

/// A part a join's element renders, in eighths of a step.
const PART: usize = 8;

impl RenderBudget {
    pub fn new() -> RenderBudget {
        RenderBudget::steps(MAX_RENDER_STEPS)
    }

    /// A budget of `n` steps.
    pub const fn steps(n: usize) -> RenderBudget {
        RenderBudget(n * PART)
    }

    /// The steps left, a part of one counting whole.
    #[cfg(test)]
    pub fn steps_left(&self) -> usize {
        self.0.div_ceil(PART)
    }
}

impl Default for RenderBudget {
    fn default() -> RenderBudget {
        RenderBudget::new()
    }
}

/// Why a render stopped ([`render`]): a request that would not be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// `out` would have grown past the length allowed.
    Length,
    /// The request's renders would have taken more than [`MAX_RENDER_STEPS`] steps.
    Work,
}

/// Appends the rendering to `out`, stopping with [`Overflow`] as soon as `out` is
/// longer than `max_len` (a join over a long array can multiply an event's size: each
/// element may read a large top-level field, so the check runs after every part, not
/// once at the end), or once `budget` is spent.
pub(super) fn render(
    parts: &[Part],
    doc: &Doc,
    out: &mut Vec<u8>,
    max_len: usize,
    budget: &mut RenderBudget,
) -> Result<(), Overflow> {
    let mut cx = Cx {
        vars: [Doc::ROOT; MAX_JOIN_DEPTH],
        hints: NO_HINTS,
        max_len,
        left: budget.0,
    };
    let result = parts_into(parts, doc, &mut cx, out);
    budget.0 = cx.left;
    result
}

/// Takes `eighths` of a step from what is left.
#[inline]
fn spend(cx: &mut Cx, eighths: usize) -> Result<(), Overflow> {
    cx.left = cx.left.checked_sub(eighths).ok_or(Overflow::Work)?;
    Ok(())
}

fn parts_into(parts: &[Part], doc: &Doc, cx: &mut Cx, out: &mut Vec<u8>) -> Result<(), Overflow> {
    for part in parts {
        match part {
            Part::Lit(b) => out.extend_from_slice(b),
            Part::Value { path, esc } => {
                let node = resolve(path, doc, cx)?;
                value(doc, node, *esc, out);
            }
            Part::Join(j) => {
                let Some(arr) = resolve(&j.path, doc, cx)? else {
                    continue;
                };
                if doc.node(arr).kind != Kind::Array {
                    continue;
                }
                for (k, el) in doc.children(arr).enumerate() {
                    // At least one per element: a body of nothing costs its loop too.
                    spend(cx, PART * j.body.len().max(1))?;
                    if k > 0 {
                        out.extend_from_slice(&j.sep);
                    }
                    cx.vars[usize::from(j.slot)] = el;
                    parts_into(&j.body, doc, cx, out)?;
                }
            }
        }
        if out.len() > cx.max_len {
            return Err(Overflow::Length);
        }
    }
    Ok(())
}

/// The node `path` names (`None`: missing), an eighth of a step spent per member or
/// element its look-up passed.
#[inline]
fn resolve(path: &Path, doc: &Doc, cx: &mut Cx) -> Result<Option<u32>, Overflow> {
    let mut visited = 0;
    let found = lookup(path, doc, cx, &mut visited);
    spend(cx, visited)?;
    Ok(found)
}

#[inline]
fn lookup(path: &Path, doc: &Doc, cx: &mut Cx, visited: &mut usize) -> Option<u32> {
    let mut cur = match path.var {
        None => Doc::ROOT,
        Some(slot) => cx.vars[usize::from(slot)],
    };
    for seg in path.segs.iter() {
        cur = match doc.node(cur).kind {
            Kind::Object => doc.member(cur, seg, &mut cx.hints, visited)?,
            Kind::Array => doc.nth(cur, seg.index?, visited)?,
            _ => return None,
        };
    }
    Some(cur)
}

type Encoder = fn(&[u8], &mut Vec<u8>);

fn text(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(s);
}

/// Writes one value (`None` = missing) the way `esc` says.
fn value(doc: &Doc, node: Option<u32>, esc: Esc, out: &mut Vec<u8>) {
    let Some(i) = node else {
        if esc == Esc::JsonValue {
            out.extend_from_slice(b"null");
        }
        return;
    };
    let n = doc.node(i);
    let raw = doc.text(n);
    let enc: Encoder = match esc {
        Esc::JsonValue => {
            // Strings keep their escaped form, numbers their text, containers their
            // JSON: all valid JSON already (Doc::parse checked).
            if n.kind == Kind::String {
                out.push(b'"');
                out.extend_from_slice(raw);
                out.push(b'"');
            } else {
                out.extend_from_slice(raw);
            }
            return;
        }
        Esc::JsonString => {
            match n.kind {
                Kind::Null => {}
                Kind::Array | Kind::Object => escape::json_string(raw, out),
                _ => out.extend_from_slice(raw),
            }
            return;
        }
        Esc::Url => escape::url,
        Esc::Header => escape::header,
        Esc::Xml => escape::xml,
        Esc::Form => escape::form,
        Esc::Text => text,
    };
    match n.kind {
        Kind::Null => {}
        Kind::String if Doc::is_escaped(n) => unescape_chunks(raw, |c| enc(c, out)),
        _ => enc(raw, out),
    }
}

/// The request body for an endpoint without a `body` template (SPEC §4):
/// - json and text: the event's `data` exactly as received;
/// - form: the top-level scalar members, `key=value` joined by `&`, both form-encoded
///   (null gives an empty value);
/// - xml: `<event>` with one element per top-level scalar member, named after the key
///   (characters an XML name cannot hold become `_`), the value XML-escaped.
///
/// Objects and arrays are left out of form and xml bodies.
pub fn render_default_body(format: BodyFormat, doc: &Doc, out: &mut Vec<u8>) {
    match format {
        BodyFormat::Json | BodyFormat::Text => out.extend_from_slice(doc.raw()),
        BodyFormat::Form => {
            let mut first = true;
            for c in doc.children(Doc::ROOT) {
                let n = doc.node(c);
                if matches!(n.kind, Kind::Array | Kind::Object) {
                    continue;
                }
                if !first {
                    out.push(b'&');
                }
                first = false;
                doc.key_chunks(n, |k| escape::form(k, out));
                out.push(b'=');
                value(doc, Some(c), Esc::Form, out);
            }
        }
        BodyFormat::Xml => {
            out.extend_from_slice(b"<event>");
            for c in doc.children(Doc::ROOT) {
                let n = doc.node(c);
                if matches!(n.kind, Kind::Array | Kind::Object) {
                    continue;
                }
                out.push(b'<');
                xml_name(doc, c, out);
                out.push(b'>');
                value(doc, Some(c), Esc::Xml, out);
                out.extend_from_slice(b"</");
                xml_name(doc, c, out);
                out.push(b'>');
            }
            out.extend_from_slice(b"</event>");
        }
    }
}

/// The member's key as an XML element name (XML 1.0 fourth edition `Name`, without `:`:
/// [`xml_name`](super::xml_name)): characters a name cannot hold become `_`, and a name
/// that would not start with a letter or `_` gets a leading `_`.
fn xml_name(doc: &Doc, c: u32, out: &mut Vec<u8>) {
    let start = out.len();
    doc.key_chunks(doc.node(c), |k| out.extend_from_slice(k));
    if out[start..].is_ascii() {
        for b in &mut out[start..] {
            if !(b.is_ascii_alphanumeric() || matches!(*b, b'_' | b'-' | b'.')) {
                *b = b'_';
            }
        }
    } else {
        let key = String::from_utf8_lossy(&out[start..]).into_owned();
        out.truncate(start);
        let mut buf = [0; 4];
        for ch in key.chars() {
            let ch = if is_name_char(ch) { ch } else { '_' };
            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
        }
    }
    let first = std::str::from_utf8(&out[start..])
        .ok()
        .and_then(|s| s.chars().next());
    if !first.is_some_and(is_name_start) {
        out.insert(start, b'_');
    }
}

#[cfg(test)]
mod tests {
    use super::super::{BodyFormat, Context, Doc, Template};
    use super::{Overflow, RenderBudget, MAX_RENDER_STEPS};
    use bytes::Bytes;

    const JSON: Context = Context::Body(BodyFormat::Json);
    const XML: Context = Context::Body(BodyFormat::Xml);
    const FORM: Context = Context::Body(BodyFormat::Form);
    const TEXT: Context = Context::Body(BodyFormat::Text);

    fn doc(s: &str) -> Doc {
        Doc::parse(Bytes::copy_from_slice(s.as_bytes())).unwrap()
    }

    #[track_caller]
    fn render(src: &str, ctx: Context, data: &str) -> String {
        let t = Template::compile(src, ctx).unwrap_or_else(|e| panic!("{e}"));
        let mut out = Vec::new();
        t.render(&doc(data), &mut out);
        String::from_utf8(out).unwrap()
    }

    const DATA: &str = r#"{
        "Id": 554433, "Amount": 250.00, "Neg": -1.50e3, "Ok": true, "No": false, "Nil": null,
        "Name": "Tom \"T\" O'Neil & <Co>\n", "Path": "a/b c?d", "Uni": "caf\u00e9 \u2028",
        "Customer": {"City": "San Francisco", "Zip": "94105"},
        "items": [{"sku": "A-1", "qty": 2, "amt": 10.50}, {"sku": "B\"2", "qty": 1, "amt": 5}],
        "tags": ["x", "y,z"], "Empty": [], "Obj": {"k": [1, "v"]}
    }"#;

    #[test]
    fn brace_rule_and_escapes() {
        assert_eq!(
            render("{ Id} {1} {\"a\"} } {Id}", TEXT, DATA),
            "{ Id} {1} {\"a\"} } 554433"
        );
        assert_eq!(
            render(r#"\{Id\} \\ \" \n \x"#, TEXT, DATA),
            r#"{Id} \ " \n \x"#
        );
        assert_eq!(render(r"\\{Id}", TEXT, DATA), r"\554433");
        assert_eq!(render(r"\{{Id}\}", TEXT, DATA), "{554433}");
        assert_eq!(
            render("{_x}|{x-y}|{1é}", TEXT, r#"{"_x":1,"x-y":2}"#),
            "1|2|{1é}"
        );
        // A non-ASCII letter opens a placeholder too, whose name is refused.
        assert!(Template::compile("{é}", TEXT).is_err());
    }

    #[test]
    fn numbers_keep_their_text_everywhere() {
        assert_eq!(render("{Amount} {Neg}", TEXT, DATA), "250.00 -1.50e3");
        assert_eq!(
            render("{\"a\": {Amount}, \"s\": \"{Amount}\"}", JSON, DATA),
            r#"{"a": 250.00, "s": "250.00"}"#
        );
        assert_eq!(render("a={Amount}", Context::Url, DATA), "a=250.00");
        assert_eq!(render("<a>{Neg}</a>", XML, DATA), "<a>-1.50e3</a>");
    }

    #[test]
    fn paths_reach_nested_fields_and_indexes() {
        assert_eq!(
            render(
                "{Customer.City}/{items.1.sku}/{tags.1}/{Obj.k.1}",
                TEXT,
                DATA
            ),
            "San Francisco/B\"2/y,z/v"
        );
        assert_eq!(
            render("[{items.5.sku}][{Customer.City.x}][{Id.0}]", TEXT, DATA),
            "[][][]"
        );
    }

    #[test]
    fn missing_and_null_render_empty_or_json_null() {
        assert_eq!(
            render("a={Nope}&b={Nil}&c={Customer.Nope}", Context::Url, DATA),
            "a=&b=&c="
        );
        assert_eq!(render("[{Nope}|{Nil}]", TEXT, DATA), "[|]");
        assert_eq!(render("X-{Nope}", Context::Header, DATA), "X-");
        assert_eq!(
            render(
                "{\"a\": {Nope}, \"b\": {Nil}, \"c\": \"{Nope}\", \"d\": \"x{Nil}y\"}",
                JSON,
                DATA
            ),
            r#"{"a": null, "b": null, "c": "", "d": "xy"}"#
        );
    }

    #[test]
    fn json_values_outside_strings() {
        assert_eq!(
            render(
                "[{Id},{Name},{Ok},{No},{Customer},{tags},{Empty},{Uni}]",
                JSON,
                DATA
            ),
            r#"[554433,"Tom \"T\" O'Neil & <Co>\n",true,false,{"City": "San Francisco", "Zip": "94105"},["x", "y,z"],[],"caf\u00e9 \u2028"]"#
        );
    }

    #[test]
    fn json_values_inside_strings() {
        let out = render(
            "{\"n\": \"{Name}\", \"i\": \"#{Id}\", \"b\": \"{Ok}\", \"o\": \"{Obj}\", \"{Path}\": 1}",
            JSON,
            DATA,
        );
        assert_eq!(
            out,
            r##"{"n": "Tom \"T\" O'Neil & <Co>\n", "i": "#554433", "b": "true", "o": "{\"k\": [1, \"v\"]}", "a/b c?d": 1}"##
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["o"], "{\"k\": [1, \"v\"]}");
        assert_eq!(v["n"], "Tom \"T\" O'Neil & <Co>\n");
    }

    #[test]
    fn json_string_state_follows_template_escapes() {
        // `\"` in the template is a quote in the output: it opens and closes strings.
        assert_eq!(
            render("[\\\"{Id}\\\", {Id}]", JSON, DATA),
            "[\"554433\", 554433]"
        );
        // A JSON escape `\\\"` (written `\\\\\\"` in the template) does not end the string.
        assert_eq!(
            render("\"a\\\\\\\" {Name}\"", JSON, DATA),
            "\"a\\\" Tom \\\"T\\\" O'Neil & <Co>\\n\""
        );
        // Two strings in a row: the second placeholder is back outside.
        assert_eq!(render("[\"{Id}\",{Id}]", JSON, DATA), "[\"554433\",554433]");
    }

    #[test]
    fn url_encodes_values_not_literals() {
        assert_eq!(
            render("https://p.example/x/{Path}?n={Name}&u={Uni}&c={Customer.City}", Context::Url, DATA),
            "https://p.example/x/a%2Fb%20c%3Fd?n=Tom%20%22T%22%20O%27Neil%20%26%20%3CCo%3E%0A&u=caf%C3%A9%20%E2%80%A8&c=San%20Francisco"
        );
    }

    #[test]
    fn header_strips_control_characters() {
        assert_eq!(
            render("v={Name}", Context::Header, DATA),
            "v=Tom \"T\" O'Neil & <Co>"
        );
        assert_eq!(
            render(
                "{X}",
                Context::Header,
                r#"{"X":"a\r\nSet-Cookie: x=1\u0000\t\u0085b"}"#
            ),
            "aSet-Cookie: x=1b"
        );
    }

    #[test]
    fn xml_form_text_bodies() {
        assert_eq!(render("<n a=\"{Name}\">{Name}</n>", XML, DATA), "<n a=\"Tom &quot;T&quot; O&apos;Neil &amp; &lt;Co&gt;&#10;\">Tom &quot;T&quot; O&apos;Neil &amp; &lt;Co&gt;&#10;</n>");
        assert_eq!(
            render("n={Name}&p={Path}&u={Uni}", FORM, DATA),
            "n=Tom+%22T%22+O%27Neil+%26+%3CCo%3E%0A&p=a%2Fb+c%3Fd&u=caf%C3%A9+%E2%80%A8"
        );
        assert_eq!(
            render("{Name}|{Uni}|{Obj}", TEXT, DATA),
            "Tom \"T\" O'Neil & <Co>\n|café \u{2028}|{\"k\": [1, \"v\"]}"
        );
    }

    #[test]
    fn join_renders_each_element_with_separator() {
        let src = r#"{"items": [{join(items, i, "\{\"sku\":\"{i.sku}\",\"qty\":{i.qty},\"amt\":{i.amt},\"id\":{Id}\}")}]}"#;
        let out = render(src, JSON, DATA);
        assert_eq!(
            out,
            r#"{"items": [{"sku":"A-1","qty":2,"amt":10.50,"id":554433},{"sku":"B\"2","qty":1,"amt":5,"id":554433}]}"#
        );
        assert_eq!(
            render("{join(tags, t, \"<{t}>\", \"; \")}", TEXT, DATA),
            "<x>; <y,z>"
        );
        assert_eq!(
            render("s={join(tags, t, \"{t}\")}", Context::Url, DATA),
            "s=x,y%2Cz"
        );
        assert_eq!(
            render("[{join(items, i, \"{i.sku}\")}]", JSON, DATA),
            r#"["A-1","B\"2"]"#
        );
        assert_eq!(
            render("\"{join(items, i, \"{i.sku}\", \" \")}\"", JSON, DATA),
            r#""A-1 B\"2""#
        );
        // Missing, empty, null and non-array values join nothing.
        for p in ["Nope", "Empty", "Nil", "Id", "Customer"] {
            assert_eq!(
                render(&format!("[{{join({p}, i, \"{{i}}\")}}]"), JSON, DATA),
                "[]",
                "{p}"
            );
        }
        // Missing field of an element: null in a JSON value position.
        assert_eq!(
            render("[{join(items, i, \"{i.nope}\")}]", JSON, DATA),
            "[null,null]"
        );
    }

    #[test]
    fn nested_joins_scope_and_shadow() {
        let data = r#"{"Id": 1, "i": "root-i", "orders": [
            {"Id": 10, "lines": [{"sku": "a"}, {"sku": "b"}]},
            {"Id": 20, "lines": [{"sku": "c"}]},
            {"Id": 30, "lines": []}
        ]}"#;
        let src = "{join(orders, o, \"{o.Id}:{join(o.lines, l, \"{l.sku}@{o.Id}/{Id}\", \"+\")}\", \" | \")}";
        assert_eq!(
            render(src, TEXT, data),
            "10:a@10/1+b@10/1 | 20:c@20/1 | 30:"
        );
        // The inner `i` shadows the outer one; outside its join, `i` is the data's `i`.
        let src = "{join(orders, i, \"{join(i.lines, i, \"{i.sku}\")}/{i.Id}\", \" \")} {i}";
        assert_eq!(render(src, TEXT, data), "a,b/10 c/20 /30 root-i");
        // `{var}` reads a scalar element itself.
        assert_eq!(
            render(
                "{join(xs, x, \"[{x}]\", \"\")}",
                TEXT,
                r#"{"xs":[1,"two",null,true]}"#
            ),
            "[1][two][][true]"
        );
    }

    /// Joins nested over one array render n² parts, writing nothing when the data point
    /// they read is missing: the output's length bounds none of that work, the render
    /// budget does. A long join that writes stays within it.
    #[test]
    fn joins_nested_over_one_array_stop_at_the_render_budget() {
        let items = |n: usize| format!(r#"{{"items":[{}]}}"#, vec!["0"; n].join(","));
        let within = |t: &Template, d: &Doc, out: &mut Vec<u8>| {
            t.render_within(d, out, usize::MAX, &mut RenderBudget::new())
        };
        let nested = Template::compile(
            r#"{join(items, i, "{join(items, j, "{nothing}", "")}", "")}"#,
            TEXT,
        )
        .unwrap();
        let mut out = Vec::new();
        // 30,000² = 900 million parts (11 s unbounded): stopped after the budget.
        let d = doc(&items(30_000));
        assert_eq!(within(&nested, &d, &mut out), Err(Overflow::Work));
        assert!(out.is_empty());
        // 1,000² = 1 million: within it.
        let d = doc(&items(1_000));
        assert_eq!(within(&nested, &d, &mut out), Ok(()));
        // One join over 500,000 elements, 8 parts each: 4 million, within it.
        let long = Template::compile(r#"{join(items, i, "{i}{i}{i}{i}{i}{i}{i}{i}", ",")}"#, TEXT)
            .unwrap();
        let d = doc(&items(500_000));
        out.clear();
        assert_eq!(within(&long, &d, &mut out), Ok(()));
        assert_eq!(out.len(), 500_000 * 9 - 1);
    }

    /// A look-up passes members until it finds its key, every one when the key is
    /// missing: a top-level field missing from a large object, read for every element of
    /// a join, is as much work as nested joins, and counts against the same budget. A
    /// field that is there is found again at once.
    #[test]
    fn look_ups_count_against_the_render_budget() {
        let keys: Vec<String> = (0..20_000).map(|k| format!(r#""k{k}":0"#)).collect();
        let data = format!(
            r#"{{{},"Oid":"o","items":[{}]}}"#,
            keys.join(","),
            vec!["0"; 20_000].join(",")
        );
        let d = doc(&data);
        let mut out = Vec::new();
        let mut budget = RenderBudget::new();
        let missing = Template::compile(r#"{join(items, i, "{i}:{Nope}")}"#, TEXT).unwrap();
        // 20,000 elements × 20,002 members passed: 50 million steps.
        assert_eq!(
            missing.render_within(&d, &mut out, usize::MAX, &mut budget),
            Err(Overflow::Work)
        );
        // The last member, read for every element: found where the last look-up did.
        let there = Template::compile(r#"{join(items, i, "{i}:{Oid}")}"#, TEXT).unwrap();
        let mut budget = RenderBudget::new();
        out.clear();
        assert_eq!(
            there.render_within(&d, &mut out, usize::MAX, &mut budget),
            Ok(())
        );
        let spent = MAX_RENDER_STEPS - budget.steps_left();
        // Per element: its 3 parts, `i` (no look-up), `Oid` (1 member compared, an
        // eighth of a step); and the first `Oid` and `items` look-ups pass the object
        // once each.
        assert!(
            spent <= 20_000 * 3 + (20_000 + 2 * 20_002) / 8 + 10,
            "{spent} steps"
        );
        // Two fields of a 1,000-member object read by turns for 5,000 elements: each
        // look-up passes the object (the hint keeps one member), 10 million members,
        // 1.25 million steps: within it (R2: refused when a member was a step).
        let attrs: Vec<String> = (0..1_000).map(|k| format!(r#""a{k}":{k}"#)).collect();
        let d = doc(&format!(
            r#"{{"p":{{{}}},"items":[{}]}}"#,
            attrs.join(","),
            vec!["0"; 5_000].join(",")
        ));
        let turns = Template::compile(r#"{join(items, i, "{p.a999}:{p.a0}")}"#, TEXT).unwrap();
        out.clear();
        assert_eq!(
            turns.render_within(&d, &mut out, usize::MAX, &mut RenderBudget::new()),
            Ok(())
        );
        // One budget goes through the templates of a request: what one spent, the next
        // has not.
        let three = Template::compile(r#"{join(xs, x, "{x}")}"#, TEXT).unwrap();
        let d = doc(r#"{"xs":[1,2,3]}"#);
        let mut small = RenderBudget::steps(5);
        assert_eq!(
            three.render_within(&d, &mut out, usize::MAX, &mut small),
            Ok(())
        );
        assert_eq!(small.steps_left(), 2);
        assert_eq!(
            three.render_within(&d, &mut out, usize::MAX, &mut small),
            Err(Overflow::Work)
        );
    }

    #[test]
    fn join_inside_json_string_escapes_elements() {
        let out = render(
            "{\"all\": \"{join(tags, t, \"{t}\\\\n\", \"\")}\"}",
            JSON,
            r#"{"tags":["a\"b", "c\\d"]}"#,
        );
        assert_eq!(out, r#"{"all": "a\"b\nc\\d\n"}"#);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["all"], "a\"b\nc\\d\n");
    }

    #[test]
    fn render_appends_and_reuses_the_buffer() {
        let t = Template::compile("{Id};", TEXT).unwrap();
        let d = doc(DATA);
        let mut out = b"x".to_vec();
        t.render(&d, &mut out);
        t.render(&d, &mut out);
        assert_eq!(out, b"x554433;554433;");
    }

    #[test]
    fn default_bodies() {
        let d = doc(
            r#" {"Id":1, "Name":"a b&c", "Nil":null, "Ok":true, "obj":{"x":1}, "arr":[1],
                       "1st":"<x>", "a b":"é", "Id":2} "#,
        );
        let mut out = Vec::new();
        super::render_default_body(BodyFormat::Json, &d, &mut out);
        assert_eq!(out, d.raw().as_ref());
        out.clear();
        super::render_default_body(BodyFormat::Text, &d, &mut out);
        assert_eq!(out, d.raw().as_ref());
        out.clear();
        super::render_default_body(BodyFormat::Form, &d, &mut out);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "Name=a+b%26c&Nil=&Ok=true&1st=%3Cx%3E&a+b=%C3%A9&Id=2"
        );
        out.clear();
        super::render_default_body(BodyFormat::Xml, &d, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<event><Name>a b&amp;c</Name><Nil></Nil><Ok>true</Ok><_1st>&lt;x&gt;</_1st><a_b>é</a_b><Id>2</Id></event>"
        );
    }

    #[test]
    fn default_xml_names_hold_only_what_an_xml_name_may() {
        // No-break and ideographic spaces, `×`, `;` (U+037E), an arrow, NEL, a line
        // separator, an emoji, a joiner, `‿`: none is kept. `·` and a combining mark
        // are, but may not start a name. CJK, accented letters and `·` inside stay.
        let d = doc(
            r#"{"Kunden\u00a0Nr":1, "订单\u3000号":2, "Preis×Menge":3, "a\u037eb":4,
                "x←y":5, "n\u0085l":6, "l\u2028s":7, "·a":8, "\u0301b":9, "‿c":10,
                "Straße·Nr":11, "ключ":12, "":13, "a:b":14, "\ud83d\ude00x":15, "a\u200db":16}"#,
        );
        let mut out = Vec::new();
        super::render_default_body(BodyFormat::Xml, &d, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<event><Kunden_Nr>1</Kunden_Nr><订单_号>2</订单_号><Preis_Menge>3</Preis_Menge>\
             <a_b>4</a_b><x_y>5</x_y><n_l>6</n_l><l_s>7</l_s><_·a>8</_·a><_\u{301}b>9</_\u{301}b>\
             <_c>10</_c><Straße·Nr>11</Straße·Nr><ключ>12</ключ><_>13</_><a_b>14</a_b>\
             <_x>15</_x><a_b>16</a_b></event>"
        );
    }

    /// Letters that Unicode added after 2.0 (Ethiopic, Myanmar, Khmer, halfwidth
    /// katakana, `ſ`, `ǅ`, `ʰ`, `ℵ`, CJK beyond the BMP) are no name characters to a
    /// parser on the XML 1.0 fourth edition's tables (expat, so Python's; Xerces-J), nor
    /// a vowel sign or `ー` at a name's start: each made the whole body refused
    /// (`not well-formed (invalid token)`, checked with Python's expat).
    #[test]
    fn default_xml_names_hold_only_what_the_fourth_edition_allows() {
        let d = doc(
            r#"{"ስም":1, "ｱｲ":2, "ſ":3, "ǅx":4, "aʰ":5, "ℵ":6, "\ud840\udc00x":7,
                "ा":8, "ーx":9, "x々ー":10, "x٣":11, "ユーザー":12, "名前":13, "Ω":14}"#,
        );
        let mut out = Vec::new();
        super::render_default_body(BodyFormat::Xml, &d, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<event><__>1</__><__>2</__><_>3</_><_x>4</_x><a_>5</a_><_>6</_><_x>7</_x>\
             <_ा>8</_ा><_ーx>9</_ーx><x々ー>10</x々ー><x٣>11</x٣><ユーザー>12</ユーザー>\
             <名前>13</名前><Ω>14</Ω></event>"
        );
    }
}
