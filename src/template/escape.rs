//! Byte-level encoders, one per place a value can land. Each takes UTF-8 text (whole
//! characters) and appends its encoded form; none allocates beyond `out`'s growth.

const HEX: &[u8; 16] = b"0123456789ABCDEF";

const fn table(extra: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric();
        c += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
}

/// RFC 3986 unreserved characters: kept as they are in a URL component.
static URL_KEEP: [bool; 256] = table(b"-._~");
/// The application/x-www-form-urlencoded byte set of the WHATWG URL standard.
static FORM_KEEP: [bool; 256] = table(b"*-._");

#[inline]
fn percent(b: u8, out: &mut Vec<u8>) {
    out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
}

/// Percent-encodes everything but the RFC 3986 unreserved characters, so the value is
/// one URL component wherever it stands (path segment, query key or value, fragment).
pub(super) fn url(s: &[u8], out: &mut Vec<u8>) {
    let mut run = 0;
    for (i, &b) in s.iter().enumerate() {
        if !URL_KEEP[usize::from(b)] {
            out.extend_from_slice(&s[run..i]);
            percent(b, out);
            run = i + 1;
        }
    }
    out.extend_from_slice(&s[run..]);
}

/// application/x-www-form-urlencoded: space becomes `+`, bytes outside `*-._` and
/// alphanumerics are percent-encoded.
pub(super) fn form(s: &[u8], out: &mut Vec<u8>) {
    let mut run = 0;
    for (i, &b) in s.iter().enumerate() {
        if !FORM_KEEP[usize::from(b)] {
            out.extend_from_slice(&s[run..i]);
            if b == b' ' {
                out.push(b'+');
            } else {
                percent(b, out);
            }
            run = i + 1;
        }
    }
    out.extend_from_slice(&s[run..]);
}

/// XML character data and attribute values: the five special characters become entity
/// references, CR, LF and tab character references (a parser would otherwise normalise
/// them, to LF in text and to spaces in an attribute value), and what XML 1.0 cannot
/// represent at all (the other C0 controls, U+FFFE, U+FFFF) is dropped.
pub(super) fn xml(s: &[u8], out: &mut Vec<u8>) {
    let mut run = 0;
    let mut i = 0;
    while i < s.len() {
        let (rep, len): (&[u8], usize) = match s[i] {
            b'&' => (b"&amp;", 1),
            b'<' => (b"&lt;", 1),
            b'>' => (b"&gt;", 1),
            b'"' => (b"&quot;", 1),
            b'\'' => (b"&apos;", 1),
            // As references, so an attribute value keeps them (a parser normalises
            // literal ones to spaces there).
            b'\r' => (b"&#13;", 1),
            b'\n' => (b"&#10;", 1),
            b'\t' => (b"&#9;", 1),
            0..=0x1f => (b"", 1),
            // U+FFFE and U+FFFF are no XML characters either.
            0xef if s.get(i + 1) == Some(&0xbf) && matches!(s.get(i + 2), Some(0xbe | 0xbf)) => {
                (b"", 3)
            }
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&s[run..i]);
        out.extend_from_slice(rep);
        i += len;
        run = i;
    }
    out.extend_from_slice(&s[run..]);
}

/// Header field value: the text with every control character removed (C0 including CR,
/// LF and tab, DEL, and the C1 range U+0080..U+009F), so no value can end the header
/// line or smuggle another one.
pub(super) fn header(s: &[u8], out: &mut Vec<u8>) {
    let mut run = 0;
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        let skip = match b {
            0..=0x1f | 0x7f => 1,
            0xc2 if matches!(s.get(i + 1), Some(0x80..=0x9f)) => 2,
            _ => 0,
        };
        if skip == 0 {
            i += 1;
            continue;
        }
        out.extend_from_slice(&s[run..i]);
        i += skip;
        run = i;
    }
    out.extend_from_slice(&s[run..]);
}

/// JSON string content: `"` and `\` are escaped, control characters become `\n`-style
/// or `\u00XX` escapes. The output is valid between two quotes.
pub(super) fn json_string(s: &[u8], out: &mut Vec<u8>) {
    let mut run = 0;
    for (i, &b) in s.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&s[run..i]);
        if short.is_empty() {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]);
        } else {
            out.extend_from_slice(short);
        }
        run = i + 1;
    }
    out.extend_from_slice(&s[run..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(f: fn(&[u8], &mut Vec<u8>), s: &str) -> String {
        let mut out = b"pre|".to_vec();
        f(s.as_bytes(), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn url_keeps_only_unreserved() {
        assert_eq!(run(url, "aZ09-._~"), "pre|aZ09-._~");
        assert_eq!(
            run(url, "a b&c=d/e?f#g+h%"),
            "pre|a%20b%26c%3Dd%2Fe%3Ff%23g%2Bh%25"
        );
        assert_eq!(run(url, "é\n"), "pre|%C3%A9%0A");
    }

    #[test]
    fn form_uses_plus_for_space() {
        assert_eq!(run(form, "a b*c~d&e=é"), "pre|a+b*c%7Ed%26e%3D%C3%A9");
    }

    #[test]
    fn xml_escapes_and_drops_what_xml_cannot_hold() {
        assert_eq!(
            run(
                xml,
                "<a href=\"x\">Tom & Jerry's</a>\r\n\t\u{1}\u{8}\u{fffe}\u{ffff}\u{fffd}é"
            ),
            "pre|&lt;a href=&quot;x&quot;&gt;Tom &amp; Jerry&apos;s&lt;/a&gt;&#13;&#10;&#9;\u{fffd}é"
        );
    }

    #[test]
    fn header_removes_every_control_character() {
        assert_eq!(
            run(header, "ok\r\nX-Injected: 1\t\u{0}\u{7f}\u{85}é\u{2028}"),
            "pre|okX-Injected: 1é\u{2028}"
        );
    }

    #[test]
    fn json_string_escapes_quotes_backslashes_controls() {
        assert_eq!(
            run(json_string, "a\"b\\c\n\u{1}\u{1f}é"),
            "pre|a\\\"b\\\\c\\n\\u0001\\u001Fé"
        );
    }
}
