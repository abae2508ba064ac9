//! Making kernel strings safe to print: a comm or a file name is whatever bytes a process chose,
//! so control characters, invisible format characters (bidi overrides that reorder what a
//! terminal shows, zero-width characters) and invalid UTF-8 are escaped, never sent raw to a
//! terminal.

use std::fmt::Write as _;

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// A NUL-terminated kernel byte string (such as `comm`), escaped.
pub fn kernel_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    escape(&bytes[..end])
}

/// Characters that change what a terminal shows without showing themselves and are not
/// Unicode format characters (Cf, which [`is_unsafe`] takes from the Unicode tables: bidi
/// embeddings, overrides and isolates, zero-width spaces and joiners, the byte order mark,
/// tags): the combining grapheme joiner, the Hangul and Khmer fillers that render as blanks,
/// the Mongolian and other variation selectors, and the line and paragraph separators.
const INVISIBLE: &[(char, char)] = &[
    ('\u{034f}', '\u{034f}'),
    ('\u{115f}', '\u{1160}'),
    ('\u{17b4}', '\u{17b5}'),
    ('\u{180b}', '\u{180f}'),
    ('\u{2028}', '\u{2029}'),
    ('\u{3164}', '\u{3164}'),
    ('\u{fe00}', '\u{fe0f}'),
    ('\u{ffa0}', '\u{ffa0}'),
    ('\u{e0100}', '\u{e01ef}'),
];

/// A character a terminal must not be sent raw.
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || c.general_category() == GeneralCategory::Format
        || INVISIBLE
            .iter()
            .any(|&(first, last)| (first..=last).contains(&c))
}

/// Escapes control characters (`\n`, `\x1b`, ...), invisible format characters
/// (`\u{202e}`) and invalid UTF-8 bytes (`\xff`); a backslash is doubled, so that the
/// result reads back unambiguously.
pub fn escape(bytes: &[u8]) -> String {
    // Most names are printable ASCII, which needs no escaping (and no per-character walk).
    if bytes
        .iter()
        .all(|&b| (b' '..=b'~').contains(&b) && b != b'\\')
    {
        // ASCII is UTF-8: copied whole, not pushed a character at a time.
        return std::str::from_utf8(bytes).unwrap_or_default().to_owned();
    }
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if is_unsafe(c) || c == '\\' {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// Text from a file that may not be the tracer's own (`tracer report -`), made safe to print:
/// unsafe characters are escaped as [`escape`] does, and backslashes are left alone, so that
/// what the tracer escaped already is shown as it was written.
pub fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_unsafe(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_at_nul() {
        assert_eq!(kernel_str(b"bash\0\0garbage"), "bash");
        assert_eq!(kernel_str(b"sixteen-bytes-xx"), "sixteen-bytes-xx");
    }

    #[test]
    fn escapes_control_and_invalid_bytes() {
        assert_eq!(escape(b"a\x1b[31mb"), "a\\u{1b}[31mb");
        assert_eq!(escape(b"new\nline"), "new\\nline");
        assert_eq!(escape(b"bad\xff\xfe"), "bad\\xff\\xfe");
        assert_eq!(escape("caf\u{e9}".as_bytes()), "caf\u{e9}");
        assert_eq!(escape(b"back\\slash"), "back\\\\slash");
    }

    #[test]
    fn escapes_bidi_controls_and_invisible_characters() {
        // An override that would show `exe.txt` for `txt.exe`, an isolate, a mark, a
        // zero-width space, the Arabic letter mark and a byte order mark.
        let evil = "a\u{202e}b\u{2066}c\u{200f}d\u{200b}e\u{61c}f\u{feff}g";
        assert_eq!(
            escape(evil.as_bytes()),
            "a\\u{202e}b\\u{2066}c\\u{200f}d\\u{200b}e\\u{61c}f\\u{feff}g"
        );
        for c in [
            '\u{202a}',
            '\u{202d}',
            '\u{2069}',
            '\u{200e}',
            '\u{2028}',
            '\u{e0041}',
            // Format characters a hand-kept list had missed: the Arabic pound and piastre
            // marks above, the Arabic disputed-end-of-ayah, an Egyptian hieroglyph format
            // control, a Kaithi number sign, and a variation selector of the supplement.
            '\u{0890}',
            '\u{08e2}',
            '\u{13430}',
            '\u{110cd}',
            '\u{e0100}',
        ] {
            assert!(
                escape(c.to_string().as_bytes()).starts_with("\\u{"),
                "{c:?}"
            );
        }
        // Visible non-ASCII text stays as it is.
        assert_eq!(escape("Grüße 日本 שלום".as_bytes()), "Grüße 日本 שלום");
    }

    #[test]
    fn terminal_safe_leaves_escaped_text_alone() {
        let escaped = escape("x\u{1b}[2J\u{202e}\\".as_bytes());
        assert_eq!(terminal_safe(&escaped), escaped);
        assert_eq!(
            terminal_safe("a\u{1b}]0;t\u{7}\u{2067}"),
            "a\\u{1b}]0;t\\u{7}\\u{2067}"
        );
    }
}
