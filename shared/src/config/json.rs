//! A small strict JSON parser that keeps the byte offset of every value and key, so that type
//! errors found later can name the line and column in the original file. It runs on the
//! output of [`super::preprocess::blank_comments`], whose offsets equal the original ones.
//!
//! Numbers are kept as their source text; the decoder decides whether it wants an integer.

/// Nesting deeper than this is refused (a config is a few levels deep; this bounds the
/// recursion on hostile input).
const MAX_DEPTH: usize = 128;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JVal {
    /// Byte offset of the first byte of the value.
    pub(crate) pos: usize,
    pub(crate) kind: JKind,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum JKind {
    Null,
    Bool(bool),
    /// The number exactly as written (valid JSON number syntax).
    Num(String),
    Str(String),
    Arr(Vec<JVal>),
    Obj(Vec<JMember>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JMember {
    pub(crate) key: String,
    /// Byte offset of the opening quote of the key.
    pub(crate) key_pos: usize,
    pub(crate) value: JVal,
}

impl JVal {
    /// Short description for "expected X, found Y" messages.
    pub(crate) fn describe(&self) -> String {
        match &self.kind {
            JKind::Null => "null".to_owned(),
            JKind::Bool(b) => b.to_string(),
            JKind::Num(n) => n.clone(),
            JKind::Str(s) => {
                let mut short: String = s.chars().take(40).collect();
                if short.len() < s.len() {
                    short.push('…');
                }
                format!("{short:?}")
            }
            JKind::Arr(_) => "an array".to_owned(),
            JKind::Obj(_) => "an object".to_owned(),
        }
    }

    /// Convert to a plain `serde_json::Value` (for parts of the config that are kept opaque).
    pub(crate) fn to_value(&self) -> serde_json::Value {
        use serde_json::Value;
        match &self.kind {
            JKind::Null => Value::Null,
            JKind::Bool(b) => Value::Bool(*b),
            JKind::Num(n) => serde_json::from_str::<serde_json::Number>(n)
                .map(Value::Number)
                .unwrap_or_else(|_| Value::String(n.clone())),
            JKind::Str(s) => Value::String(s.clone()),
            JKind::Arr(items) => Value::Array(items.iter().map(JVal::to_value).collect()),
            JKind::Obj(members) => Value::Object(
                members
                    .iter()
                    .map(|m| (m.key.clone(), m.value.to_value()))
                    .collect(),
            ),
        }
    }
}

/// A syntax error at a byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub(crate) offset: usize,
    pub(crate) message: String,
}

/// Parse one JSON document (whitespace around it allowed, nothing else).
pub(crate) fn parse(text: &str) -> Result<JVal, SyntaxError> {
    let mut p = Parser {
        src: text.as_bytes(),
        text,
        i: 0,
    };
    p.skip_ws();
    if p.i >= p.src.len() {
        return Err(p.err_at(p.i, "the file is empty (expected a JSON object)"));
    }
    let v = p.value(0)?;
    p.skip_ws();
    if p.i < p.src.len() {
        return Err(p.err_at(p.i, "unexpected text after the end of the top-level JSON value"));
    }
    Ok(v)
}

struct Parser<'a> {
    src: &'a [u8],
    text: &'a str,
    i: usize,
}

impl Parser<'_> {
    fn err_at(&self, offset: usize, message: impl Into<String>) -> SyntaxError {
        SyntaxError {
            offset,
            message: message.into(),
        }
    }

    fn eof(&self, what: &str) -> SyntaxError {
        self.err_at(
            self.src.len(),
            format!("unexpected end of file while reading {what} (truncated file?)"),
        )
    }

    fn peek(&self) -> Option<u8> {
        self.src.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// Describe the character at the cursor for an error message.
    fn found(&self) -> String {
        match self.text.get(self.i..).and_then(|s| s.chars().next()) {
            Some(c) => format!("{c:?}"),
            None => "end of file".to_owned(),
        }
    }

    fn value(&mut self, depth: usize) -> Result<JVal, SyntaxError> {
        if depth > MAX_DEPTH {
            return Err(self.err_at(self.i, format!("nesting deeper than {MAX_DEPTH} levels")));
        }
        let pos = self.i;
        let kind = match self.peek() {
            None => return Err(self.eof("a value")),
            Some(b'{') => self.object(depth)?,
            Some(b'[') => self.array(depth)?,
            Some(b'"') => JKind::Str(self.string()?),
            Some(b't') => self.literal("true", JKind::Bool(true))?,
            Some(b'f') => self.literal("false", JKind::Bool(false))?,
            Some(b'n') => self.literal("null", JKind::Null)?,
            Some(b'-' | b'0'..=b'9') => JKind::Num(self.number()?),
            Some(b'\'') => {
                return Err(self.err_at(pos, "single-quoted strings are not JSON; use double quotes"))
            }
            Some(_) => return Err(self.err_at(pos, format!("expected a JSON value, found {}", self.found()))),
        };
        Ok(JVal { pos, kind })
    }

    fn literal(&mut self, word: &str, kind: JKind) -> Result<JKind, SyntaxError> {
        let end = self.i + word.len();
        if self.src.get(self.i..end) == Some(word.as_bytes()) {
            self.i = end;
            Ok(kind)
        } else {
            Err(self.err_at(self.i, format!("expected a JSON value, found {}", self.found())))
        }
    }

    fn object(&mut self, depth: usize) -> Result<JKind, SyntaxError> {
        self.i += 1; // '{'
        let mut members = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(JKind::Obj(members));
        }
        loop {
            self.skip_ws();
            let key_pos = self.i;
            match self.peek() {
                Some(b'"') => {}
                None => return Err(self.eof("an object")),
                Some(_) => {
                    return Err(self.err_at(
                        key_pos,
                        format!("expected a double-quoted key, found {}", self.found()),
                    ))
                }
            }
            let key = self.string()?;
            self.skip_ws();
            match self.peek() {
                Some(b':') => self.i += 1,
                None => return Err(self.eof("an object")),
                Some(_) => {
                    return Err(self.err_at(
                        self.i,
                        format!("expected ':' after key {key:?}, found {}", self.found()),
                    ))
                }
            }
            self.skip_ws();
            let value = self.value(depth + 1)?;
            members.push(JMember { key, key_pos, value });
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(JKind::Obj(members));
                }
                None => return Err(self.eof("an object")),
                Some(_) => {
                    return Err(self.err_at(
                        self.i,
                        format!(
                            "expected ',' or '}}' after an object member, found {}",
                            self.found()
                        ),
                    ))
                }
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<JKind, SyntaxError> {
        self.i += 1; // '['
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(JKind::Arr(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth + 1)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(JKind::Arr(items));
                }
                None => return Err(self.eof("an array")),
                Some(_) => {
                    return Err(self.err_at(
                        self.i,
                        format!(
                            "expected ',' or ']' after an array element, found {}",
                            self.found()
                        ),
                    ))
                }
            }
        }
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        let start = self.i;
        self.i += 1; // opening quote
        let mut out = String::new();
        let mut run = self.i;
        loop {
            let Some(b) = self.peek() else {
                return Err(self.err_at(start, "unterminated string (missing closing '\"')"));
            };
            match b {
                b'"' => {
                    out.push_str(self.text.get(run..self.i).unwrap_or_default());
                    self.i += 1;
                    return Ok(out);
                }
                b'\\' => {
                    out.push_str(self.text.get(run..self.i).unwrap_or_default());
                    self.escape(&mut out)?;
                    run = self.i;
                }
                0x00..=0x1f => {
                    return Err(self.err_at(
                        self.i,
                        "control character (e.g. a raw newline) inside a string; escape it",
                    ))
                }
                _ => self.i += 1,
            }
        }
    }

    fn escape(&mut self, out: &mut String) -> Result<(), SyntaxError> {
        let at = self.i;
        self.i += 1; // backslash
        let Some(c) = self.peek() else {
            return Err(self.err_at(at, "unterminated string (ends in a backslash)"));
        };
        self.i += 1;
        match c {
            b'"' => out.push('"'),
            b'\\' => out.push('\\'),
            b'/' => out.push('/'),
            b'b' => out.push('\u{8}'),
            b'f' => out.push('\u{c}'),
            b'n' => out.push('\n'),
            b'r' => out.push('\r'),
            b't' => out.push('\t'),
            b'u' => {
                let hi = self.hex4(at)?;
                let ch = if (0xD800..0xDC00).contains(&hi) {
                    // A high surrogate must be followed by \uDC00..\uDFFF.
                    if self.src.get(self.i..self.i + 2) == Some(b"\\u".as_slice()) {
                        let save = self.i;
                        self.i += 2;
                        let lo = self.hex4(save)?;
                        if (0xDC00..0xE000).contains(&lo) {
                            char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
                        } else {
                            None
                        }
                    } else {
                        None
                    }
                } else {
                    char::from_u32(hi)
                };
                // Go replaces invalid surrogates with U+FFFD; so do we.
                out.push(ch.unwrap_or('\u{FFFD}'));
            }
            _ => {
                return Err(self.err_at(
                    at,
                    format!("invalid escape sequence '\\{}' in a string", c as char),
                ))
            }
        }
        Ok(())
    }

    fn hex4(&mut self, escape_at: usize) -> Result<u32, SyntaxError> {
        let digits = self
            .text
            .get(self.i..self.i + 4)
            .filter(|d| d.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| self.err_at(escape_at, "invalid \\u escape (needs 4 hex digits)"))?;
        let v = u32::from_str_radix(digits, 16)
            .map_err(|_| self.err_at(escape_at, "invalid \\u escape (needs 4 hex digits)"))?;
        self.i += 4;
        Ok(v)
    }

    fn number(&mut self) -> Result<String, SyntaxError> {
        let start = self.i;
        let bad = |p: &Self| p.err_at(start, "invalid number");
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.i += 1;
                if let Some(b'0'..=b'9') = self.peek() {
                    return Err(self.err_at(start, "invalid number (leading zero)"));
                }
            }
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(bad(self)),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(bad(self));
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(bad(self));
            }
            self.digits();
        }
        Ok(self.text.get(start..self.i).unwrap_or_default().to_owned())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
    }
}

