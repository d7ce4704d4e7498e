//! JSON for the daemon's lines (RFC 8259): a strict reader and a compact writer, small enough to read at a
//! glance. A real app would use serde_json (`serde_json::Value` in place of `Value`, `serde_json::from_str`
//! and `to_string`); this example has no dependencies so that it builds offline anywhere.

use std::fmt;
use std::ops::Index;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    /// Every JSON number is a double, as the protocol says (ids, `seq` and ports are integers well within 2^53).
    Number(f64),
    String(String),
    Array(Vec<Value>),
    /// Members in the order they came; where a name repeats, `get` finds the last, as serde_json keeps it.
    Object(Vec<(String, Value)>),
}

static NULL: Value = Value::Null;

impl Value {
    pub fn object<K: Into<String>>(members: impl IntoIterator<Item = (K, Value)>) -> Value {
        Value::Object(members.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// The member `key` of an object; None for a missing member or a value that is not an object.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(members) => members.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// A whole number from 0 to 2^53 (beyond that a double no longer holds every integer).
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Number(n) if n.fract() == 0.0 && *n >= 0.0 && *n <= MAX_SAFE_INTEGER => Some(*n as u64),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_992.0; // 2^53

/// `value["a"]["b"]`: `Null` where a member is missing, as in serde_json.
impl Index<&str> for Value {
    type Output = Value;
    fn index(&self, key: &str) -> &Value {
        self.get(key).unwrap_or(&NULL)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::String(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::String(s)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}

impl From<f64> for Value {
    fn from(n: f64) -> Value {
        Value::Number(n)
    }
}

impl From<u64> for Value {
    fn from(n: u64) -> Value {
        Value::Number(n as f64)
    }
}

impl<T: Into<Value>> From<Vec<T>> for Value {
    fn from(items: Vec<T>) -> Value {
        Value::Array(items.into_iter().map(Into::into).collect())
    }
}

// ---- writing ----

/// Compact JSON, UTF-8, no newline in it (so it can be one line of the protocol).
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{}", b),
            // NaN and the infinities have no JSON form (the daemon refuses them): null, as serde_json writes.
            Value::Number(n) if !n.is_finite() => f.write_str("null"),
            Value::Number(n) if n.fract() == 0.0 && n.abs() < MAX_SAFE_INTEGER => write!(f, "{}", *n as i64),
            Value::Number(n) => write!(f, "{:?}", n), // shortest form that reads back the same: 0.1, 1e300
            Value::String(s) => write_string(f, s),
            Value::Array(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{}", item)?;
                }
                f.write_str("]")
            }
            Value::Object(members) => {
                f.write_str("{")?;
                for (i, (key, value)) in members.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write_string(f, key)?;
                    write!(f, ":{}", value)?;
                }
                f.write_str("}")
            }
        }
    }
}

fn write_string(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if (c as u32) < 0x20 => write!(f, "\\u{:04x}", c as u32)?,
            c => write!(f, "{}", c)?,
        }
    }
    f.write_str("\"")
}

// ---- reading ----

#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub what: &'static str,
    /// Where in the text, in bytes.
    pub at: usize,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

impl std::error::Error for ParseError {}

/// Nesting deeper than this is refused rather than risking the stack (the daemon nests four deep).
const MAX_DEPTH: usize = 128;

