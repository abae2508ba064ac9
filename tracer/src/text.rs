//! Making kernel strings safe to print: a comm or a file name is whatever bytes a process chose,
//! so control characters and invalid UTF-8 are escaped, never sent raw to a terminal.

use std::fmt::Write as _;

/// A NUL-terminated kernel byte string (such as `comm`), escaped.
pub fn kernel_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    escape(&bytes[..end])
}

/// Escapes control characters (`\n`, `\x1b`, ...) and invalid UTF-8 bytes (`\xff`).
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '\\' {
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
}
