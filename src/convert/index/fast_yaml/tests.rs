//! The fast reader against serde-saphyr: wherever the fast reader answers, it answers what
//! serde-saphyr answers; and on the YAML Helm writes it does answer.

use proptest::prelude::*;

use super::super::{saphyr_index, ChartVersion, IndexFile, IndexLimits};
use super::parse;
use crate::convert::chart::{Dependency, Maintainer};

fn fast(text: &str) -> Option<IndexFile> {
    parse::<IndexFile>(text, IndexLimits::default().max_depth)
}

fn slow(text: &str) -> Option<IndexFile> {
    saphyr_index(text.as_bytes(), IndexLimits::default()).ok()
}

/// The fast reader takes `text` and reads it as serde-saphyr does.
#[track_caller]
fn same(text: &str) -> IndexFile {
    let f = fast(text).unwrap_or_else(|| panic!("the fast reader declined:\n{text}"));
    assert_eq!(Some(&f), slow(text).as_ref(), "readings differ:\n{text}");
    f
}

/// The fast reader declines `text` (serde-saphyr decides).
#[track_caller]
fn declines(text: &str) {
    assert!(fast(text).is_none(), "the fast reader took:\n{text}");
}

/// Whatever the fast reader answers is serde-saphyr's answer.
fn agrees(text: &str) -> Result<(), TestCaseError> {
    if let Some(f) = fast(text) {
        prop_assert_eq!(Some(f), slow(text), "readings differ:\n{}", text);
    }
    Ok(())
}

fn entry(fields: &str) -> String {
    format!("apiVersion: v1\nentries:\n  demo:\n  - name: demo\n{fields}")
}

fn demo(idx: &IndexFile) -> &ChartVersion {
    &idx.entries["demo"][0]
}

#[test]
fn reads_the_shape_helm_writes() {
    let text = "apiVersion: v1\nentries:\n  alpine:\n  - annotations:\n      category: Database\n      images: |\n        - name: alpine\n          image: docker.io/alpine:3.20\n      licenses: Apache-2.0\n    apiVersion: v2\n    appVersion: 1.2.0\n    created: \"2024-07-22T11:25:35.424530498Z\"\n    dependencies:\n    - name: common\n      repository: oci://registry-1.docker.io/bitnamicharts\n      tags:\n      - bitnami-common\n      version: 2.x.x\n    description: Deploy a basic Alpine Linux pod\n    digest: 515c6a1ffe3c3a8e0bff2e3c8ad3e7d8a1e4e1d2e48ae9f5c0a9e2c0b1a2c3d4\n    home: https://helm.sh/helm\n    keywords:\n    - alpine\n    maintainers:\n    - email: a@example.com\n      name: A\n    name: alpine\n    sources:\n    - https://github.com/helm/helm\n    urls:\n    - https://example.com/charts/alpine-0.2.0.tgz\n    version: 0.2.0\n  - apiVersion: v1\n    deprecated: true\n    name: alpine\n    urls:\n    - alpine-0.1.0.tgz\n    version: 0.1.0\ngenerated: \"2016-10-06T16:23:20.499029981-06:00\"\n";
    let idx = same(text);
    let a = &idx.entries["alpine"];
    assert_eq!(a.len(), 2);
    assert_eq!(
        a[0].annotations["images"],
        "- name: alpine\n  image: docker.io/alpine:3.20\n"
    );
    assert_eq!(a[0].dependencies[0].tags, vec!["bitnami-common"]);
    assert_eq!(a[0].maintainers[0].email, "a@example.com");
    assert!(a[1].deprecated);
    assert_eq!(
        idx.generated.as_deref(),
        Some("2016-10-06T16:23:20.499029981-06:00")
    );
}

#[test]
fn reads_sequences_indented_under_their_key_too() {
    // yaml.v3 indents sequences under their key; yaml.v2 does not.
    let idx = same("apiVersion: v1\nentries:\n    demo:\n        - name: demo\n          keywords:\n            - a\n            - b\n          version: 1.0.0\n");
    assert_eq!(demo(&idx).keywords, vec!["a", "b"]);
}

