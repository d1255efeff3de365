//! Text-level XML helpers for rewriting web.config files without an XML writer: roxmltree
//! only reads, so changes are byte-range splices on the original text ([`Edits`]), which keeps
//! comments, attribute order, quoting and indentation exactly as the user wrote them. Also
//! attribute escaping, the encodings Visual Studio saves web.config in, and the indentation
//! and line-ending conventions of a document.

use std::ops::Range;

use roxmltree::Node;

/// Escapes text for an XML attribute value in double quotes (also `'`, and the whitespace
/// characters a parser would otherwise normalise to spaces).
pub(crate) fn escape_attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    out
}

/// How a file's text was stored, so that it can be written back the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// UTF-8 without a byte-order mark.
    Utf8,
    /// UTF-8 with a byte-order mark (Visual Studio's default for web.config).
    Utf8Bom,
    /// UTF-16 little-endian with a byte-order mark.
    Utf16Le,
    /// UTF-16 big-endian with a byte-order mark.
    Utf16Be,
}

/// Decodes UTF-8 (with or without BOM) or UTF-16 with BOM; `None` for anything else.
pub(crate) fn decode(bytes: &[u8]) -> Option<(String, Encoding)> {
    let utf16 = |rest: &[u8], from: fn([u8; 2]) -> u16| {
        let chunks = rest.chunks_exact(2);
        if !chunks.remainder().is_empty() {
            return None;
        }
        let units: Vec<u16> = chunks.map(|c| from([c[0], c[1]])).collect();
        String::from_utf16(&units).ok()
    };
    if let Some(rest) = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]) {
        return String::from_utf8(rest.to_vec())
            .ok()
            .map(|s| (s, Encoding::Utf8Bom));
    }
    if let Some(rest) = bytes.strip_prefix(&[0xFF, 0xFE]) {
        return utf16(rest, u16::from_le_bytes).map(|s| (s, Encoding::Utf16Le));
    }
    if let Some(rest) = bytes.strip_prefix(&[0xFE, 0xFF]) {
        return utf16(rest, u16::from_be_bytes).map(|s| (s, Encoding::Utf16Be));
    }
    String::from_utf8(bytes.to_vec())
        .ok()
        .map(|s| (s, Encoding::Utf8))
}

/// Encodes `text` as `encoding`, byte-order mark included.
pub(crate) fn encode(text: &str, encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::Utf8 => text.as_bytes().to_vec(),
        Encoding::Utf8Bom => [&[0xEF, 0xBB, 0xBF][..], text.as_bytes()].concat(),
        Encoding::Utf16Le => [0xFF, 0xFE]
            .into_iter()
            .chain(text.encode_utf16().flat_map(u16::to_le_bytes))
            .collect(),
        Encoding::Utf16Be => [0xFE, 0xFF]
            .into_iter()
            .chain(text.encode_utf16().flat_map(u16::to_be_bytes))
            .collect(),
    }
}

/// A set of replacements of byte ranges of one text, applied together. Ranges refer to the
/// original text; an insertion is an empty range. Insertions at the same position keep the
/// order in which they were added.
#[derive(Debug, Default)]
pub(crate) struct Edits {
    list: Vec<(Range<usize>, String)>,
}

impl Edits {
    /// Replaces `range` of the original text with `text`.
    pub(crate) fn replace(&mut self, range: Range<usize>, text: impl Into<String>) {
        self.list.push((range, text.into()));
    }

    /// Inserts `text` at byte offset `at` of the original text.
    pub(crate) fn insert(&mut self, at: usize, text: impl Into<String>) {
        self.list.push((at..at, text.into()));
    }

