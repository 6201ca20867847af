//! What a request body may be before it is parsed: how deep it nests and, in YAML, how many aliases it holds,
//! checked by one linear scan of its bytes.
//!
//! Parsers pay for nesting before they refuse it: libyaml rescans its stack of open flow collections for every
//! token, so 1 MiB of `[` cost 10 s of a core before serde_yaml's recursion limit was even reached, and each
//! YAML alias replays the events of its anchor, so a few aliases of a large anchor multiply the work. A body past
//! these bounds is refused here, before any parser sees it, the same way in both formats.

use crate::error::{ApiError, ErrorCode};
use crate::job::BodyFormat;

/// The deepest nesting of collections a body may have, in JSON and YAML alike. A job spec nests four deep at most;
/// serde_json's own limit is 128.
pub const MAX_DEPTH: usize = 32;

/// The most aliases (`*name`) a YAML body may hold: each one makes the parser replay its anchor's events.
pub const MAX_ALIASES: usize = 64;

/// Refuses a body that nests deeper than [`MAX_DEPTH`] or, in YAML, holds more than [`MAX_ALIASES`] aliases:
/// `body_too_complex` on field `body`.
pub fn check(body: &[u8], format: BodyFormat) -> Result<(), ApiError> {
    match format {
        BodyFormat::Json => json_depth(body),
        BodyFormat::Yaml => Yaml::default().scan(body),
    }
    .map_err(|why| {
        tracing::info!(format = format.name(), bytes = body.len(), why, "body refused before parsing");
        ApiError::new(ErrorCode::BodyTooComplex, why).with_field("body")
    })
}

fn too_deep() -> String {
    format!("the body nests more than {MAX_DEPTH} levels deep")
}