#[test]
fn plain_scalars_keep_their_text() {
    for v in [
        "1.0",
        "1.10",
        "0x1F",
        "1e3",
        ".inf",
        "-1",
        "+1",
        "2024-07-22",
        "true",
        "no",
        "a:b",
        "a#b",
        "https://x.example/#readme",
        "é ü 日本",
        "a [b] {c}, d",
        "-x",
        "?x",
        ":x",
        "it's",
        "say \"hi\"",
        "a\\b",
        "0o17",
        "v1.2.3+build.4",
        "~x",
    ] {
        let idx = same(&entry(&format!("    version: {v}\n")));
        assert_eq!(demo(&idx).version, v);
    }
}

#[test]
fn folds_multi_line_scalars_as_yaml_does() {
    let idx = same(&entry(
        "    description: a long line\n      folded here\n\n      and a paragraph\n    version: 1.0.0\n",
    ));
    assert_eq!(
        demo(&idx).description,
        "a long line folded here\nand a paragraph"
    );
    let idx = same(&entry(
        "    description: \"quoted \\u00e9 \\\"x\\\" \\t end   \n      next\\\n      joined \\\n      kept\n\n\n      two\"\n",
    ));
    assert_eq!(
        demo(&idx).description,
        "quoted é \"x\" \t end nextjoined kept\n\ntwo"
    );
    let idx = same(&entry("    description: 'it''s\n      folded'\n"));
    assert_eq!(demo(&idx).description, "it's folded");
    same(&entry(
        "    description: \"\"\n    home: ''\n    icon: \"\\x41\\U0001F600\\N\\_\\/\"\n",
    ));
}

#[test]
fn null_is_none_where_a_value_is_optional() {
    for v in ["", " ~", " null", " Null", " NULL"] {
        assert_eq!(
            same(&entry(&format!("    created:{v}\n"))).entries["demo"][0].created,
            None
        );
    }
    assert_eq!(
        same(&entry("    created: \"null\"\n")).entries["demo"][0]
            .created
            .as_deref(),
        Some("null")
    );
}

#[test]
fn literal_blocks_keep_lines_and_chomp() {
    let idx = same(&entry(
        "    description: |\n      first: line # not a comment\n\n        indented\n       \n      last\n\n\n    version: |-\n      1.0.0\n\n",
    ));
    assert_eq!(
        demo(&idx).description,
        "first: line # not a comment\n\n  indented\n \nlast\n"
    );
    assert_eq!(demo(&idx).version, "1.0.0");
}

#[test]
fn reads_quoted_keys_empty_collections_and_comment_lines() {
    let idx = same(&entry(
        "# a comment\n    annotations:\n      \"artifacthub.io/links\": x\n      'quoted': y\n    keywords: []\n  # between\n    maintainers: []\n    sources:    \n    - s\n",
    ));
    assert_eq!(demo(&idx).annotations["artifacthub.io/links"], "x");
    same(&entry("    annotations: {}\n"));
}

#[test]
fn reads_server_info_when_its_values_are_text_or_collections() {
    // ChartMuseum writes `serverInfo` with its context path.
    let idx = same("apiVersion: v1\nentries: {}\nserverInfo:\n  contextPath: /charts\n  quoted: \"1.0\"\n  list:\n  - a\n  nested:\n    k: text\n");
    let info = idx.server_info.unwrap();
    assert_eq!(info["contextPath"], "/charts");
    assert_eq!(info["quoted"], "1.0");
    assert_eq!(info["nested"]["k"], "text");
    same("apiVersion: v1\nentries: {}\nserverInfo: {}\n");
    for v in [
        "1", "1.0", "true", "Yes", "off", "~", "null", ".inf", "-x", "0x1",
    ] {
        let text = format!("apiVersion: v1\nentries: {{}}\nserverInfo:\n  v: {v}\n");
        declines(&text);
        agrees(&text).unwrap();
    }
}