    /// No edits recorded.
    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The edited text. Overlapping replacements, ranges outside the text or not on character
    /// boundaries are errors (they would be a bug in the caller), reported as a message.
    pub(crate) fn apply(mut self, src: &str) -> Result<String, String> {
        self.list.sort_by_key(|(r, _)| (r.start, r.end));
        let mut out = String::with_capacity(src.len() + 1024);
        let mut pos = 0;
        for (range, text) in &self.list {
            if range.start < pos || range.end < range.start {
                return Err(format!("overlapping edits at byte {}", range.start));
            }
            let before = src
                .get(pos..range.start)
                .ok_or_else(|| format!("edit at byte {} is outside the text", range.start))?;
            if src.get(range.clone()).is_none() {
                return Err(format!("edit at byte {} is outside the text", range.start));
            }
            out.push_str(before);
            out.push_str(text);
            pos = range.end;
        }
        out.push_str(&src[pos..]);
        Ok(out)
    }
}

/// `"\r\n"` when the text uses Windows line endings, else `"\n"`.
pub(crate) fn newline(text: &str) -> &'static str {
    if text.contains("\r\n") {
        "\r\n"
    } else {
        "\n"
    }
}

/// The whitespace that precedes `pos` on its line, when only whitespace does (the element at
/// `pos` starts its line); `None` when other text comes first on that line.
pub(crate) fn line_indent(text: &str, pos: usize) -> Option<&str> {
    let before = text.get(..pos)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let indent = &before[line_start..];
    indent
        .chars()
        .all(|c| c == ' ' || c == '\t')
        .then_some(indent)
}

/// The indentation of `node`'s line, or `""` when the node does not start its line.
pub(crate) fn indent_of<'t>(text: &'t str, node: Node) -> &'t str {
    line_indent(text, node.range().start).unwrap_or("")
}

/// One level of indentation as the document uses it: what the root element's first child
/// element adds to the root's own indentation; two spaces when that tells nothing.
pub(crate) fn indent_unit(text: &str, root: Node) -> String {
    let base = indent_of(text, root);
    root.children()
        .find(|n| n.is_element())
        .and_then(|child| line_indent(text, child.range().start))
        .and_then(|child| child.strip_prefix(base))
        .filter(|unit| !unit.is_empty())
        .unwrap_or("  ")
        .to_string()
}

/// The byte range to delete to remove `node` together with its line: its indentation and the
/// line break before it, when the node sits on a line of its own.
pub(crate) fn removal_range(text: &str, node: Node) -> Range<usize> {
    let range = node.range();
    let Some(indent) = line_indent(text, range.start) else {
        return range;
    };
    let rest = text.get(range.end..).unwrap_or("");
    let line_rest = rest.split('\n').next().unwrap_or("");
    if !line_rest.trim().is_empty() {
        return range;
    }
    let mut start = range.start - indent.len();
    if text[..start].ends_with("\r\n") {
        start -= 2;
    } else if text[..start].ends_with('\n') {
        start -= 1;
    }
    start..range.end
}

/// Where `node`'s end tag (`</name>`) starts; `None` for a self-closing element (`<name/>`).
pub(crate) fn end_tag_start(text: &str, node: Node) -> Option<usize> {
    let range = node.range();
    let src = text.get(range.clone())?;
    if src.ends_with("/>") {
        return None;
    }
    src.rfind("</").map(|i| range.start + i)
}

/// Re-indents a block of lines written with two-space indentation starting at column 0:
/// each line gets `indent` plus `unit` per two leading spaces, joined with `nl`, and a line
/// break plus `indent` in front of the whole block.
pub(crate) fn reindent(block: &str, indent: &str, unit: &str, nl: &str) -> String {
    let mut out = String::new();
    for line in block.lines() {
        let trimmed = line.trim_start_matches(' ');
        let level = (line.len() - trimmed.len()) / 2;
        out.push_str(nl);
        out.push_str(indent);
        for _ in 0..level {
            out.push_str(unit);
        }
        out.push_str(trimmed.trim_end());
    }
    out
}

