//! The comment pre-processor of the Go v2sp config reader: `//` line comments, `/* */` block
//! comments and trailing commas before `]`/`}` are replaced by spaces, outside strings only.
//!
//! Every removed byte becomes one ASCII space and newlines are kept, so byte offsets in the
//! output are byte offsets in the original file: positions reported by the JSON parser point
//! at the text the operator wrote. This is not JSON5 (no unquoted keys, no single quotes).

/// The pre-processor found a `/*` without its `*/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnterminatedComment {
    /// Byte offset of the `/*`.
    pub(crate) offset: usize,
}

/// Blank comments and trailing commas. The result has exactly the length of `text`.
pub(crate) fn blank_comments(text: &str) -> Result<String, UnterminatedComment> {
    let src = text.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(src.len());
    // Offset (in `out`) of a ',' that only whitespace or comments have followed so far.
    let mut pending_comma: Option<usize> = None;
    let mut i = 0;
    while let Some(&b) = src.get(i) {
        match b {
            b'"' => {
                pending_comma = None;
                let end = string_end(src, i);
                out.extend_from_slice(src.get(i..end).unwrap_or_default());
                i = end;
            }
            b'/' if src.get(i + 1) == Some(&b'/') => {
                while let Some(&c) = src.get(i) {
                    if c == b'\n' {
                        break;
                    }
                    out.push(if c == b'\r' { b'\r' } else { b' ' });
                    i += 1;
                }
            }
            b'/' if src.get(i + 1) == Some(&b'*') => {
                let start = i;
                out.extend_from_slice(b"  ");
                i += 2;
                loop {
                    match src.get(i) {
                        None => return Err(UnterminatedComment { offset: start }),
                        Some(b'*') if src.get(i + 1) == Some(&b'/') => {
                            out.extend_from_slice(b"  ");
                            i += 2;
                            break;
                        }
                        Some(&c) => {
                            out.push(if c == b'\n' || c == b'\r' { c } else { b' ' });
                            i += 1;
                        }
                    }
                }
            }
            b',' => {
                pending_comma = Some(out.len());
                out.push(b',');
                i += 1;
            }
            b']' | b'}' => {
                if let Some(at) = pending_comma.take() {
                    if let Some(slot) = out.get_mut(at) {
                        *slot = b' ';
                    }
                }
                out.push(b);
                i += 1;
            }
            b' ' | b'\t' | b'\n' | b'\r' => {
                out.push(b);
                i += 1;
            }
            _ => {
                pending_comma = None;
                out.push(b);
                i += 1;
            }
        }
    }
    // Only ASCII bytes were replaced by ASCII spaces, and multi-byte sequences inside
    // comments were replaced byte for byte, so the output is valid UTF-8. Fall back to a
    // lossy conversion rather than trusting that argument with a panic.
    Ok(String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// Offset just past the closing quote of the string starting at `start` (or the end of the
/// input for an unterminated string; the JSON parser reports that one).
fn string_end(src: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while let Some(&c) = src.get(i) {
        match c {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    src.len()
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;

    fn blank(s: &str) -> String {
        match blank_comments(s) {
            Ok(v) => v,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }

    #[test]
    fn line_and_block_comments_become_spaces() {
        let src = "{ // hi\n \"a\": /* x\n y */ 1 }";
        let out = blank(src);
        assert_eq!(out.len(), src.len());
        assert_eq!(out, "{      \n \"a\":     \n      1 }");
    }

    #[test]
    fn comments_inside_strings_are_kept() {
        let src = r#"{"u": "http://x/*y*/", "s": "a,]"}"#;
        assert_eq!(blank(src), src);
    }

    #[test]
    fn escaped_quote_does_not_end_string() {
        let src = r#"["a\"//b", 1]"#;
        assert_eq!(blank(src), src);
    }

    #[test]
    fn trailing_commas_are_removed_even_across_comments() {
        assert_eq!(blank("[1,2,]"), "[1,2 ]");
        let out = blank("{\"a\":1, // c\n}");
        assert_eq!(out.len(), 14);
        assert_eq!(out.split_whitespace().collect::<String>(), "{\"a\":1}");
        let out = blank("[1, /* c */ ]");
        assert_eq!(out.len(), 13);
        assert_eq!(out.split_whitespace().collect::<String>(), "[1]");
        // a comma followed by a value is untouched
        assert_eq!(blank("[1, 2]"), "[1, 2]");
    }

    #[test]
    fn multibyte_in_comment_keeps_byte_offsets() {
        let src = "/* ünïcode */[1]";
        let out = blank(src);
        assert_eq!(out.len(), src.len());
        assert!(out.ends_with("[1]"));
    }

    #[test]
    fn unterminated_block_comment_is_an_error() {
        assert_eq!(
            blank_comments("[1] /* open"),
            Err(UnterminatedComment { offset: 4 })
        );
    }

    #[test]
    fn crlf_is_preserved() {
        assert_eq!(blank("1 // x\r\n"), "1     \r\n");
    }
}
