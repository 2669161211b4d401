//! [`log_key`]: an S3 key as it may appear in a text log line.
//!
//! An S3 key is any UTF-8 string, newlines and other control characters included, and it comes
//! from whoever can write to the bucket. Logged as it is, `a\n2026-11-30T00:00:00Z INFO object
//! done key=b` forges a second log line. The text log therefore writes keys through
//! [`log_key`], which escapes them; the JSON log escapes strings itself (but escaping there too
//! does no harm).

use std::fmt;

/// `key`, displayed with control characters escaped: `\n`, `\r`, `\t`, `\\` for a backslash
/// (so an escape in the output is never ambiguous), `\u{…}` for other C0/C1 controls, Unicode
/// line and paragraph separators and the bidirectional-text controls (which can reorder what
/// a terminal shows). Everything else, non-ASCII letters included, is shown as it is.
///
/// Use it in `tracing` fields as `key = %log_key(&job.key)`.
pub fn log_key(key: &str) -> LogKey<'_> {
    LogKey(key)
}

/// See [`log_key`].
#[derive(Clone, Copy)]
pub struct LogKey<'a>(&'a str);

/// Characters that reorder or break lines without being `char::is_control`.
fn is_format_hazard(c: char) -> bool {
    matches!(
        c,
        '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
    )
}

impl fmt::Display for LogKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        let mut start = 0;
        for (i, c) in s.char_indices() {
            let escaped = match c {
                '\n' => "\\n",
                '\r' => "\\r",
                '\t' => "\\t",
                '\\' => "\\\\",
                c if c.is_control() || is_format_hazard(c) => "",
                _ => continue,
            };
            f.write_str(&s[start..i])?;
            if escaped.is_empty() {
                write!(f, "\\u{{{:x}}}", u32::from(c))?;
            } else {
                f.write_str(escaped)?;
            }
            start = i + c.len_utf8();
        }
        f.write_str(&s[start..])
    }
}

impl fmt::Debug for LogKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[test]
    fn control_characters_are_escaped() {
        let cases = [
            ("plain/ünïcødé ☃.bin", "plain/ünïcødé ☃.bin"),
            ("a\nb", "a\\nb"),
            ("a\r\nINFO forged", "a\\r\\nINFO forged"),
            ("tab\there", "tab\\there"),
            ("back\\slash", "back\\\\slash"),
            (
                "nul\0esc\u{1b}[31mdel\u{7f}",
                "nul\\u{0}esc\\u{1b}[31mdel\\u{7f}",
            ),
            ("c1\u{85}next", "c1\\u{85}next"),
            ("ls\u{2028}ps\u{2029}", "ls\\u{2028}ps\\u{2029}"),
            ("rlo\u{202e}fdp.exe", "rlo\\u{202e}fdp.exe"),
            ("", ""),
        ];
        for (key, want) in cases {
            assert_eq!(log_key(key).to_string(), want, "{key:?}");
        }
    }

    /// A writer the text formatter writes into, shared with the test.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut v) = self.0.lock() {
                v.extend_from_slice(buf);
            }
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_key_with_a_newline_is_one_text_log_line() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let key = "a\n2026-11-30T00:00:00.000000Z  INFO s3cse: object done key=forged";
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(key = %log_key(key), "object done");
        });
        let text = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("key=a\\n2026"), "{text}");
    }
}
