//! Tolerant readers for the scalar shapes panels actually send.
//!
//! PHP panels (Xboard, v2board) and hand-written panels disagree on scalar types: a port may be
//! `443` or `"443"`, a flag `1`, `"1"` or `true`, an interval `60`, `60.0` or `"60"`. Every
//! reader here accepts all the shapes that carry an unambiguous value and returns a
//! [`DecodeError`] naming the field path for anything else. `null` and absence are the same
//! thing everywhere (PHP serialises unset values as `null`).

use serde_json::{Map, Value};

use super::DecodeError;

/// A JSON object being decoded, with the path that leads to it (for error messages).
pub(crate) struct Fields<'a> {
    pub(crate) map: &'a Map<String, Value>,
    pub(crate) path: String,
    pub(crate) what: &'static str,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(map: &'a Map<String, Value>, path: impl Into<String>, what: &'static str) -> Self {
        Fields {
            map,
            path: path.into(),
            what,
        }
    }

    pub(crate) fn child_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{}", self.path, key)
        }
    }

    pub(crate) fn err(&self, key: &str, problem: impl Into<String>) -> DecodeError {
        DecodeError {
            what: self.what,
            path: self.child_path(key),
            problem: problem.into(),
        }
    }

    /// The value under `key`, `None` when absent or `null`.
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        match self.map.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    pub(crate) fn opt_str(&self, key: &str) -> Result<Option<String>, DecodeError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => str_of(v).map(Some).map_err(|p| self.err(key, p)),
        }
    }

    /// Like [`Self::opt_str`] but an empty string counts as absent.
    pub(crate) fn opt_nonempty_str(&self, key: &str) -> Result<Option<String>, DecodeError> {
        Ok(self.opt_str(key)?.filter(|s| !s.is_empty()))
    }

    pub(crate) fn opt_uint(&self, key: &str, max: u64) -> Result<Option<u64>, DecodeError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => uint_of(v, max).map_err(|p| self.err(key, p)),
        }
    }

    pub(crate) fn opt_bool(&self, key: &str) -> Result<Option<bool>, DecodeError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => bool_of(v).map_err(|p| self.err(key, p)),
        }
    }
}

/// Short, printable rendering of a value for error messages (never the whole payload).
pub(crate) fn show(v: &Value) -> String {
    let s = v.to_string();
    snippet(&s, 60)
}

/// The first `max` characters of `s` with control characters escaped.
pub fn snippet(s: &str, max: usize) -> String {
    let mut out: String = s.chars().take(max).flat_map(char::escape_debug).collect();
    if s.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

pub(crate) fn str_of(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(format!("expected a string, got {}", show(other))),
    }
}

/// Non-negative integer from an integer, an integral float, or a numeric string.
/// An empty string is "absent" (`Ok(None)`).
pub(crate) fn uint_of(v: &Value, max: u64) -> Result<Option<u64>, String> {
    let parsed = match v {
        Value::Null => return Ok(None),
        Value::Number(n) => number_to_u64(n),
        Value::String(s) => {
            let t = s.trim();
            if t.is_empty() {
                return Ok(None);
            }
            if let Ok(u) = t.parse::<u64>() {
                Some(u)
            } else {
                t.parse::<f64>().ok().and_then(f64_to_u64)
            }
        }
        _ => None,
    };
    match parsed {
        Some(u) if u <= max => Ok(Some(u)),
        Some(u) => Err(format!("{u} is out of range (at most {max})")),
        None => Err(format!(
            "expected a non-negative integer (number or numeric string), got {}",
            show(v)
        )),
    }
}

/// Signed integer from an integer, an integral float, or a numeric string.
pub(crate) fn int_of(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        }),
        Value::String(s) => {
            let t = s.trim();
            t.parse::<i64>().ok().or_else(|| {
                t.parse::<f64>()
                    .ok()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                    .map(|f| f as i64)
            })
        }
        _ => None,
    }
}

fn number_to_u64(n: &serde_json::Number) -> Option<u64> {
    n.as_u64().or_else(|| n.as_f64().and_then(f64_to_u64))
}

fn f64_to_u64(f: f64) -> Option<u64> {
    // Integral and exactly representable: 2^53 is far above any id, port or byte limit here.
    if f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f < 9.0e15 {
        Some(f as u64)
    } else {
        None
    }
}