/// Exactly one JSON value, with optional whitespace around it.
pub fn parse(text: &str) -> Result<Value, ParseError> {
    let mut p = Parser { text, bytes: text.as_bytes(), at: 0 };
    let value = p.value(0)?;
    p.skip_whitespace();
    if p.at != p.bytes.len() {
        return Err(p.error("unexpected text after the value"));
    }
    Ok(value)
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Parser<'a> {
    fn error(&self, what: &'static str) -> ParseError {
        ParseError { what, at: self.at }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8, what: &'static str) -> Result<(), ParseError> {
        self.skip_whitespace();
        if self.peek() != Some(byte) {
            return Err(self.error(what));
        }
        self.at += 1;
        Ok(())
    }

    fn value(&mut self, depth: usize) -> Result<Value, ParseError> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        self.skip_whitespace();
        match self.peek() {
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'n') => self.literal("null", Value::Null),
            Some(_) => Err(self.error("expected a JSON value")),
            None => Err(self.error("unexpected end of input")),
        }
    }

    fn literal(&mut self, word: &'static str, value: Value) -> Result<Value, ParseError> {
        if !self.bytes[self.at..].starts_with(word.as_bytes()) {
            return Err(self.error("expected a JSON value"));
        }
        self.at += word.len();
        Ok(value)
    }

    fn array(&mut self, depth: usize) -> Result<Value, ParseError> {
        self.at += 1; // [
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(Value::Array(items));
        }
        loop {
            items.push(self.value(depth + 1)?);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(self.error("expected ',' or ']'")),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, ParseError> {
        self.at += 1; // {
        let mut members = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(Value::Object(members));
        }
        loop {
            self.skip_whitespace();
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a member name in double quotes"));
            }
            let key = self.string()?;
            self.expect(b':', "expected ':'")?;
            members.push((key, self.value(depth + 1)?));
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Ok(Value::Object(members));
                }
                _ => return Err(self.error("expected ',' or '}'")),
            }
        }
    }

    fn string(&mut self) -> Result<String, ParseError> {
        self.at += 1; // the opening quote
        let mut out = String::new();
        loop {
            // Copy the run up to the next quote, backslash or control character as it is: the text is a &str,
            // so that run is valid UTF-8 whatever it holds.
            let start = self.at;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.at += 1;
            }
            out.push_str(&self.text[start..self.at]);
            match self.peek() {
                Some(b'"') => {
                    self.at += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.at += 1;
                    out.push(self.escape()?);
                }
                Some(_) => return Err(self.error("control character in a string (it must be escaped)")),
                None => return Err(self.error("unterminated string")),
            }
        }
    }

    fn escape(&mut self) -> Result<char, ParseError> {
        let c = match self.peek() {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                self.at += 1;
                return self.unicode_escape();
            }
            _ => return Err(self.error("invalid escape")),
        };
        self.at += 1;
        Ok(c)
    }

    /// After `\u`: four hex digits, or two escapes forming a surrogate pair (`\ud83d\ude00` is one emoji).
    fn unicode_escape(&mut self) -> Result<char, ParseError> {
        let first = self.hex4()?;
        let code = match first {
            0xD800..=0xDBFF => {
                if !self.bytes[self.at..].starts_with(b"\\u") {
                    return Err(self.error("lone surrogate in a \\u escape"));
                }
                self.at += 2;
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(self.error("lone surrogate in a \\u escape"));
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(self.error("lone surrogate in a \\u escape")),
            _ => first,
        };
        char::from_u32(code).ok_or_else(|| self.error("invalid \\u escape"))
    }

    fn hex4(&mut self) -> Result<u32, ParseError> {
        let digits = self.text.get(self.at..self.at + 4).ok_or_else(|| self.error("short \\u escape"))?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.error("invalid \\u escape"));
        }
        self.at += 4;
        Ok(u32::from_str_radix(digits, 16).expect("four hex digits"))
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`, checked here; Rust's `parse::<f64>` then
    /// rounds it correctly. Numbers beyond a double (`1e999`) are refused, as the daemon refuses them.
    fn number(&mut self) -> Result<Value, ParseError> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.error("expected a digit")),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.required_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.required_digits()?;
        }
        let n: f64 = self.text[start..self.at].parse().expect("the grammar above is Rust's too");
        if !n.is_finite() {
            return Err(ParseError { what: "number beyond the range of a double", at: start });
        }
        Ok(Value::Number(n))
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
    }

    fn required_digits(&mut self) -> Result<(), ParseError> {
        if !matches!(self.peek(), Some(b'0'..=b'9')) {
            return Err(self.error("expected a digit"));
        }
        self.digits();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Value {
        parse(text).unwrap_or_else(|e| panic!("{:?} did not parse: {}", text, e))
    }

    fn err(text: &str) -> ParseError {
        match parse(text) {
            Ok(v) => panic!("{:?} parsed as {:?}, expected an error", text, v),
            Err(e) => e,
        }
    }

    #[test]
    fn reads_an_event_line_as_the_daemon_writes_it() {
        // Python's json.dumps (ensure_ascii): non-ASCII as \u escapes, astral characters as surrogate pairs.
        let line = r#"{"jsonrpc": "2.0", "method": "event", "params": {"event": "openrouter-auth-complete", "seq": 7, "data": {"session_id": "s-1", "success": false, "backend": null, "error": {"code": "access_denied", "message": "You declined \u2014 \"Deny\" in caf\u00e9 \ud83d\ude00.", "hint": "Run it again:\n\tconvctl oauth start \\ or the app."}}}}"#;
        let v = ok(line);
        let params = &v["params"];
        assert_eq!(params["event"].as_str(), Some("openrouter-auth-complete"));
        assert_eq!(params["seq"].as_u64(), Some(7));
        let data = &params["data"];
        assert_eq!(data["success"].as_bool(), Some(false));
        assert!(data["backend"].is_null());
        assert_eq!(data["error"]["message"].as_str(), Some("You declined \u{2014} \"Deny\" in caf\u{e9} \u{1F600}."));
        assert_eq!(data["error"]["hint"].as_str(), Some("Run it again:\n\tconvctl oauth start \\ or the app."));
        assert!(data["missing"]["deeper"].is_null());
    }

    #[test]
    fn reads_raw_utf8_and_every_escape() {
        assert_eq!(ok("\"café ✓ 😀\"").as_str(), Some("café ✓ 😀"));
        assert_eq!(ok(r#""\"\\\/\b\f\n\r\t\u0000\u001f\u00E9""#).as_str(), Some("\"\\/\u{8}\u{c}\n\r\t\u{0}\u{1f}é"));
    }

    #[test]
    fn reads_numbers_by_the_grammar() {
        for (text, n) in [
            ("0", 0.0),
            ("-0", -0.0),
            ("42", 42.0),
            ("-17", -17.0),
            ("3.25", 3.25),
            ("1e3", 1000.0),
            ("2.5E-3", 0.0025),
            ("1E+2", 100.0),
            ("0.1", 0.1),
            ("9007199254740993", 9007199254740992.0), // rounds to the nearest double, as every JSON reader does
            ("1.7976931348623157e308", f64::MAX),
        ] {
            assert_eq!(ok(text), Value::Number(n), "{}", text);
        }
        assert_eq!(ok("4242").as_u64(), Some(4242));
        assert_eq!(ok("1.5").as_u64(), None);
        assert_eq!(ok("-1").as_u64(), None);
    }

    #[test]
    fn reads_nesting_whitespace_and_repeated_names() {
        let v = ok(" \t\r\n{ \"a\" : [ 1 , [ ] , { } , [ true , false , null ] ] , \"a\" : 2 } \n");
        assert_eq!(v["a"].as_f64(), Some(2.0)); // the last of a repeated name
        match &v {
            Value::Object(members) => assert_eq!(members.len(), 2),
            other => panic!("{:?}", other),
        }
        let deep = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(parse(&deep).is_ok());
    }

    #[test]
    #[rustfmt::skip] // one line per kind of mistake, not per case
    fn refuses_what_is_not_json() {
        for text in [
            "", " ", "nul", "True", "'x'",                                       // no value
            "[1,]", "[1 2]", "{,}", "{\"a\"}", "{\"a\":1,}", "{a:1}", "[", "{\"a\":", // structure
            "\"open", "\"\\x\"", "\"\\u12\"", "\"\\u12g4\"", "\"tab\there\"", "\"new\nline\"", // strings
            "01", "-", "+1", ".5", "1.", "1e", "1e+", "0x10", "NaN", "Infinity", "-Infinity", // numbers
            "{} {}", "1 2", "[] x",                                              // more than one value
        ] {
            err(text);
        }
    }

    #[test]
    fn refuses_numbers_beyond_a_double_and_lone_surrogates() {
        assert_eq!(err("[1e999]").what, "number beyond the range of a double");
        assert_eq!(err("-1e400").at, 0);
        for text in [r#""\ud800""#, r#""\ud800x""#, r#""\ud800\u0041""#, r#""\udc00""#] {
            assert_eq!(err(text).what, "lone surrogate in a \\u escape", "{}", text);
        }
    }

    #[test]
    fn refuses_deep_nesting_without_overflowing_the_stack() {
        let deep = "[".repeat(100_000);
        assert_eq!(err(&deep).what, "nested too deeply");
    }

    #[test]
    fn writes_one_compact_line() {
        let request = Value::object([
            ("jsonrpc", Value::from("2.0")),
            ("id", Value::from(3u64)),
            ("method", Value::from("subscribe")),
            ("params", Value::object([("events", Value::from(vec!["openrouter-auth-complete"]))])),
        ]);
        assert_eq!(
            request.to_string(),
            r#"{"jsonrpc":"2.0","id":3,"method":"subscribe","params":{"events":["openrouter-auth-complete"]}}"#
        );
        let awkward = Value::from("quote \" backslash \\ newline \n cr \r tab \t bell \u{7} nul \u{0} é 😀");
        assert_eq!(
            awkward.to_string(),
            r#""quote \" backslash \\ newline \n cr \r tab \t bell \u0007 nul \u0000 é 😀""#
        );
        assert!(!awkward.to_string().contains('\n'));
        let numbers = Value::from(vec![0.0, -3.0, 0.1, 1e300, -2.5e-7, 9007199254740992.0, f64::NAN]);
        assert_eq!(numbers.to_string(), "[0,-3,0.1,1e300,-2.5e-7,9007199254740992.0,null]");
    }

    #[test]
    fn what_it_writes_reads_back_the_same() {
        let value = Value::object([
            ("s", Value::from("\u{1}\u{1f}\"\\/é😀\u{2028}")),
            ("n", Value::from(vec![0.1, -0.0, 1e-300, 123456789.125, f64::MAX])),
            (
                "nested",
                Value::object([
                    ("a", Value::from(vec![Value::Null, Value::from(true)])),
                    ("b", Value::object(Vec::<(String, Value)>::new())),
                ]),
            ),
        ]);
        assert_eq!(ok(&value.to_string()), value);
    }
}
