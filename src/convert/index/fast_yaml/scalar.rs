//! Scalars: plain (folded over lines), single- and double-quoted (escapes, folding), and
//! literal blocks; each read from the reader's position, declining what the subset leaves out.

use std::borrow::Cow;

use super::{Decline, Node, Reader, R};

impl<'a> Reader<'a> {
    /// A plain scalar from `at`, with continuation lines indented more than `n`.
    pub(super) fn plain(&mut self, at: usize, n: usize) -> R<Cow<'a, str>> {
        let first_end = self.line_end(at);
        let first = plain_line(&self.text[at..first_end], true)?;
        let mut next = self.next_line(at);
        let mut out: Option<String> = None;
        loop {
            // Blank lines between content lines fold to line feeds; a single break to a space.
            let mut ls = next;
            let mut blank = 0;
            while ls < self.bytes.len() {
                let sp = self.spaces(ls);
                if self.bytes.get(ls + sp) == Some(&b'\n') {
                    blank += 1;
                    ls = self.next_line(ls);
                } else {
                    break;
                }
            }
            if ls >= self.bytes.len() {
                break;
            }
            let indent = self.spaces(ls);
            if indent <= n {
                break;
            }
            let end = self.line_end(ls);
            let line = plain_line(&self.text[ls + indent..end], false)?;
            let s = out.get_or_insert_with(|| first.to_owned());
            if blank == 0 {
                s.push(' ');
            } else {
                s.extend(std::iter::repeat_n('\n', blank));
            }
            s.push_str(line);
            next = self.next_line(ls);
        }
        self.pos = next;
        Ok(match out {
            Some(s) => Cow::Owned(s),
            None => Cow::Borrowed(first),
        })
    }

    /// A quoted scalar starting at the quote at `at`; continuation lines indented more than `n`.
    pub(super) fn quoted(&mut self, at: usize, n: usize) -> R<Cow<'a, str>> {
        let (s, end) = self.scan_quoted(at, n)?;
        self.after_quote(end)?;
        Ok(s)
    }

    /// The text of the quoted scalar at `at`, and the offset after its closing quote.
    pub(super) fn scan_quoted(&self, at: usize, n: usize) -> R<(Cow<'a, str>, usize)> {
        let double = self.bytes[at] == b'"';
        let b = self.bytes;
        let mut i = at + 1;
        let start = i;
        // The common case: one line, nothing to unescape.
        while i < b.len() && !matches!(b[i], b'"' | b'\'' | b'\\' | b'\n') {
            i += 1;
        }
        let mut out = String::new();
        if i < b.len() && b[i] == b[at] && !(b[i] == b'\'' && b.get(i + 1) == Some(&b'\'')) {
            return Ok((Cow::Borrowed(&self.text[start..i]), i + 1));
        }
        out.push_str(&self.text[start..i]);
        // Output before `floor` came from escapes and is never trimmed as line-end white space.
        let mut floor = 0;
        loop {
            let Some(&c) = b.get(i) else {
                return Err(Decline);
            };
            match c {
                b'"' if double => break,
                b'\'' if !double => {
                    if b.get(i + 1) == Some(&b'\'') {
                        out.push('\'');
                        i += 2;
                        floor = out.len();
                    } else {
                        break;
                    }
                }
                b'\\' if double => {
                    if b.get(i + 1) == Some(&b'\n') {
                        // An escaped line break: joined without a space, leading white dropped.
                        let ls = i + 2;
                        let sp = self.spaces(ls);
                        if sp <= n || matches!(b.get(ls + sp), None | Some(b'\n' | b'\t')) {
                            return Err(Decline);
                        }
                        i = ls + sp;
                        floor = out.len();
                        continue;
                    }
                    let (ch, used) = unescape(&b[i + 1..])?;
                    out.push(ch);
                    i += 1 + used;
                    floor = out.len();
                }
                b'\n' => {
                    let keep = out.trim_end_matches([' ', '\t']).len().max(floor);
                    out.truncate(keep);
                    let mut ls = i + 1;
                    let mut blank = 0;
                    loop {
                        let sp = self.spaces(ls);
                        match b.get(ls + sp) {
                            Some(b'\n') => {
                                blank += 1;
                                ls += sp + 1;
                            }
                            None | Some(b'\t') => return Err(Decline),
                            Some(_) => {
                                if sp <= n {
                                    return Err(Decline);
                                }
                                i = ls + sp;
                                break;
                            }
                        }
                    }
                    if blank == 0 {
                        out.push(' ');
                    } else {
                        out.extend(std::iter::repeat_n('\n', blank));
                    }
                }
                _ => {
                    // At least this character (a quote of the other kind, a backslash in single
                    // quotes, or text), then the run up to the next special byte (all ASCII, so
                    // the slice ends on a character boundary).
                    let run = b[i + 1..]
                        .iter()
                        .position(|&x| matches!(x, b'"' | b'\'' | b'\\' | b'\n'))
                        .unwrap_or(b.len() - i - 1);
                    out.push_str(&self.text[i..i + 1 + run]);
                    i += 1 + run;
                }
            }
        }
        Ok((Cow::Owned(out), i + 1))
    }

    /// After a closing quote only spaces may follow on the line.
    fn after_quote(&mut self, from: usize) -> R<()> {
        let end = self.line_end(from);
        if self.bytes[from..end].iter().any(|&b| b != b' ') {
            return Err(Decline);
        }
        self.pos = self.next_line(from);
        Ok(())
    }

    /// A literal block scalar (`|` or `|-`) whose header is at `at`, in a block indented by `n`.
    pub(super) fn literal(&mut self, at: usize, n: usize) -> R<Node<'a>> {
        let end = self.line_end(at);
        let strip = match self.text[at..end].trim_end_matches(' ') {
            "|" => false,
            "|-" => true,
            _ => return Err(Decline), // `|+`, indentation indicators, comments
        };
        if end >= self.bytes.len() {
            return Err(Decline);
        }
        let body = end + 1;
        // The content's indentation is the first non-blank line's.
        let mut ls = body;
        let mut lead_max = 0;
        let k = loop {
            if ls >= self.bytes.len() {
                return Err(Decline);
            }
            let sp = self.spaces(ls);
            if self.bytes.get(ls + sp) == Some(&b'\n') {
                lead_max = lead_max.max(sp);
                ls += sp + 1;
            } else {
                break sp;
            }
        };
        if k <= n || lead_max > k || self.bytes[ls + k] == b'\t' {
            return Err(Decline);
        }
        let mut out = String::new();
        let mut ls = body;
        while ls < self.bytes.len() {
            let sp = self.spaces(ls);
            let end = self.line_end(ls);
            if ls + sp == end {
                if end == self.bytes.len() {
                    break; // trailing spaces at the end of the text
                }
                if sp > k {
                    out.push_str(&self.text[ls + k..end]);
                }
                out.push('\n');
            } else if sp < k {
                break;
            } else {
                if end == self.bytes.len() {
                    return Err(Decline); // no final line break: chomping differs, leave it
                }
                out.push_str(&self.text[ls + k..end]);
                out.push('\n');
            }
            ls = end + 1;
        }
        self.pos = ls.min(self.bytes.len());
        let content = out.trim_end_matches('\n').len();
        if content == 0 {
            return Err(Decline);
        }
        out.truncate(if strip { content } else { content + 1 });
        Ok(Node::Str(Cow::Owned(out), false))
    }
}