pub(crate) fn bool_of(v: &Value) -> Result<Option<bool>, String> {
    match v {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f == 0.0 {
                Ok(Some(false))
            } else if f == 1.0 {
                Ok(Some(true))
            } else {
                Err(format!("expected a boolean (true/false/0/1), got {}", show(v)))
            }
        }
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "" => Ok(None),
            "0" | "false" => Ok(Some(false)),
            "1" | "true" => Ok(Some(true)),
            _ => Err(format!("expected a boolean (true/false/0/1), got {}", show(v))),
        },
        _ => Err(format!("expected a boolean (true/false/0/1), got {}", show(v))),
    }
}

/// Parse a whole payload as JSON, naming what it looked like when it is not JSON at all
/// (HTML error pages from reverse proxies are the usual case).
pub(crate) fn parse_json(bytes: &[u8], what: &'static str) -> Result<Value, DecodeError> {
    serde_json::from_slice::<Value>(bytes).map_err(|e| {
        let text = String::from_utf8_lossy(bytes);
        let trimmed = text.trim_start();
        let kind = if trimmed.is_empty() {
            "empty body".to_string()
        } else if trimmed.starts_with('<') {
            format!("HTML/XML instead of JSON ({})", snippet(trimmed, 60))
        } else {
            format!("not JSON: {e} (body starts with \"{}\")", snippet(trimmed, 60))
        };
        DecodeError {
            what,
            path: "$".to_string(),
            problem: kind,
        }
    })
}

/// A JSON array, or a PHP "array with holes" (an object keyed by decimal indexes, which Laravel
/// produces after `array_filter`), as a list in index order. `None` for other shapes.
pub(crate) fn list_of(v: &Value) -> Option<Vec<&Value>> {
    match v {
        Value::Array(a) => Some(a.iter().collect()),
        Value::Object(m) => {
            let mut keyed: Vec<(u64, &Value)> = Vec::with_capacity(m.len());
            for (k, v) in m {
                keyed.push((k.trim().parse::<u64>().ok()?, v));
            }
            keyed.sort_by_key(|(k, _)| *k);
            Some(keyed.into_iter().map(|(_, v)| v).collect())
        }
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn uint_shapes() {
        assert_eq!(uint_of(&json!(443), 65535), Ok(Some(443)));
        assert_eq!(uint_of(&json!("443"), 65535), Ok(Some(443)));
        assert_eq!(uint_of(&json!(" 60 "), 65535), Ok(Some(60)));
        assert_eq!(uint_of(&json!(60.0), 65535), Ok(Some(60)));
        assert_eq!(uint_of(&json!("60.0"), 65535), Ok(Some(60)));
        assert_eq!(uint_of(&json!(""), 65535), Ok(None));
        assert_eq!(uint_of(&json!(null), 65535), Ok(None));
        assert!(uint_of(&json!(60.5), 65535).is_err());
        assert!(uint_of(&json!(-1), 65535).is_err());
        assert!(uint_of(&json!("abc"), 65535).is_err());
        assert!(uint_of(&json!(70000), 65535).is_err());
        assert!(uint_of(&json!([1]), 65535).is_err());
    }

    #[test]
    fn bool_shapes() {
        assert_eq!(bool_of(&json!(true)), Ok(Some(true)));
        assert_eq!(bool_of(&json!(0)), Ok(Some(false)));
        assert_eq!(bool_of(&json!("1")), Ok(Some(true)));
        assert_eq!(bool_of(&json!("false")), Ok(Some(false)));
        assert!(bool_of(&json!(2)).is_err());
    }

    #[test]
    fn php_list_with_holes() {
        let v = json!({"2": "c", "0": "a", "10": "z"});
        let l = list_of(&v).unwrap_or_default();
        assert_eq!(l, vec![&json!("a"), &json!("c"), &json!("z")]);
        assert!(list_of(&json!({"x": 1})).is_none());
    }

    #[test]
    fn html_is_named() {
        let e = parse_json(b"<html><body>502 Bad Gateway</body></html>", "node config").unwrap_err();
        assert!(e.problem.contains("HTML"), "{e}");
        let e = parse_json(b"", "node config").unwrap_err();
        assert!(e.problem.contains("empty"), "{e}");
    }
}
