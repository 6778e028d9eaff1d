//! A chart's README as HTML that cannot act in the reader's browser: Markdown rendered with
//! pulldown-cmark, images replaced by their alt text (a remote image would leak the reader's
//! address and does not exist behind an air gap), then sanitised with ammonia: no scripts, no
//! event attributes, no styles, links only to `http`, `https` and `mailto` (and in-page
//! anchors), each with `rel="noopener nofollow noreferrer"`. Pure: bytes in, HTML out.

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};

/// Most README bytes rendered; a longer one is cut (at a character boundary) and says so.
pub const MAX_README: usize = 512 << 10;
/// Deepest nesting of block quotes and lists rendered: deeper Markdown is cut to text.
const MAX_DEPTH: usize = 64;

/// Renders `markdown` to sanitised HTML (cut to `MAX_README` bytes first).
pub fn render_readme(markdown: &str) -> String {
    let (text, cut) = if markdown.len() > MAX_README {
        let mut end = MAX_README;
        while !markdown.is_char_boundary(end) {
            end -= 1;
        }
        (&markdown[..end], true)
    } else {
        (markdown, false)
    };
    let mut options = Options::empty();
    options.insert(Options::ENABLE_TABLES);
    options.insert(Options::ENABLE_STRIKETHROUGH);
    options.insert(Options::ENABLE_TASKLISTS);
    let mut depth = 0usize;
    let mut in_image = 0usize;
    let events = Parser::new_ext(text, options).filter_map(|e| match e {
        // an image becomes its alt text (the events inside it)
        Event::Start(Tag::Image { .. }) => {
            in_image += 1;
            None
        }
        Event::End(TagEnd::Image) => {
            in_image = in_image.saturating_sub(1);
            None
        }
        Event::Start(t @ (Tag::BlockQuote(_) | Tag::List(_) | Tag::Item)) => {
            depth += 1;
            (depth <= MAX_DEPTH).then_some(Event::Start(t))
        }
        Event::End(t @ (TagEnd::BlockQuote(_) | TagEnd::List(_) | TagEnd::Item)) => {
            depth = depth.saturating_sub(1);
            (depth < MAX_DEPTH).then_some(Event::End(t))
        }
        other => Some(other),
    });
    let mut html = String::with_capacity(text.len() * 3 / 2);
    pulldown_cmark::html::push_html(&mut html, events);
    if cut {
        html.push_str("<p><em>(README cut at 512 KiB)</em></p>");
    }
    sanitize(&html)
}

/// Only inert HTML survives.
fn sanitize(html: &str) -> String {
    let mut b = ammonia::Builder::default();
    b.rm_tags([
        "img", "picture", "source", "video", "audio", "iframe", "svg", "math",
    ])
    .url_schemes(["http", "https", "mailto"].into_iter().collect())
    .link_rel(Some("noopener nofollow noreferrer"))
    .strip_comments(true);
    b.clean(html).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inert(html: &str) {
        let lower = html.to_ascii_lowercase();
        for bad in [
            "<script",
            "onerror",
            "onload",
            "onclick",
            "javascript:",
            "data:",
            "<img",
            "<iframe",
            "<style",
            "style=",
        ] {
            assert!(!lower.contains(bad), "{bad} in {html}");
        }
    }

    #[test]
    fn markdown_renders_and_nothing_in_it_can_run() {
        let md = "# Title\n\nSome *text* and [a link](https://example.com).\n\n\
                  <script>alert(1)</script>\n\n<img src=x onerror=alert(1)>\n\n\
                  [click](javascript:alert(1)) [data](data:text/html,<script>alert(1)</script>)\n\n\
                  ![the logo](https://tracker.example.com/pixel.png)\n\n\
                  <a href=\"https://x.io\" onclick=\"steal()\">x</a> <div style=\"position:fixed\">y</div>\n\n\
                  | a | b |\n|---|---|\n| 1 | 2 |\n";
        let html = render_readme(md);
        inert(&html);
        assert!(html.contains("<h1>Title</h1>"), "{html}");
        assert!(html.contains("<em>text</em>"));
        assert!(
            html.contains("rel=\"noopener nofollow noreferrer\""),
            "{html}"
        );
        assert!(
            html.contains("the logo"),
            "an image leaves its alt text: {html}"
        );
        assert!(!html.contains("tracker.example.com"), "{html}");
        assert!(html.contains("<table>"), "{html}");
    }

    #[test]
    fn huge_and_deeply_nested_readmes_are_cut() {
        let big = "word ".repeat(1 << 20);
        let html = render_readme(&big);
        assert!(html.len() < MAX_README * 2);
        assert!(html.contains("README cut"));
        let deep = format!("{}deep\n", "> ".repeat(10_000));
        let html = render_readme(&deep);
        inert(&html);
        assert!(html.matches("<blockquote>").count() <= MAX_DEPTH);
        let lists = format!(
            "{}x\n",
            (0..5000)
                .map(|i| format!("{}- ", "  ".repeat(i % 200)))
                .collect::<String>()
        );
        inert(&render_readme(&lists));
    }
}
