//! A fast reader for the YAML that Helm writes for an index (Go's `yaml` emitters): block
//! mappings and sequences, plain, quoted and literal (`|`, `|-`) scalars, `[]` and `{}`. It
//! deserializes straight into the index types, with no token stream, event queue or tree in
//! between: about 0.18 s for the 15 MB, 15,000-version benchmark index (`cargo bench --bench
//! convert`), where serde-saphyr took about 1 s.
//!
//! It is a fast path, not a second YAML parser: on anything outside that subset (anchors, aliases,
//! tags, flow collections, folded scalars, comments after a value, tabs in indentation, CR line
//! ends, document markers, null where a string is wanted, numbers, ...) it declines, and the caller
//! parses the bytes with serde-saphyr, which then decides what they mean or which error to give.
//! Whenever it does answer, the answer is serde-saphyr's: the tests compare the two on crafted,
//! generated and mutated documents.
//!
//! Pure: calls nothing outside this module but serde. The line structure (mappings, sequences,
//! keys) is here; scalars are in `scalar`, the serde side in `deserialize`.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeOwned};

use deserialize::NodeDe;
use scalar::plain_line;

/// Reads `text` as `T`, or `None` when the text is not in the subset (or does not fit `T`).
pub fn parse<T: DeserializeOwned>(text: &str, max_depth: usize) -> Option<T> {
    if !precheck(text) {
        return None;
    }
    let mut r = Reader {
        text,
        bytes: text.as_bytes(),
        pos: 0,
        depth: 0,
        max_depth,
    };
    let (ls, indent) = r.next_content_line(0)?;
    if indent != 0 || r.is_dash(ls) {
        return None;
    }
    r.pos = ls;
    let value = T::deserialize(NodeDe {
        r: &mut r,
        node: Node::Map { indent: 0 },
    })
    .ok()?;
    // Everything was read: only blank and comment lines may follow.
    match r.next_content_line(r.pos) {
        None => Some(value),
        Some(_) => None,
    }
}

/// Whole-text checks that the line reader then need not repeat: no CR (only LF line ends), no
/// byte-order mark, no document markers or directives, only characters YAML calls printable, and
/// none of the characters YAML 1.1 reads as line breaks (NEL, LS, PS).
fn precheck(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = 0;
    let mut line_start = true;
    while i < b.len() {
        let c = b[i];
        if line_start && (c == b'%' || b[i..].starts_with(b"---") || b[i..].starts_with(b"...")) {
            return false;
        }
        line_start = c == b'\n';
        match c {
            b'\n' | b'\t' | 0x20..=0x7e => {}
            // U+0080..U+009F: C1 controls, and NEL (U+0085).
            0xc2 if matches!(b.get(i + 1), Some(0x80..=0x9f)) => return false,
            // U+2028 and U+2029 (LS, PS).
            0xe2 if b[i + 1..].starts_with(&[0x80, 0xa8])
                || b[i + 1..].starts_with(&[0x80, 0xa9]) =>
            {
                return false
            }
            // U+FEFF (byte-order mark), U+FFFE and U+FFFF.
            0xef if b[i + 1..].starts_with(&[0xbb, 0xbf])
                || b[i + 1..].starts_with(&[0xbf, 0xbe])
                || b[i + 1..].starts_with(&[0xbf, 0xbf]) =>
            {
                return false
            }
            0x80..=0xff => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

/// Why the fast path gave up. Never shown to anyone: the caller falls back to serde-saphyr.
#[derive(Debug)]
struct Decline;

impl fmt::Display for Decline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not in the fast YAML subset")
    }
}

impl std::error::Error for Decline {}

impl de::Error for Decline {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Decline
    }
}

type R<T> = Result<T, Decline>;

struct Reader<'a> {
    text: &'a str,
    bytes: &'a [u8],
    /// Byte offset: at a line start between nodes, or inside a line after `key:` or `- `.
    pos: usize,
    depth: usize,
    max_depth: usize,
}

/// What starts at the reader's position. Collections leave the reader at their first key or
/// first `- `; scalars have already been read, and the reader is at the line after them.
enum Node<'a> {
    Null,
    Str(Cow<'a, str>, bool),
    Map { indent: usize },
    Seq { indent: usize },
    EmptyMap,
    EmptySeq,
}

fn is_null(s: &str) -> bool {
    matches!(s, "~" | "null" | "Null" | "NULL")
}