/// JSON nests only by `[` and `{`; brackets inside strings do not count.
fn json_depth(body: &[u8]) -> Result<(), String> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &c in body {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(too_deep());
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Quote {
    Single,
    Double,
}

/// The scan's state across lines. It bounds YAML's structure from above rather than parsing it: block nesting is
/// the number of open indentation levels plus the `- ` and `? ` entries opened on the line, flow nesting the open
/// `[` and `{`; quoted scalars, comments and block scalars (`|`, `>`) are skipped, since brackets in text are text.
#[derive(Default)]
struct Yaml {
    /// Indentations of the open block levels, increasing.
    indents: Vec<usize>,
    /// Open flow collections.
    flow: usize,
    /// Inside a quoted scalar, which may span lines.
    quote: Option<Quote>,
    /// Inside a block scalar begun on a line with this indentation: lines indented further are its text.
    block_scalar: Option<usize>,
    aliases: usize,
}

/// Where a quoted scalar, an alias or an indicator may begin: at the start of a line, after a space or a flow
/// indicator. Elsewhere the character is part of a plain scalar (`don't`, `a*b`).
fn starts_node(prev: Option<u8>) -> bool {
    matches!(prev, None | Some(b' ' | b'\t' | b'[' | b'{' | b',' | b':'))
}

impl Yaml {
    fn scan(mut self, body: &[u8]) -> Result<(), String> {
        for line in body.split(|c| *c == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            self.line(line)?;
        }
        Ok(())
    }

    fn line(&mut self, line: &[u8]) -> Result<(), String> {
        let indent = line.iter().take_while(|c| **c == b' ').count();
        let mut rest = &line[indent..];
        let blank = rest.iter().all(|c| c.is_ascii_whitespace());
        if let Some(parent) = self.block_scalar {
            if blank || indent > parent {
                return Ok(());
            }
            self.block_scalar = None;
        }
        // Indentation structures only the block context, outside quotes. A line that opens a flow collection at its
        // indentation is that collection, counted by its bracket, not a block level of its own.
        let mut levels = self.indents.len();
        if self.quote.is_none() && self.flow == 0 {
            if blank || rest.starts_with(b"#") {
                return Ok(());
            }
            if indent == 0 && (rest.starts_with(b"---") || rest.starts_with(b"...")) {
                self.indents.clear();
                rest = &rest[3..];
            } else {
                while self.indents.last().is_some_and(|i| *i > indent) {
                    self.indents.pop();
                }
                if self.indents.last() != Some(&indent) {
                    self.indents.push(indent);
                }
            }
            levels = self.indents.len().saturating_sub(usize::from(rest.starts_with(b"[") || rest.starts_with(b"{")));
        }
        let mut entries = 0;
        let mut prev: Option<u8> = None;
        let mut i = 0;
        while i < rest.len() {
            let c = rest[i];
            let next = rest.get(i + 1).copied();
            i += 1;
            match self.quote {
                Some(Quote::Double) => {
                    match c {
                        b'\\' => i += 1,
                        b'"' => self.quote = None,
                        _ => {}
                    }
                    prev = Some(c);
                    continue;
                }
                Some(Quote::Single) => {
                    if c == b'\'' {
                        // `''` is a quote inside the scalar.
                        if next == Some(b'\'') {
                            i += 1;
                        } else {
                            self.quote = None;
                        }
                    }
                    prev = Some(c);
                    continue;
                }
                None => {}
            }
            let space_after = matches!(next, None | Some(b' ' | b'\t'));
            match c {
                b'#' if matches!(prev, None | Some(b' ' | b'\t')) => break,
                b'"' if starts_node(prev) => self.quote = Some(Quote::Double),
                b'\'' if starts_node(prev) => self.quote = Some(Quote::Single),
                b'[' | b'{' => self.flow += 1,
                b']' | b'}' => self.flow = self.flow.saturating_sub(1),
                b'-' | b'?' if self.flow == 0 && space_after && matches!(prev, None | Some(b' ' | b'\t')) => {
                    entries += 1;
                }
                b'*' if starts_node(prev) && !space_after && !matches!(next, Some(b',' | b']' | b'}')) => {
                    self.aliases += 1;
                    if self.aliases > MAX_ALIASES {
                        return Err(format!("the body holds more than {MAX_ALIASES} YAML aliases"));
                    }
                }
                b'|' | b'>' if self.flow == 0 && matches!(prev, None | Some(b' ' | b'\t')) => {
                    let header = rest[i..].iter().take_while(|c| matches!(c, b'-' | b'+' | b'0'..=b'9')).count();
                    let after = &rest[i + header..];
                    let trailer = after.iter().position(|c| *c == b'#').unwrap_or(after.len());
                    if after[..trailer].iter().all(|c| c.is_ascii_whitespace()) {
                        self.block_scalar = Some(indent);
                        break;
                    }
                }
                _ => {}
            }
            if levels + entries + self.flow > MAX_DEPTH {
                return Err(too_deep());
            }
            prev = Some(c);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks a body in `format` against the bounds: `Ok` or the message's start.
    fn check_body(format: BodyFormat, body: &str, expected: Result<(), &str>) {
        let got = check(body.as_bytes(), format);
        match (got, expected) {
            (Ok(()), Ok(())) => {}
            (Err(e), Err(start)) => {
                assert_eq!((e.code, e.field.as_deref()), (ErrorCode::BodyTooComplex, Some("body")));
                assert!(e.message.starts_with(start), "{:?} for {body:?}", e.message);
            }
            (got, _) => panic!("{got:?} for {body:?}, expected {expected:?}"),
        }
    }

    fn nested(open: &str, close: &str, depth: usize) -> String {
        format!("{}{}", open.repeat(depth), close.repeat(depth))
    }

    #[test]
    fn json_nesting_is_bounded_and_brackets_in_strings_do_not_count() {
        let json = BodyFormat::Json;
        check_body(json, &nested("[", "]", MAX_DEPTH), Ok(()));
        check_body(json, &nested("[", "]", MAX_DEPTH + 1), Err("the body nests more than 32"));
        check_body(json, &nested("{\"a\":", "}", MAX_DEPTH + 1), Err("the body nests"));
        check_body(json, &format!("{{\"a\": \"{}\\\"[\"}}", "[".repeat(100)), Ok(()));
        // Siblings do not add up: only what is open at once counts.
        check_body(json, &format!("[{}]", vec![nested("[", "]", MAX_DEPTH - 1); 50].join(",")), Ok(()));
    }

    #[test]
    fn yaml_flow_and_block_nesting_are_bounded() {
        let yaml = BodyFormat::Yaml;
        check_body(yaml, &nested("[", "]", MAX_DEPTH), Ok(()));
        check_body(yaml, &nested("[", "]", MAX_DEPTH + 1), Err("the body nests more than 32"));
        check_body(yaml, &"[".repeat(1 << 20), Err("the body nests more than 32"));
        check_body(yaml, &format!("a: {}", nested("{b: ", "}", MAX_DEPTH)), Err("the body nests"));
        check_body(yaml, &format!("{}x\n", "- ".repeat(MAX_DEPTH + 1)), Err("the body nests"));
        check_body(yaml, &format!("a:\n  b: [\n{}\n", "[".repeat(MAX_DEPTH - 3)), Ok(()));
        check_body(yaml, &format!("a:\n  b: [\n{}\n", "[".repeat(MAX_DEPTH - 2)), Err("the body nests"));
        check_body(yaml, "---[1]\n", Ok(()));
        let indented = |depth: usize| (0..depth).map(|d| format!("{}k{d}:\n", "  ".repeat(d))).collect::<String>();
        check_body(yaml, &indented(MAX_DEPTH), Ok(()));
        check_body(yaml, &indented(MAX_DEPTH + 1), Err("the body nests"));
    }

    #[test]
    fn yaml_text_is_not_structure() {
        let yaml = BodyFormat::Yaml;
        let brackets = "[".repeat(100);
        check_body(yaml, &format!("a: \"{brackets}\"\nb: '{brackets} it''s'\n"), Ok(()));
        check_body(yaml, &format!("a: 1 # {brackets}\n"), Ok(()));
        check_body(yaml, &format!("command: |\n  {brackets}\n\n  - - - - -\nname: web\n"), Ok(()));
        check_body(yaml, &format!("a: \"multi\n  line {brackets}\"\n"), Ok(()));
        check_body(yaml, "schedule: \"*/5 * * * *\"\nowner: don't\n", Ok(()));
        // The same text outside a block scalar is structure again.
        check_body(yaml, &format!("command: |\n  text\nb: {brackets}\n"), Err("the body nests"));
        let full = include_str!("../../examples/hello.yaml");
        check_body(yaml, full, Ok(()));
    }

    #[test]
    fn yaml_aliases_are_bounded() {
        let yaml = BodyFormat::Yaml;
        let with = |n: usize| format!("a: &x [1, 2]\nb: [{}]\n", vec!["*x"; n].join(", "));
        check_body(yaml, &with(MAX_ALIASES), Ok(()));
        check_body(yaml, &with(MAX_ALIASES + 1), Err("the body holds more than 64 YAML aliases"));
    }
}