#[test]
fn declines_what_it_does_not_read() {
    for text in [
        entry("    version: &v 1.0.0\n"),
        entry("    version: *v\n"),
        entry("    version: !!str 1.0.0\n"),
        entry("    urls: [a.tgz]\n"),
        entry("    description: >\n      folded\n"),
        entry("    description: |+\n      kept\n\n"),
        entry("    description: |2\n        x\n"),
        entry("    version: 1.0.0 # comment\n"),
        entry("    version:\t1.0.0\n"),
        entry("    version: 1.0.0\r\n"),
        format!("\u{feff}{}", entry("")),
        format!("---\n{}", entry("")),
        entry("    version:\n"),
        entry("    version: null\n"),
        entry("    version: 1\n    version: 2\n"),
        entry("    version:1.0.0\n"),
        entry("    ? version\n    : 1.0.0\n"),
        entry("    <<: {}\n"),
        entry("    annotations:\n      ~: x\n"),
        entry("    description: a\u{85}b\n"),
        entry("    description: \"a\u{2028}b\"\n"),
        entry("    version: \"no end\n"),
        entry("    version: a: b\n"),
        entry("    keywords:\n    - - nested\n"),
        "serverInfo:\n  x: 1\napiVersion: v1\n".to_string(),
        "apiVersion: v1\nentries:\n  demo:\n  - name: demo\n    dependencies:\n    - name: d\n      import-values:\n      - 1\n".to_string(),
        String::new(),
        "# only a comment\n".to_string(),
    ] {
        declines(&text);
        agrees(&text).unwrap();
    }
}

#[test]
fn a_bitnami_shaped_index_takes_the_fast_path() {
    let mut text = String::from("apiVersion: v1\nentries:\n");
    for c in 0..3 {
        text.push_str(&format!("  chart{c}:\n"));
        for v in 0..3 {
            text.push_str(&format!("  - annotations:\n      category: Database\n      images: |\n        - name: chart{c}\n          image: docker.io/bitnami/chart{c}:1.{v}.0-debian-12-r0\n      licenses: Apache-2.0\n    apiVersion: v2\n    appVersion: 1.{v}.0\n    created: \"2024-07-22T11:25:35.424530498Z\"\n    dependencies:\n    - name: common\n      repository: oci://registry-1.docker.io/bitnamicharts\n      tags:\n      - bitnami-common\n      version: 2.x.x\n    description: chart{c} is a generated chart, version 0.{v}.0.\n    digest: {:064x}\n    home: https://bitnami.com\n    maintainers:\n    - name: Broadcom, Inc. All Rights Reserved.\n      url: https://github.com/bitnami/charts\n    name: chart{c}\n    urls:\n    - https://charts.bitnami.com/bitnami/chart{c}-0.{v}.0.tgz\n    version: 0.{v}.0\n", c * 10 + v));
        }
    }
    text.push_str("generated: \"2024-07-22T11:25:35.405163826Z\"\n");
    let idx = same(&text);
    assert_eq!(idx.entries.len(), 3);
    assert_eq!(idx.entries["chart2"][1].version, "0.1.0");
}

// ---- generated documents ----

/// Text that stresses quoting: indicators, colons, hashes, quotes, escapes, spaces at the ends,
/// line breaks and non-ASCII.
fn tricky() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-z0-9 .:#'\"\\\\/\\-?|>&*!%@`{}\\[\\],\n\té~]{0,24}").unwrap()
}