/// Maps byte offsets to 1-based (line, column); the column counts characters.
#[derive(Debug, Clone)]
pub(crate) struct LineIndex {
    text: String,
    line_starts: Vec<usize>,
}

impl LineIndex {
    pub(crate) fn new(text: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(
            text.bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i + 1),
        );
        LineIndex {
            text: text.to_owned(),
            line_starts,
        }
    }

    pub(crate) fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let start = self.line_starts.get(line - 1).copied().unwrap_or(0);
        let col = match self.text.get(start..offset) {
            Some(s) => s.chars().count(),
            // offset inside a multi-byte char: count bytes instead
            None => offset - start,
        };
        (line, col + 1)
    }
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;

    fn ok(s: &str) -> JVal {
        match parse(s) {
            Ok(v) => v,
            Err(e) => panic!("{s}: {e:?}"),
        }
    }

    fn err(s: &str) -> SyntaxError {
        match parse(s) {
            Ok(v) => panic!("{s}: parsed as {v:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn parses_nested_values_with_offsets() {
        let v = ok(r#" {"a": [1, -2.5e3, "x\u00e9\ud83d\ude00", true, null], "b": {}} "#);
        assert_eq!(v.pos, 1);
        let JKind::Obj(m) = &v.kind else {
            panic!("not an object")
        };
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].key_pos, 2);
        let JKind::Arr(items) = &m[0].value.kind else {
            panic!("not an array")
        };
        assert_eq!(items[1].kind, JKind::Num("-2.5e3".into()));
        assert_eq!(items[2].kind, JKind::Str("xé😀".into()));
        assert_eq!(items[3].pos, 42);
    }

    #[test]
    fn syntax_errors_have_offsets() {
        assert_eq!(err("").offset, 0);
        assert_eq!(err(r#"{"a" 1}"#).offset, 5);
        assert_eq!(err(r#"{"a":1"#).offset, 6);
        assert!(err(r#"{"a":1"#).message.contains("end of file"));
        assert_eq!(err(r#"[01]"#).offset, 1);
        assert_eq!(err(r#"{"a":tru}"#).offset, 5);
        assert_eq!(err("\"abc").offset, 0);
        assert_eq!(err("[1,]").offset, 3);
        assert_eq!(err("{} x").offset, 3);
        assert_eq!(err(r#"{a:1}"#).offset, 1);
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let s = "[".repeat(100_000);
        assert!(err(&s).message.contains("nesting"));
    }

    #[test]
    fn line_index_counts_chars() {
        let li = LineIndex::new("ab\nçd\n\nx");
        assert_eq!(li.line_col(0), (1, 1));
        assert_eq!(li.line_col(3), (2, 1));
        assert_eq!(li.line_col(5), (2, 2));
        assert_eq!(li.line_col(7), (3, 1));
        assert_eq!(li.line_col(8), (4, 1));
        assert_eq!(li.line_col(100), (4, 2));
    }
}