impl<'a> Reader<'a> {
    fn line_end(&self, from: usize) -> usize {
        self.bytes[from..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(self.bytes.len(), |i| from + i)
    }

    fn next_line(&self, from: usize) -> usize {
        (self.line_end(from) + 1).min(self.bytes.len())
    }

    fn spaces(&self, from: usize) -> usize {
        self.bytes[from..]
            .iter()
            .take_while(|&&b| b == b' ')
            .count()
    }

    /// The first line at or after the line start `ls` that is neither blank nor a comment, with
    /// its indentation.
    fn next_content_line(&self, mut ls: usize) -> Option<(usize, usize)> {
        while ls < self.bytes.len() {
            let indent = self.spaces(ls);
            match self.bytes.get(ls + indent) {
                None => return None,
                Some(b'\n') | Some(b'#') => ls = self.next_line(ls),
                Some(_) => return Some((ls, indent)),
            }
        }
        None
    }

    /// A `-` entry at `at` (a line start plus its indentation, or inside a line).
    fn is_dash(&self, ls: usize) -> bool {
        let at = ls + self.spaces(ls);
        self.bytes.get(at) == Some(&b'-')
            && matches!(self.bytes.get(at + 1), None | Some(b' ' | b'\n'))
    }

    fn enter(&mut self) -> R<()> {
        self.depth += 1;
        if self.depth > self.max_depth {
            return Err(Decline);
        }
        Ok(())
    }

    /// The node after `key:` of a mapping indented by `n`; the reader is just after the colon.
    fn value_after_key(&mut self, n: usize) -> R<Node<'a>> {
        let at = self.pos + self.spaces(self.pos);
        match self.bytes.get(at) {
            None | Some(b'\n') => {
                let next = self.next_line(at);
                match self.next_content_line(next) {
                    Some((ls, indent)) if indent > n || (indent == n && self.is_dash(ls)) => {
                        self.pos = ls;
                        self.block_node(ls, indent)
                    }
                    _ => {
                        self.pos = next;
                        Ok(Node::Null)
                    }
                }
            }
            Some(_) => {
                if at == self.pos {
                    return Err(Decline); // `key:value` is a plain scalar, not a pair
                }
                self.inline_node(at, n)
            }
        }
    }

    /// A mapping or sequence whose first line starts at `ls`, indented by `indent`.
    fn block_node(&mut self, ls: usize, indent: usize) -> R<Node<'a>> {
        if self.bytes[ls + indent] == b'\t' {
            return Err(Decline);
        }
        Ok(if self.is_dash(ls) {
            Node::Seq { indent }
        } else {
            Node::Map { indent }
        })
    }

    /// A node that starts at `at` inside a line, in a block indented by `n`: continuation lines
    /// of its scalar must be indented more than `n`.
    fn inline_node(&mut self, at: usize, n: usize) -> R<Node<'a>> {
        let end = self.line_end(at);
        let rest = &self.text[at..end];
        match rest.as_bytes()[0] {
            b'[' | b'{' => {
                let empty = if rest.starts_with('[') { "[]" } else { "{}" };
                if rest.trim_end_matches(' ') != empty {
                    return Err(Decline);
                }
                self.pos = self.next_line(at);
                Ok(if empty == "[]" {
                    Node::EmptySeq
                } else {
                    Node::EmptyMap
                })
            }
            b'|' => self.literal(at, n),
            b'"' | b'\'' => {
                let s = self.quoted(at, n)?;
                Ok(Node::Str(s, false))
            }
            _ => {
                let s = self.plain(at, n)?;
                Ok(Node::Str(s, true))
            }
        }
    }

    /// The key of a pair at `at`, and the offset just after its colon.
    fn key(&self, at: usize) -> R<(Cow<'a, str>, usize)> {
        let end = self.line_end(at);
        let b = self.bytes;
        let (key, colon) = match b[at] {
            b'"' | b'\'' => {
                let (key, after) = self.scan_quoted(at, 0)?;
                if after > end {
                    return Err(Decline); // an implicit key is one line
                }
                (key, after)
            }
            _ => {
                let line = &b[at..end];
                let colon = line
                    .iter()
                    .enumerate()
                    .position(|(i, &c)| c == b':' && matches!(line.get(i + 1), None | Some(b' ')))
                    .ok_or(Decline)?;
                let key = plain_line(&self.text[at..at + colon], true)?;
                if key.len() != colon || key == "<<" || is_null(key) {
                    return Err(Decline);
                }
                (Cow::Borrowed(key), at + colon)
            }
        };
        if b.get(colon) != Some(&b':')
            || !matches!(b.get(colon + 1), None | Some(b' ' | b'\n'))
            || key.len() > 1000
        {
            return Err(Decline);
        }
        Ok((key, colon + 1))
    }

    /// Whether the text at `at` is a `key:` (so a `- ` entry holds a mapping).
    fn starts_pair(&self, at: usize) -> bool {
        let end = self.line_end(at);
        let line = &self.bytes[at..end];
        match line[0] {
            b'"' | b'\'' => self
                .scan_quoted(at, 0)
                .is_ok_and(|(_, after)| after <= end && self.bytes.get(after) == Some(&b':')),
            _ => line
                .iter()
                .enumerate()
                .any(|(i, &c)| c == b':' && matches!(line.get(i + 1), None | Some(b' '))),
        }
    }
}

mod deserialize;
mod scalar;

#[cfg(test)]
mod tests;