/// Shifts a block cut out of a document (its first line without indentation, the others
/// with `from` in front) to start its first line at column 0 and the others at `from`
/// removed: the result suits [`reindent`] when the source used two-space indentation.
pub(crate) fn dedent(block: &str, from: &str) -> String {
    block
        .lines()
        .enumerate()
        .map(|(i, line)| {
            if i == 0 {
                line.to_string()
            } else {
                line.strip_prefix(from)
                    .unwrap_or(line.trim_start())
                    .to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The 1-based line of byte offset `pos`.
pub(crate) fn line_of(text: &str, pos: usize) -> usize {
    text.get(..pos).map_or(0, |t| t.matches('\n').count()) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_attribute_values() {
        assert_eq!(
            escape_attr(r#"a&b<c>"d"'e'	f"#),
            "a&amp;b&lt;c&gt;&quot;d&quot;&apos;e&apos;&#9;f"
        );
        assert_eq!(
            escape_attr(r"C:\Python312\python.exe"),
            r"C:\Python312\python.exe"
        );
    }

    #[test]
    fn decodes_and_encodes_every_encoding() {
        let text = "<a b=\"é\"/>\r\n";
        for enc in [
            Encoding::Utf8,
            Encoding::Utf8Bom,
            Encoding::Utf16Le,
            Encoding::Utf16Be,
        ] {
            let bytes = encode(text, enc);
            assert_eq!(decode(&bytes), Some((text.to_string(), enc)), "{enc:?}");
        }
        assert_eq!(decode(&[0xFF, 0xFE, 0x41]), None);
        assert_eq!(decode(&[0xC3]), None);
    }

    #[test]
    fn edits_apply_in_position_order() {
        let mut e = Edits::default();
        e.insert(5, "!");
        e.replace(0..1, "J");
        e.insert(5, "?");
        assert_eq!(e.apply("hello world").as_deref(), Ok("Jello!? world"));
        let mut e = Edits::default();
        e.replace(0..3, "x");
        e.replace(2..4, "y");
        assert!(e.apply("abcdef").is_err());
        let mut e = Edits::default();
        e.insert(99, "x");
        assert!(e.apply("abc").is_err());
    }

    #[test]
    fn finds_indentation_end_tags_and_removal_ranges() {
        let text = "<r>\r\n\t<a>\r\n\t\t<b/>\r\n\t\t<c x='1'></c>\r\n\t</a>\r\n</r>";
        let doc = roxmltree::Document::parse(text).unwrap();
        let root = doc.root_element();
        assert_eq!(newline(text), "\r\n");
        assert_eq!(indent_unit(text, root), "\t");
        let a = root.first_element_child().unwrap();
        let b = a.first_element_child().unwrap();
        let c = b.next_sibling_element().unwrap();
        assert_eq!(indent_of(text, b), "\t\t");
        assert_eq!(end_tag_start(text, b), None);
        assert_eq!(
            &text[end_tag_start(text, c).unwrap()..c.range().end],
            "</c>"
        );
        assert_eq!(
            &text[end_tag_start(text, a).unwrap()..a.range().end],
            "</a>"
        );
        let r = removal_range(text, b);
        assert_eq!(&text[r.clone()], "\r\n\t\t<b/>");
        let mut e = Edits::default();
        e.replace(r, "");
        let out = e.apply(text).unwrap();
        assert_eq!(out, "<r>\r\n\t<a>\r\n\t\t<c x='1'></c>\r\n\t</a>\r\n</r>");
        assert_eq!(line_of(text, c.range().start), 4);
    }

    #[test]
    fn reindents_blocks() {
        let block = "<a>\n  <b/>\n</a>";
        assert_eq!(
            reindent(block, "\t", "\t", "\r\n"),
            "\r\n\t<a>\r\n\t\t<b/>\r\n\t</a>"
        );
        assert_eq!(dedent("<a>\n    <b/>\n  </a>", "  "), "<a>\n  <b/>\n</a>");
    }
}
