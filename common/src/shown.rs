//! Text that came from outside (another host's row, a record another process wrote, a server's
//! answer), made fit for a line a person or a program reads: every control character escaped,
//! so a newline or a NUL cannot start a forged line, and cut short, so a huge value cannot
//! flood the journal.

/// `text` in double quotes, escaped as Rust escapes a string literal (`\n`, `\0`, `\u{202e}`,
/// `\"`), cut after `max` characters with `...` and the full length in bytes.
pub fn quoted(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 16);
    out.push('"');
    let mut chars = text.chars();
    for c in chars.by_ref().take(max) {
        out.extend(c.escape_debug());
    }
    out.push('"');
    if chars.next().is_some() {
        out.push_str(&format!("... ({} bytes)", text.len()));
    }
    out
}

/// Whether `c` is printed as it is in a line: everything but control characters and what Rust
/// escapes in a string literal (bidi overrides, unassigned code points); quotes and
/// backslashes are plain text here.
fn is_plain(c: char) -> bool {
    matches!(c, '"' | '\'' | '\\') || c.escape_debug().len() == 1
}

/// `text` with every character that is not plain ([`is_plain`]) escaped (`\0`, `\u{1b}`), and
/// nothing else changed: for text already cut short and put in a sentence.
pub fn escaped(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().all(is_plain) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_plain(c) {
            out.push(c);
        } else {
            out.extend(c.escape_debug());
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `text` as it is when it holds no character that needs escaping and is at most `max`
/// characters long, else [`quoted`]: a host name or a message reads as usual, a hostile one
/// cannot forge a line.
pub fn plain_or_quoted(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    let plain = text.chars().count() <= max && text.chars().all(is_plain);
    if plain {
        std::borrow::Cow::Borrowed(text)
    } else {
        std::borrow::Cow::Owned(quoted(text, max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_long_text_cut() {
        assert_eq!(quoted("a\nb\0", 10), r#""a\nb\0""#);
        assert_eq!(quoted("abcdef", 3), r#""abc"... (6 bytes)"#);
        assert_eq!(plain_or_quoted("host-1.example", 64), "host-1.example");
        assert_eq!(plain_or_quoted("lease ran out", 64), "lease ran out");
        assert_eq!(
            plain_or_quoted("x\nhealth: healthy (exit 0)", 64),
            r#""x\nhealth: healthy (exit 0)""#
        );
        assert_eq!(plain_or_quoted("rtl\u{202e}", 64), r#""rtl\u{202e}""#);
        assert_eq!(escaped("it's \"a\" \\ b"), "it's \"a\" \\ b");
        assert_eq!(escaped("a\0b\x1b[31m"), r"a\0b\u{1b}[31m");
    }
}
