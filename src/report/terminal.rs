//! Text the target chose (file, function and thread names, command lines) is shown on a terminal
//! only once made harmless: every control character (C0 such as ESC, BEL and CR, DEL, and the C1
//! range, which some terminals also obey) and every bidirectional formatting character becomes
//! `?`. A name like `"\x1b]0;pwned\x07"` or `"\x1b[2J"` would otherwise retitle or clear the
//! user's terminal, or worse on terminals with more escape sequences, and `\r` or a bidi override
//! would make a line read as something it is not.
//!
//! One function, [`printable`], for a single field; [`PrintableWriter`] applies it to everything a
//! plain-text table writer emits, keeping only its own line breaks and tabs, so that no field, of
//! today or added later, can carry an escape sequence through. JSON outputs keep the exact text
//! (the JSON encoder escapes control characters itself).

use std::borrow::Cow;
use std::io::{self, Write};

/// What stands in for a character that is not shown.
const MASK: char = '?';

/// Whether `c` is shown as is: not a control character, not a bidirectional formatting character.
fn is_harmless(c: char) -> bool {
    !c.is_control()
        && !matches!(c,
            '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every character a terminal would act on (or that reorders the line) replaced by
/// `?`, line breaks and tabs included: a field stays on its line.
pub fn printable(text: &str) -> Cow<'_, str> {
    if text.chars().all(is_harmless) {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(
            text.chars()
                .map(|c| if is_harmless(c) { c } else { MASK })
                .collect(),
        )
    }
}

/// [`printable`] for an owned string, without a copy when it is printable already (the sampler
/// masks every frame name of every stack read).
pub fn printable_owned(text: String) -> String {
    if text.chars().all(is_harmless) {
        text
    } else {
        printable(&text).into_owned()
    }
}

/// Writes through to `W` what [`printable`] keeps, and the writer's own `\n` and `\t`. Bytes that
/// are not UTF-8 become `?`; a character split across two writes is put back together first.
pub struct PrintableWriter<W: Write> {
    inner: W,
    /// The start of a character whose remaining bytes come with the next write.
    pending: Vec<u8>,
}

impl<W: Write> PrintableWriter<W> {
    pub fn new(inner: W) -> PrintableWriter<W> {
        PrintableWriter {
            inner,
            pending: Vec::new(),
        }
    }

    fn write_text(&mut self, text: &str) -> io::Result<()> {
        if text
            .chars()
            .all(|c| is_harmless(c) || c == '\n' || c == '\t')
        {
            return self.inner.write_all(text.as_bytes());
        }
        let shown: String = text
            .chars()
            .map(|c| {
                if is_harmless(c) || c == '\n' || c == '\t' {
                    c
                } else {
                    MASK
                }
            })
            .collect();
        self.inner.write_all(shown.as_bytes())
    }
}

impl<W: Write> Write for PrintableWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut bytes = std::mem::take(&mut self.pending);
        bytes.extend_from_slice(buf);
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    self.write_text(text)?;
                    break;
                }
                Err(err) => {
                    let (good, after) = rest.split_at(err.valid_up_to());
                    // `good` was just validated.
                    self.write_text(std::str::from_utf8(good).unwrap_or_default())?;
                    match err.error_len() {
                        // A character cut at the end of this write: wait for the rest.
                        None => {
                            self.pending = after.to_vec();
                            break;
                        }
                        Some(invalid) => {
                            self.write_text(&MASK.to_string())?;
                            rest = &after[invalid..];
                        }
                    }
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_and_other_controls_are_masked() {
        assert_eq!(printable("ok_name"), "ok_name");
        assert!(matches!(printable("ok_name"), Cow::Borrowed(_)));
        assert_eq!(printable("bad\0na\x07me"), "bad?na?me");
        assert_eq!(printable("\x1b]0;pwned\x07x"), "?]0;pwned?x");
        assert_eq!(printable("\x1b[2Jclear"), "?[2Jclear");
        assert_eq!(printable("a\rb\nc\td\x7f\u{9b}e"), "a?b?c?d??e");
        assert_eq!(printable("evil\u{202E}txt.py"), "evil?txt.py");
        assert_eq!(printable("naïve_函数"), "naïve_函数");
        assert_eq!(printable_owned("bad\x1b[2J".into()), "bad?[2J");
        assert_eq!(printable_owned("ok".into()), "ok");
    }

    #[test]
    fn the_writer_keeps_its_own_lines_and_masks_the_rest_even_split_across_writes() {
        let mut out = PrintableWriter::new(Vec::new());
        let name = "\x1b]0;pwned\x07";
        writeln!(out, "row\t{name}").unwrap();
        let e_acute = "é".as_bytes();
        out.write_all(&e_acute[..1]).unwrap();
        out.write_all(&e_acute[1..]).unwrap();
        out.write_all(b"\xff\xc2\x9b\n").unwrap();
        assert_eq!(
            String::from_utf8(out.inner).unwrap(),
            "row\t?]0;pwned?\né??\n"
        );
    }
}