fn chart_version() -> impl Strategy<Value = ChartVersion> {
    (
        tricky(),
        tricky(),
        proptest::collection::vec(tricky(), 0..3),
        proptest::collection::btree_map(tricky(), tricky(), 0..3),
        any::<bool>(),
        proptest::option::of(tricky()),
        proptest::collection::vec((tricky(), tricky()), 0..2),
    )
        .prop_map(
            |(version, description, urls, annotations, deprecated, created, deps)| ChartVersion {
                name: "demo".into(),
                version,
                description,
                urls,
                annotations,
                deprecated,
                created,
                dependencies: deps
                    .into_iter()
                    .map(|(name, repository)| Dependency {
                        name,
                        repository,
                        ..Default::default()
                    })
                    .collect(),
                maintainers: vec![Maintainer {
                    name: "m".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        )
}

fn index() -> impl Strategy<Value = IndexFile> {
    (
        proptest::collection::btree_map(
            "[a-z][a-z0-9-]{0,8}",
            proptest::collection::vec(chart_version(), 1..3),
            1..3,
        ),
        proptest::option::of(proptest::collection::btree_map(
            "[a-zA-Z]{1,8}",
            tricky(),
            0..3,
        )),
    )
        .prop_map(|(entries, info)| IndexFile {
            api_version: "v1".into(),
            entries,
            server_info: info.map(|m| {
                m.into_iter()
                    .map(|(k, v)| (k, serde_json::Value::String(v)))
                    .collect()
            }),
            ..Default::default()
        })
}

/// How a test emitter writes a string: the styles Go's emitters use, picked at random.
#[derive(Clone, Copy, Debug)]
struct Style {
    fold_at: usize,
    prefer_single: bool,
    indent_seqs: bool,
}

fn plain_ok(s: &str) -> bool {
    !s.is_empty()
        && s.trim() == s
        && !s.contains(['\n', '\t', '\'', '"', '\\'])
        && !s.contains(": ")
        && !s.contains(" #")
        && !s.ends_with(':')
        && !s.starts_with([
            ',', '[', ']', '{', '}', '#', '&', '*', '!', '|', '>', '%', '@', '`', '-', '?', ':',
        ])
        && !matches!(s, "~" | "null" | "Null" | "NULL")
}

fn emit_str(s: &str, indent: usize, st: Style) -> String {
    let pad = " ".repeat(indent + 2);
    if plain_ok(s) {
        // Fold long plain scalars at spaces, as yaml.v2 does.
        let mut out = String::new();
        let mut col = 0;
        for (i, w) in s.split(' ').enumerate() {
            if i > 0 {
                if col > st.fold_at && !w.is_empty() && !out.ends_with(' ') {
                    out.push('\n');
                    out.push_str(&pad);
                    col = 0;
                } else {
                    out.push(' ');
                }
            }
            out.push_str(w);
            col += w.len() + 1;
        }
        if out
            .lines()
            .all(|l| !l.trim().is_empty() && l.trim() == l.trim_start())
        {
            return out;
        }
    }
    if s.contains('\n')
        && !s.starts_with([' ', '\n'])
        && !s.contains(['\t'])
        && s.trim_end_matches('\n').lines().all(|l| !l.ends_with(' '))
    {
        let body = s.trim_end_matches('\n');
        let chomp = match s.len() - body.len() {
            0 => "-",
            1 => "",
            _ => return emit_double(s, &pad, st),
        };
        let mut out = format!("|{chomp}");
        for l in body.split('\n') {
            out.push('\n');
            if !l.is_empty() {
                out.push_str(&pad);
                out.push_str(l);
            }
        }
        return out;
    }
    if st.prefer_single && !s.contains(['\n', '\t']) && s.trim() == s {
        return format!("'{}'", s.replace('\'', "''"));
    }
    emit_double(s, &pad, st)
}

fn emit_double(s: &str, pad: &str, st: Style) -> String {
    let mut out = String::from("\"");
    let mut col = 0;
    let chars: Vec<char> = s.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        // A break never goes before white space or the closing quote: the next line's leading
        // white space would be dropped.
        let next_is_text = chars.get(i + 1).is_some_and(|n| !matches!(n, ' ' | '\t'));
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            ' ' if col > st.fold_at && next_is_text => {
                // An escaped break keeps the space on the first line.
                out.push_str(" \\\n");
                out.push_str(pad);
                col = 0;
                continue;
            }
            c => out.push(c),
        }
        col += 1;
    }
    out.push('"');
    out
}

fn emit_seq(out: &mut String, key: &str, items: &[String], indent: usize, st: Style) {
    if items.is_empty() {
        return;
    }
    out.push_str(&format!("{}{key}:\n", " ".repeat(indent)));
    let d = if st.indent_seqs { indent + 2 } else { indent };
    for i in items {
        out.push_str(&format!("{}- {}\n", " ".repeat(d), emit_str(i, d, st)));
    }
}

fn emit(idx: &IndexFile, st: Style) -> String {
    let mut out = String::from("apiVersion: v1\nentries:\n");
    for (name, versions) in &idx.entries {
        out.push_str(&format!("  {name}:\n"));
        let d = if st.indent_seqs { 4 } else { 2 };
        let k = d + 2;
        let pad = " ".repeat(k);
        for v in versions {
            let mut lines = String::new();
            if !v.annotations.is_empty() {
                lines.push_str(&format!("{pad}annotations:\n"));
                for (a, b) in &v.annotations {
                    let key = if plain_ok(a) && !a.contains(':') {
                        a.clone()
                    } else {
                        emit_double(
                            a,
                            "",
                            Style {
                                fold_at: usize::MAX,
                                ..st
                            },
                        )
                    };
                    lines.push_str(&format!("{pad}  {key}: {}\n", emit_str(b, k + 2, st)));
                }
            }
            if let Some(c) = &v.created {
                lines.push_str(&format!("{pad}created: {}\n", emit_str(c, k, st)));
            }
            if !v.dependencies.is_empty() {
                lines.push_str(&format!("{pad}dependencies:\n"));
                let dd = if st.indent_seqs { k + 2 } else { k };
                for dep in &v.dependencies {
                    lines.push_str(&format!(
                        "{}- name: {}\n",
                        " ".repeat(dd),
                        emit_str(&dep.name, dd + 2, st)
                    ));
                    lines.push_str(&format!(
                        "{}  repository: {}\n",
                        " ".repeat(dd),
                        emit_str(&dep.repository, dd + 2, st)
                    ));
                }
            }
            if v.deprecated {
                lines.push_str(&format!("{pad}deprecated: true\n"));
            }
            if !v.description.is_empty() {
                lines.push_str(&format!(
                    "{pad}description: {}\n",
                    emit_str(&v.description, k, st)
                ));
            }
            lines.push_str(&format!(
                "{pad}maintainers:\n{}- name: m\n",
                " ".repeat(if st.indent_seqs { k + 2 } else { k })
            ));
            lines.push_str(&format!("{pad}name: demo\n"));
            emit_seq(&mut lines, "urls", &v.urls, k, st);
            if !v.version.is_empty() {
                lines.push_str(&format!("{pad}version: {}\n", emit_str(&v.version, k, st)));
            }
            // The first line of an entry goes after its dash.
            out.push_str(&" ".repeat(d));
            out.push_str("- ");
            out.push_str(&lines[k..]);
        }
    }
    if let Some(info) = &idx.server_info {
        if info.is_empty() {
            out.push_str("serverInfo: {}\n");
        } else {
            out.push_str("serverInfo:\n");
            for (k, v) in info {
                let v = v.as_str().unwrap();
                // Untyped: plain only where no schema reads it as anything but text.
                let text = if plain_ok(v) && super::scalar::plain_is_text(v) {
                    emit_str(v, 2, st)
                } else {
                    emit_double(v, "    ", st)
                };
                out.push_str(&format!("  {k}: {text}\n"));
            }
        }
    }
    out
}

fn style() -> impl Strategy<Value = Style> {
    (4usize..40, any::<bool>(), any::<bool>()).prop_map(|(fold_at, prefer_single, indent_seqs)| {
        Style {
            fold_at,
            prefer_single,
            indent_seqs,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Indexes written the ways Go's emitters write them: the fast reader takes every one, and
    /// reads back what was written, as serde-saphyr does.
    #[test]
    fn takes_and_agrees_on_generated_indexes(idx in index(), st in style()) {
        let text = emit(&idx, st);
        let f = fast(&text);
        prop_assert!(f.is_some(), "the fast reader declined:\n{}", text);
        prop_assert_eq!(f.as_ref(), Some(&idx), "not what was written:\n{}", text);
        prop_assert_eq!(f, slow(&text), "readings differ:\n{}", text);
    }

    /// serde-saphyr's own emitter: whatever the fast reader takes, it reads the same.
    #[test]
    fn agrees_on_what_serde_saphyr_writes(idx in index()) {
        let text = serde_saphyr::to_string(&idx).unwrap();
        agrees(&text)?;
    }

    /// Damaged documents: wherever the fast reader still answers, it answers as serde-saphyr.
    #[test]
    fn agrees_on_damaged_indexes(
        idx in index(),
        st in style(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0usize..3, "[ \n\t:#'\"\\\\|>\\-a&*!\\[\\]{}]{0,3}"), 1..4),
    ) {
        let mut text = emit(&idx, st).into_bytes();
        for (at, cut, insert) in edits {
            let i = at.index(text.len() + 1);
            let j = (i + cut).min(text.len());
            text.splice(i..j, insert.bytes());
        }
        if let Ok(text) = String::from_utf8(text) {
            agrees(&text)?;
        }
    }
}
