//! RFC 2047 encoded words, as S3 returns non-ASCII user metadata.
//!
//! S3 hands back a metadata value holding non-ASCII bytes as `=?UTF-8?B?…?=` (or `Q`) encoded words
//! (FORMATS.md §1 "Encoding quirks"; aws/amazon-s3-encryption-client-java PR #375, -go PR #56).
//! [`decode`] undoes that; a value with no encoded word comes back unchanged.

use base64::Engine;

/// Decodes every encoded word in `value`. Whitespace between two adjacent encoded words is dropped
/// (RFC 2047 §6.2). Returns `None` if an encoded word is malformed or not UTF-8 / Latin-1.
pub fn decode(value: &str) -> Option<String> {
    if !value.contains("=?") {
        return Some(value.to_owned());
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    let mut last_was_word = false;
    while let Some(start) = rest.find("=?") {
        let (before, from) = rest.split_at(start);
        let Some((word, after)) = encoded_word(from) else {
            // Not an encoded word after all: keep the text verbatim.
            out.push_str(before);
            out.push_str("=?");
            rest = &from[2..];
            last_was_word = false;
            continue;
        };
        if !(last_was_word && before.chars().all(char::is_whitespace)) {
            out.push_str(before);
        }
        out.push_str(&word?);
        rest = after;
        last_was_word = true;
    }
    out.push_str(rest);
    Some(out)
}

/// Parses one `=?charset?enc?text?=` at the start of `s`: `None` if `s` does not start with one,
/// `Some((None, _))` if it does but cannot be decoded.
fn encoded_word(s: &str) -> Option<(Option<String>, &str)> {
    let body = s.strip_prefix("=?")?;
    let (charset, body) = body.split_once('?')?;
    let (encoding, body) = body.split_once('?')?;
    let (text, rest) = body.split_once("?=")?;
    if charset.is_empty() || text.contains(char::is_whitespace) {
        return None;
    }
    let bytes = match encoding {
        "B" | "b" => base64::engine::general_purpose::STANDARD.decode(text).ok(),
        "Q" | "q" => q_decode(text),
        _ => return None,
    };
    // A charset may carry an RFC 2231 language tag: `UTF-8*en`.
    let charset = charset
        .split('*')
        .next()
        .unwrap_or(charset)
        .to_ascii_lowercase();
    let decoded = bytes.and_then(|b| match charset.as_str() {
        "utf-8" | "utf8" | "us-ascii" => String::from_utf8(b).ok(),
        "iso-8859-1" | "latin1" => Some(b.into_iter().map(char::from).collect()),
        _ => None,
    });
    Some((decoded, rest))
}

fn q_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'_' => out.push(b' '),
            b'=' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn plain_values_pass_through() {
        assert_eq!(decode(r#"{"a":"b"}"#).as_deref(), Some(r#"{"a":"b"}"#));
    }

    #[test]
    fn base64_utf8_word() {
        // {"k":"ü"} as S3 returns it.
        let enc = format!(
            "=?UTF-8?B?{}?=",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "{\"k\":\"ü\"}")
        );
        assert_eq!(decode(&enc).as_deref(), Some("{\"k\":\"ü\"}"));
    }

    #[test]
    fn q_word_and_adjacent_words_join() {
        assert_eq!(
            decode("=?UTF-8?Q?caf=C3=A9?= =?UTF-8?Q?_bar?=").as_deref(),
            Some("café bar")
        );
        assert_eq!(decode("x =?ISO-8859-1?Q?=E9?= y").as_deref(), Some("x é y"));
    }

    #[test]
    fn malformed_word_is_an_error() {
        assert_eq!(decode("=?UTF-8?B?@@@?="), None);
        assert_eq!(decode("=?UTF-8?B?/w==?="), None); // 0xFF is not UTF-8
    }

    #[test]
    fn lone_marker_is_text() {
        assert_eq!(decode("a=?b").as_deref(), Some("a=?b"));
    }
}
