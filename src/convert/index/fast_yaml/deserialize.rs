//! The serde side: a `Deserializer` for the node at the reader, and the map and sequence
//! accesses that walk block mappings and sequences line by line.

use std::borrow::Cow;
use std::collections::HashSet;

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

use super::scalar::plain_is_text;
use super::{is_null, Decline, Node, Reader, R};

/// Deserializes the node at the reader.
pub(super) struct NodeDe<'r, 'a> {
    pub(super) r: &'r mut Reader<'a>,
    pub(super) node: Node<'a>,
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
