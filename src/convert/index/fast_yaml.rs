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
//! Pure: calls nothing outside this file but serde.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};

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

    /// A plain scalar from `at`, with continuation lines indented more than `n`.
    fn plain(&mut self, at: usize, n: usize) -> R<Cow<'a, str>> {
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
    fn quoted(&mut self, at: usize, n: usize) -> R<Cow<'a, str>> {
        let (s, end) = self.scan_quoted(at, n)?;
        self.after_quote(end)?;
        Ok(s)
    }

    /// The text of the quoted scalar at `at`, and the offset after its closing quote.
    fn scan_quoted(&self, at: usize, n: usize) -> R<(Cow<'a, str>, usize)> {
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
    fn literal(&mut self, at: usize, n: usize) -> R<Node<'a>> {
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

/// One line of a plain scalar, trimmed; declines what could be a comment or a pair, and a first
/// line that starts with an indicator a plain scalar may not start with.
fn plain_line(line: &str, first: bool) -> R<&str> {
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
fn plain_is_text(s: &str) -> bool {
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

/// Deserializes the node at the reader.
struct NodeDe<'r, 'a> {
    r: &'r mut Reader<'a>,
    node: Node<'a>,
}

impl<'de, 'r> de::Deserializer<'de> for NodeDe<'r, 'de> {
    type Error = Decline;

    /// Untyped values (`serverInfo`, a dependency's `import-values`): collections, quoted and
    /// literal text, and plain text that no YAML schema reads as anything but a string. Null,
    /// booleans and numbers decline: how they are typed is serde-saphyr's to say.
    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> R<V::Value> {
        match &self.node {
            Node::Map { .. } | Node::EmptyMap => self.deserialize_map(v),
            Node::Seq { .. } | Node::EmptySeq => self.deserialize_seq(v),
            Node::Str(s, plain) if !plain || plain_is_text(s) => self.deserialize_str(v),
            _ => Err(Decline),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> R<V::Value> {
        match self.node {
            Node::Str(s, true) if s == "true" => v.visit_bool(true),
            Node::Str(s, true) if s == "false" => v.visit_bool(false),
            _ => Err(Decline),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> R<V::Value> {
        match self.node {
            // Owned text was grown by pushes; `visit_str` lets the visitor keep an exact copy
            // rather than the spare capacity, which adds up over a big index.
            Node::Str(s, plain) if !(plain && is_null(&s)) => match s {
                Cow::Borrowed(s) => v.visit_borrowed_str(s),
                Cow::Owned(s) => v.visit_str(&s),
            },
            _ => Err(Decline),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> R<V::Value> {
        self.deserialize_str(v)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> R<V::Value> {
        match &self.node {
            Node::Null => v.visit_none(),
            Node::Str(s, true) if is_null(s) => v.visit_none(),
            _ => v.visit_some(self),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> R<V::Value> {
        match self.node {
            Node::EmptySeq => v.visit_seq(Entries {
                r: self.r,
                indent: None,
            }),
            Node::Seq { indent } => {
                self.r.enter()?;
                let out = v.visit_seq(Entries {
                    r: self.r,
                    indent: Some(indent),
                })?;
                self.r.depth -= 1;
                Ok(out)
            }
            _ => Err(Decline),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> R<V::Value> {
        match self.node {
            Node::EmptyMap => v.visit_map(Pairs {
                r: self.r,
                indent: None,
                first_inline: false,
                seen: Seen::default(),
            }),
            Node::Map { indent } => {
                self.r.enter()?;
                // A map that starts inside a `- ` line has its first key at the reader.
                let first_inline = self.r.pos != 0 && self.r.bytes[self.r.pos - 1] != b'\n';
                let out = v.visit_map(Pairs {
                    r: self.r,
                    indent: Some(indent),
                    first_inline,
                    seen: Seen::default(),
                })?;
                self.r.depth -= 1;
                Ok(out)
            }
            _ => Err(Decline),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        v: V,
    ) -> R<V::Value> {
        self.deserialize_map(v)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> R<V::Value> {
        self.deserialize_str(v)
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf unit unit_struct
        newtype_struct tuple tuple_struct enum ignored_any
    }
}

/// Keys already seen in one mapping: a duplicate makes the fast path decline.
#[derive(Default)]
struct Seen<'a> {
    few: Vec<Cow<'a, str>>,
    many: HashSet<Cow<'a, str>>,
}

impl<'a> Seen<'a> {
    fn insert(&mut self, k: Cow<'a, str>) -> bool {
        if self.many.is_empty() {
            if self.few.contains(&k) {
                return false;
            }
            self.few.push(k);
            if self.few.len() > 16 {
                self.many.extend(self.few.drain(..));
            }
            true
        } else {
            self.many.insert(k)
        }
    }
}

/// The pairs of a block mapping indented by `indent` (`None`: `{}`).
struct Pairs<'r, 'a> {
    r: &'r mut Reader<'a>,
    indent: Option<usize>,
    first_inline: bool,
    seen: Seen<'a>,
}

impl<'de, 'r> de::MapAccess<'de> for Pairs<'r, 'de> {
    type Error = Decline;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> R<Option<K::Value>> {
        let Some(n) = self.indent else {
            return Ok(None);
        };
        let at = if std::mem::take(&mut self.first_inline) {
            self.r.pos
        } else {
            let Some((ls, indent)) = self.r.next_content_line(self.r.pos) else {
                self.r.pos = self.r.bytes.len();
                return Ok(None);
            };
            self.r.pos = ls;
            if indent < n {
                return Ok(None);
            }
            if indent > n || self.r.is_dash(ls) || self.r.bytes[ls + indent] == b'\t' {
                return Err(Decline);
            }
            ls + indent
        };
        let (key, after) = self.r.key(at)?;
        if !self.seen.insert(key.clone()) {
            return Err(Decline);
        }
        self.r.pos = after;
        seed.deserialize(key.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> R<V::Value> {
        let n = self.indent.ok_or(Decline)?;
        let node = self.r.value_after_key(n)?;
        seed.deserialize(NodeDe { r: self.r, node })
    }
}

/// The entries of a block sequence whose dashes are indented by `indent` (`None`: `[]`).
struct Entries<'r, 'a> {
    r: &'r mut Reader<'a>,
    indent: Option<usize>,
}

impl<'de, 'r> de::SeqAccess<'de> for Entries<'r, 'de> {
    type Error = Decline;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> R<Option<T::Value>> {
        let Some(d) = self.indent else {
            return Ok(None);
        };
        let Some((ls, indent)) = self.r.next_content_line(self.r.pos) else {
            self.r.pos = self.r.bytes.len();
            return Ok(None);
        };
        self.r.pos = ls;
        if indent < d || (indent == d && !self.r.is_dash(ls)) {
            return Ok(None); // a mapping's next key may follow a sequence at its own indentation
        }
        if indent > d {
            return Err(Decline);
        }
        let dash = ls + d;
        let at = dash + 1 + self.r.spaces(dash + 1);
        let node = match self.r.bytes.get(at) {
            None | Some(b'\n') => {
                let next = self.r.next_line(dash);
                match self.r.next_content_line(next) {
                    Some((ls2, i2)) if i2 > d => {
                        self.r.pos = ls2;
                        self.r.block_node(ls2, i2)?
                    }
                    _ => {
                        self.r.pos = next;
                        Node::Null
                    }
                }
            }
            Some(b'-') if self.r.is_dash(at) => return Err(Decline), // `- - x`
            Some(_) if self.r.starts_pair(at) => {
                self.r.pos = at;
                Node::Map { indent: at - ls }
            }
            Some(_) => self.r.inline_node(at, d)?,
        };
        seed.deserialize(NodeDe { r: self.r, node }).map(Some)
    }
}

#[cfg(test)]
mod tests;