/// One line of a plain scalar, trimmed; declines what could be a comment or a pair, and a first
/// line that starts with an indicator a plain scalar may not start with.
pub(super) fn plain_line(line: &str, first: bool) -> R<&str> {
    let s = line.trim_end_matches(' ');
    let b = s.as_bytes();
    let Some(&c0) = b.first() else {
        return Err(Decline);
    };
    let next_blank = matches!(b.get(1), None | Some(b' '));
    if !first {
        // A continuation line may start with any indicator but a comment's.
        if c0 == b'#' {
            return Err(Decline);
        }
    } else if matches!(
        c0,
        b',' | b'['
            | b']'
            | b'{'
            | b'}'
            | b'#'
            | b'&'
            | b'*'
            | b'!'
            | b'|'
            | b'>'
            | b'\''
            | b'"'
            | b'%'
            | b'@'
            | b'`'
            | b' '
    ) || (matches!(c0, b'-' | b'?' | b':') && next_blank)
    {
        return Err(Decline);
    }
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'\t' => return Err(Decline),
            b'#' if b[i - 1] == b' ' => return Err(Decline),
            b':' if matches!(b.get(i + 1), None | Some(b' ')) => return Err(Decline),
            _ => {}
        }
    }
    Ok(s)
}

/// A plain scalar that every YAML schema (1.1 and 1.2) reads as a string: it starts with a
/// letter or `/`, and is not one of the words that read as a boolean or null.
pub(super) fn plain_is_text(s: &str) -> bool {
    let starts_as_text = s
        .as_bytes()
        .first()
        .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'/');
    let word = s.to_ascii_lowercase();
    starts_as_text
        && !matches!(
            word.as_str(),
            "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null"
        )
}

/// The character of a double-quoted escape (after its backslash), and the bytes it used.
fn unescape(b: &[u8]) -> R<(char, usize)> {
    let simple = |c: char| Ok((c, 1));
    match b.first().ok_or(Decline)? {
        b'0' => simple('\0'),
        b'a' => simple('\x07'),
        b'b' => simple('\x08'),
        b't' | b'\t' => simple('\t'),
        b'n' => simple('\n'),
        b'v' => simple('\x0b'),
        b'f' => simple('\x0c'),
        b'r' => simple('\r'),
        b'e' => simple('\x1b'),
        b' ' => simple(' '),
        b'"' => simple('"'),
        b'/' => simple('/'),
        b'\\' => simple('\\'),
        b'N' => simple('\u{85}'),
        b'_' => simple('\u{a0}'),
        b'L' => simple('\u{2028}'),
        b'P' => simple('\u{2029}'),
        c @ (b'x' | b'u' | b'U') => {
            let len = match c {
                b'x' => 2,
                b'u' => 4,
                _ => 8,
            };
            let hex = b.get(1..1 + len).ok_or(Decline)?;
            let hex = std::str::from_utf8(hex).map_err(|_| Decline)?;
            if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                return Err(Decline);
            }
            let v = u32::from_str_radix(hex, 16).map_err(|_| Decline)?;
            Ok((char::from_u32(v).ok_or(Decline)?, 1 + len))
        }
        _ => Err(Decline),
    }
}
