//! The one JSON parser for message bodies: the host checks a body with it
//! before a consumer sees the message, and [`Message::body`] builds the
//! value with it, so a body the host accepts is a body the consumer gets,
//! whole.
//!
//! It reads what Python's `json.loads` reads, as fedora-messaging decodes
//! a body, and keeps what it reads:
//!
//! - `NaN`, `Infinity` and `-Infinity` (Python's `json.dumps` writes them
//!   for non-finite floats) and numbers of any size are kept as their
//!   text: [`serde_json::Number::as_str`] gives it back, `as_i64`/`as_f64`
//!   convert when the value fits, and serialising writes the same text.
//! - Duplicate keys: the last value wins, as in a Python `dict`.
//!
//! It refuses, so that the message is rejected before a consumer sees it,
//! rather than handed over altered:
//!
//! - what `json.loads` refuses: invalid syntax, control characters inside
//!   strings, integers of more than [`MAX_INT_DIGITS`] digits (Python's
//!   limit for converting a string to an `int`), anything after the value;
//! - a string escape that is a lone UTF-16 surrogate (`"\ud800"`): Python
//!   keeps it in a `str`, a Rust `String` cannot hold it;
//! - nesting deeper than [`MAX_DEPTH`]: Python's own limit is its
//!   recursion limit, a little under 1000 levels.
//!
//! [`Message::body`]: crate::Message::body

use std::borrow::Cow;
use std::fmt;

use serde_json::{Map, Number, Value};

/// The deepest nesting of arrays and objects accepted. Python's
/// `json.loads` accepts up to about 995 levels at the top of its stack and
/// somewhat fewer inside a consumer; 900 is within what it accepts there.
pub const MAX_DEPTH: usize = 900;

/// The most digits an integer may have: `json.loads` refuses longer ones
/// (`sys.get_int_max_str_digits()`, 4300 by default).
pub const MAX_INT_DIGITS: usize = 4300;

/// Why a body is not a JSON object this parser accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    /// Byte offset in the body.
    pub offset: usize,
    pub reason: &'static str,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.reason, self.offset)
    }
}

impl std::error::Error for JsonError {}

/// Checks that `body` is UTF-8 JSON text of an object, building nothing.
pub fn check_object(body: &[u8]) -> Result<(), JsonError> {
    parse_top::<Check>(body).map(drop)
}

/// Parses `body`, UTF-8 JSON text of an object, into its map.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, JsonError> {
    match parse_top::<Build>(body)? {
        Value::Object(map) => Ok(map),
        // parse_top only returns objects.
        _ => Err(JsonError {
            offset: 0,
            reason: "expected an object",
        }),
    }
}

/// A float as [`parse_object`] would have read it from Python's
/// `json.dumps`: non-finite values as `NaN`, `Infinity`, `-Infinity`.
pub fn number_from_f64(value: f64) -> Number {
    match Number::from_f64(value) {
        Some(number) => number,
        None if value.is_nan() => number_text("NaN"),
        None if value > 0.0 => number_text("Infinity"),
        None => number_text("-Infinity"),
    }
}

/// A number kept as its text. `from_string_unchecked` is serde_json's
/// constructor for exactly this under `arbitrary_precision`; the tests
/// below check that it still round-trips.
pub(crate) fn number_text(text: &str) -> Number {
    Number::from_string_unchecked(text.to_owned())
}

fn parse_top<S: Sink>(body: &[u8]) -> Result<S::Value, JsonError> {
    let mut parser = Parser {
        bytes: body,
        pos: 0,
    };
    parser.document::<S>().map_err(|error| {
        // The parser checks UTF-8 only inside strings, where text other
        // than ASCII may be; outside them such a byte is a syntax error.
        // Either way a body that is not UTF-8 is refused as that, first,
        // wherever the parser stopped.
        match std::str::from_utf8(body) {
            Err(not_utf8) => JsonError {
                offset: not_utf8.valid_up_to(),
                reason: "not UTF-8",
            },
            Ok(_) => error,
        }
    })
}

/// What the parser makes of what it reads: nothing ([`Check`]) or a
/// [`Value`] ([`Build`]).
trait Sink {
    type Value;
    type Array;
    type Object;
    fn scalar(scalar: Scalar<'_>) -> Self::Value;
    fn array() -> Self::Array;
    fn push(array: &mut Self::Array, value: Self::Value);
    fn end_array(array: Self::Array) -> Self::Value;
    fn object() -> Self::Object;
    fn insert(object: &mut Self::Object, key: Cow<'_, str>, value: Self::Value);
    fn end_object(object: Self::Object) -> Self::Value;
}

enum Scalar<'a> {
    Null,
    Bool(bool),
    /// The number's text, as it was written.
    Number(&'a str),
    String(Cow<'a, str>),
}

struct Check;

impl Sink for Check {
    type Value = ();
    type Array = ();
    type Object = ();
    fn scalar(_: Scalar<'_>) {}
    fn array() {}
    fn push(_: &mut (), _: ()) {}
    fn end_array(_: ()) {}
    fn object() {}
    fn insert(_: &mut (), _: Cow<'_, str>, _: ()) {}
    fn end_object(_: ()) {}
}

struct Build;

impl Sink for Build {
    type Value = Value;
    type Array = Vec<Value>;
    type Object = Map<String, Value>;
    fn scalar(scalar: Scalar<'_>) -> Value {
        match scalar {
            Scalar::Null => Value::Null,
            Scalar::Bool(b) => Value::Bool(b),
            Scalar::Number(text) => Value::Number(number_text(text)),
            Scalar::String(s) => Value::String(s.into_owned()),
        }
    }
    fn array() -> Vec<Value> {
        Vec::new()
    }
    fn push(array: &mut Vec<Value>, value: Value) {
        array.push(value);
    }
    fn end_array(array: Vec<Value>) -> Value {
        Value::Array(array)
    }
    fn object() -> Map<String, Value> {
        Map::new()
    }
    fn insert(object: &mut Map<String, Value>, key: Cow<'_, str>, value: Value) {
        object.insert(key.into_owned(), value);
    }
    fn end_object(object: Map<String, Value>) -> Value {
        Value::Object(object)
    }
}

struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
}

/// Text the parser has seen to be ASCII: a number's, or a string's run in
/// which no byte had its high bit set.
fn ascii_text(bytes: &[u8]) -> &str {
    debug_assert!(bytes.is_ascii());
    // SAFETY: ASCII is UTF-8; each caller has looked at every byte.
    unsafe { std::str::from_utf8_unchecked(bytes) }
}

impl<'a> Parser<'a> {
    fn document<S: Sink>(&mut self) -> Result<S::Value, JsonError> {
        self.skip_whitespace();
        if self.peek() != Some(b'{') {
            return Err(self.error("expected an object"));
        }
        let value = self.value::<S>(0)?;
        self.skip_whitespace();
        if self.pos != self.bytes.len() {
            return Err(self.error("extra data after the object"));
        }
        Ok(value)
    }

    fn error(&self, reason: &'static str) -> JsonError {
        JsonError {
            offset: self.pos,
            reason,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn eat(&mut self, literal: &str) -> bool {
        if self.bytes[self.pos..].starts_with(literal.as_bytes()) {
            self.pos += literal.len();
            true
        } else {
            false
        }
    }

    fn value<S: Sink>(&mut self, depth: usize) -> Result<S::Value, JsonError> {
        match self.peek() {
            Some(b'{') => self.object::<S>(depth + 1),
            Some(b'[') => self.array::<S>(depth + 1),
            Some(b'"') => Ok(S::scalar(Scalar::String(self.string()?))),
            Some(b'-' | b'0'..=b'9') => {
                let start = self.pos;
                if !self.eat("-Infinity") {
                    self.number()?;
                }
                Ok(S::scalar(Scalar::Number(ascii_text(
                    &self.bytes[start..self.pos],
                ))))
            }
            _ => {
                let start = self.pos;
                if self.eat("null") {
                    Ok(S::scalar(Scalar::Null))
                } else if self.eat("true") {
                    Ok(S::scalar(Scalar::Bool(true)))
                } else if self.eat("false") {
                    Ok(S::scalar(Scalar::Bool(false)))
                } else if self.eat("NaN") || self.eat("Infinity") {
                    Ok(S::scalar(Scalar::Number(ascii_text(
                        &self.bytes[start..self.pos],
                    ))))
                } else {
                    Err(self.error("expected a value"))
                }
            }
        }
    }

    fn enter(&self, depth: usize) -> Result<(), JsonError> {
        if depth > MAX_DEPTH {
            Err(self.error("nested more than 900 levels deep"))
        } else {
            Ok(())
        }
    }

    fn object<S: Sink>(&mut self, depth: usize) -> Result<S::Value, JsonError> {
        self.enter(depth)?;
        self.pos += 1; // '{'
        let mut object = S::object();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(S::end_object(object));
        }
        loop {
            self.skip_whitespace();
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a key in double quotes"));
            }
            let key = self.string()?;
            self.skip_whitespace();
            if self.peek() != Some(b':') {
                return Err(self.error("expected ':' after a key"));
            }
            self.pos += 1;
            self.skip_whitespace();
            let value = self.value::<S>(depth)?;
            S::insert(&mut object, key, value);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(S::end_object(object));
                }
                _ => return Err(self.error("expected ',' or '}'")),
            }
        }
    }

    fn array<S: Sink>(&mut self, depth: usize) -> Result<S::Value, JsonError> {
        self.enter(depth)?;
        self.pos += 1; // '['
        let mut array = S::array();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(S::end_array(array));
        }
        loop {
            self.skip_whitespace();
            let value = self.value::<S>(depth)?;
            S::push(&mut array, value);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(S::end_array(array));
                }
                _ => return Err(self.error("expected ',' or ']'")),
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?`, as Python's scanner.
    fn number(&mut self) -> Result<(), JsonError> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        let int_digits = match self.peek() {
            Some(b'0') => {
                self.pos += 1;
                1
            }
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.error("expected a digit")),
        };
        let mut integer = true;
        if self.peek() == Some(b'.') && matches!(self.bytes.get(self.pos + 1), Some(b'0'..=b'9')) {
            self.pos += 1;
            self.digits();
            integer = false;
        }
        if let Some(b'e' | b'E') = self.peek() {
            let mark = self.pos;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                // Python's scanner stops before an incomplete exponent,
                // which then is extra data.
                self.pos = mark;
            } else {
                integer = false;
            }
        }
        if integer && int_digits > MAX_INT_DIGITS {
            return Err(self.error("an integer of more than 4300 digits"));
        }
        Ok(())
    }

    /// The run of text up to the next `"`, `\\` or control character (or
    /// the end), checked to be UTF-8. It looks at sixteen or eight bytes at
    /// a time while none is special, and notes on the way whether any is
    /// not ASCII, so that only such runs are checked again: bodies are
    /// mostly ASCII text, and this is the host's cost for every message.
    fn plain_run(&mut self) -> Result<&'a str, JsonError> {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGHS: u64 = 0x8080_8080_8080_8080;
        // A byte of `word` is zero, or below 0x20: the classic bit tricks,
        // exact about whether any byte is.
        let zero_byte = |word: u64| word.wrapping_sub(ONES) & !word;
        let special = |word: u64| {
            (zero_byte(word ^ (ONES * u64::from(b'"')))
                | zero_byte(word ^ (ONES * u64::from(b'\\')))
                | (word.wrapping_sub(ONES * 0x20) & !word))
                & HIGHS
        };
        let word = |chunk: &[u8]| {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(chunk);
            u64::from_le_bytes(bytes)
        };
        let start = self.pos;
        // Long strings are what bodies are made of: sixteen bytes a turn
        // while none is special (where the processor can), then word by
        // word to the one that is.
        #[cfg(target_arch = "x86_64")]
        let mut ascii = {
            let (plain, ascii) = plain_blocks(&self.bytes[self.pos..]);
            self.pos += plain;
            ascii
        };
        #[cfg(not(target_arch = "x86_64"))]
        let mut ascii = true;
        for chunk in self.bytes[self.pos..].chunks_exact(8) {
            let word = word(chunk);
            if special(word) != 0 {
                break;
            }
            ascii &= word & HIGHS == 0;
            self.pos += 8;
        }
        while let Some(&byte) = self.bytes.get(self.pos) {
            if matches!(byte, b'"' | b'\\' | 0..=0x1f) {
                break;
            }
            ascii &= byte.is_ascii();
            self.pos += 1;
        }
        let run = &self.bytes[start..self.pos];
        if ascii {
            return Ok(ascii_text(run));
        }
        // The run is cut at ASCII bytes, which never fall inside a
        // character, so it is UTF-8 on its own exactly when it is within
        // the body.
        std::str::from_utf8(run).map_err(|error| JsonError {
            offset: start + error.valid_up_to(),
            reason: "not UTF-8",
        })
    }

    /// A string at `"`; borrowed from the body unless it has escapes.
    fn string(&mut self) -> Result<Cow<'a, str>, JsonError> {
        self.pos += 1; // '"'
        let first_run = self.plain_run()?;
        match self.peek() {
            None => return Err(self.error("unterminated string")),
            Some(b'"') => {
                self.pos += 1;
                return Ok(Cow::Borrowed(first_run));
            }
            Some(b'\\') => {}
            // plain_run stops at nothing else.
            Some(_) => return Err(self.error("a control character in a string")),
        }
        let mut owned = String::from(first_run);
        loop {
            match self.peek() {
                None => return Err(self.error("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(Cow::Owned(owned));
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let escaped = match self.peek() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            self.pos += 1;
                            let c = self.unicode_escape()?;
                            owned.push(c);
                            continue;
                        }
                        _ => return Err(self.error("an invalid escape")),
                    };
                    self.pos += 1;
                    owned.push(escaped);
                }
                Some(0..=0x1f) => return Err(self.error("a control character in a string")),
                Some(_) => owned.push_str(self.plain_run()?),
            }
        }
    }

    /// After `\u`: four hex digits, and a second escape for a surrogate
    /// pair.
    fn unicode_escape(&mut self) -> Result<char, JsonError> {
        let high = self.hex4()?;
        if !(0xd800..0xe000).contains(&high) {
            return char::from_u32(high).ok_or_else(|| self.error("an invalid \\u escape"));
        }
        if high < 0xdc00 && self.eat("\\u") {
            let low = self.hex4()?;
            if (0xdc00..0xe000).contains(&low) {
                let c = 0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00);
                return char::from_u32(c).ok_or_else(|| self.error("an invalid \\u escape"));
            }
        }
        Err(self.error("a lone UTF-16 surrogate (\\ud800-\\udfff)"))
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let digits = self
            .bytes
            .get(self.pos..self.pos + 4)
            .filter(|d| d.iter().all(u8::is_ascii_hexdigit))
            .map(ascii_text)
            .ok_or_else(|| self.error("an invalid \\u escape"))?;
        let value =
            u32::from_str_radix(digits, 16).map_err(|_| self.error("an invalid \\u escape"))?;
        self.pos += 4;
        Ok(value)
    }
}

/// How many of the leading bytes of `bytes`, in whole blocks of sixteen,
/// hold no quote, backslash or control character: the part of a string
/// the parser may skip without looking at each byte; and whether those
/// bytes are all ASCII.
#[cfg(target_arch = "x86_64")]
fn plain_blocks(bytes: &[u8]) -> (usize, bool) {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    let mut plain = 0;
    // SAFETY: SSE2 is part of every x86_64 processor, so its intrinsics
    // can run; each load reads sixteen bytes of a sixteen-byte chunk.
    unsafe {
        // Every plain block ORed together: its high bits are those of the
        // bytes that are not ASCII.
        let mut seen = _mm_set1_epi8(0);
        let quote = _mm_set1_epi8(b'"' as i8);
        let backslash = _mm_set1_epi8(b'\\' as i8);
        let control = _mm_set1_epi8(0x1f);
        for block in bytes.chunks_exact(16) {
            let block = _mm_loadu_si128(block.as_ptr().cast::<__m128i>());
            // A byte at or below 0x1f is its own minimum with 0x1f.
            let special = _mm_or_si128(
                _mm_or_si128(
                    _mm_cmpeq_epi8(block, quote),
                    _mm_cmpeq_epi8(block, backslash),
                ),
                _mm_cmpeq_epi8(_mm_min_epu8(block, control), block),
            );
            if _mm_movemask_epi8(special) != 0 {
                break;
            }
            seen = _mm_or_si128(seen, block);
            plain += 16;
        }
        (plain, _mm_movemask_epi8(seen) == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Value {
        check_object(text.as_bytes()).unwrap();
        Value::Object(parse_object(text.as_bytes()).unwrap())
    }

    fn refused(text: &str) -> &'static str {
        let error = check_object(text.as_bytes()).unwrap_err();
        assert_eq!(parse_object(text.as_bytes()).unwrap_err(), error);
        error.reason
    }

    #[test]
    fn keeps_what_python_reads_as_it_was_written() {
        for text in [
            r#"{"x": NaN, "y": Infinity, "z": -Infinity}"#,
            r#"{"big": 123456789012345678901234567890, "neg": -99999999999999999999999}"#,
            r#"{"huge": 1e400, "tiny": -2.5E-400, "plain": 0.1, "e": 1e5}"#,
        ] {
            let value = parsed(text);
            let back = serde_json::to_string(&value).unwrap();
            let normalise = |t: &str| t.replace(' ', "");
            // Map keys are sorted; compare field by field.
            let again = parsed(&back);
            assert_eq!(value, again, "{text} -> {back}");
            for (key, number) in value.as_object().unwrap() {
                let written = format!("\"{key}\":{number}");
                assert!(normalise(text).contains(&written), "{text} lacks {written}");
            }
        }
        let value = parsed(r#"{"big": 123456789012345678901234567890, "n": 42, "f": 1.5}"#);
        assert_eq!(value["big"].as_i64(), None);
        assert_eq!(
            value["big"].as_number().unwrap().as_str(),
            "123456789012345678901234567890"
        );
        assert_eq!(value["n"].as_i64(), Some(42));
        assert_eq!(value["f"].as_f64(), Some(1.5));
        assert_eq!(number_from_f64(f64::NAN).as_str(), "NaN");
        assert_eq!(number_from_f64(f64::NEG_INFINITY).as_str(), "-Infinity");
        assert_eq!(number_from_f64(2.5).as_f64(), Some(2.5));
    }

    #[test]
    fn strings_escapes_and_duplicate_keys_as_python() {
        let value = parsed(
            r#"{"a": "caf\u00e9 \ud83d\ude00 \n\"\\\/ naïve", "a": 2, "k": "plain", "e": ""}"#,
        );
        assert_eq!(value["a"], 2);
        assert_eq!(value["k"], "plain");
        let value = parsed(r#"{"s": "caf\u00e9 \ud83d\ude00 \n\"\\\/ naïve"}"#);
        assert_eq!(value["s"], "café 😀 \n\"\\/ naïve");
        assert_eq!(parsed(" \t\r\n{}\n "), serde_json::json!({}));
    }

    /// Strings are skipped 16, 8 and 1 bytes at a time: a quote, an
    /// escape or a control character is found wherever it falls.
    #[test]
    fn finds_what_ends_plain_text_at_every_position() {
        for len in 0..200 {
            let plain = "é".repeat(len / 2) + &"a".repeat(len % 2);
            let key = r#"{"k": ""#;
            assert_eq!(
                parsed(&format!("{key}{plain}\"}}")),
                serde_json::json!({ "k": plain })
            );
            for at in 0..=plain.len() {
                if !plain.is_char_boundary(at) {
                    continue;
                }
                let (head, tail) = plain.split_at(at);
                let escaped = format!("{key}{head}\\n{tail}\"}}");
                let expected = format!("{head}\n{tail}");
                assert_eq!(parsed(&escaped), serde_json::json!({ "k": expected }));
                let quoted = format!("{key}{head}\", \"q\": \"{tail}\"}}");
                assert_eq!(parsed(&quoted), serde_json::json!({ "k": head, "q": tail }));
                let control = format!("{key}{head}\u{1}{tail}\"}}");
                assert_eq!(
                    check_object(control.as_bytes()),
                    Err(JsonError {
                        offset: key.len() + at,
                        reason: "a control character in a string"
                    })
                );
                // UTF-8 is checked only in runs that are not ASCII: a bad
                // byte, or a character cut short by the closing quote, is
                // found wherever it falls, as is one outside a string.
                let not_utf8 = JsonError {
                    offset: key.len() + at,
                    reason: "not UTF-8",
                };
                for bad in [&b"\xff"[..], b"\xc3"] {
                    for body in [
                        [
                            key.as_bytes(),
                            head.as_bytes(),
                            bad,
                            tail.as_bytes(),
                            b"\"}",
                        ]
                        .concat(),
                        [key.as_bytes(), head.as_bytes(), bad, b"\"}"].concat(),
                    ] {
                        assert_eq!(check_object(&body), Err(not_utf8.clone()));
                        assert_eq!(parse_object(&body), Err(not_utf8.clone()));
                    }
                }
            }
        }
    }

    #[test]
    fn nesting_up_to_the_limit() {
        let nested = |depth: usize| format!("{}1{}", "[".repeat(depth - 1), "]".repeat(depth - 1));
        let at_limit = format!("{{\"a\": {}}}", nested(MAX_DEPTH));
        parsed(&at_limit);
        let beyond = format!("{{\"a\": {}}}", nested(MAX_DEPTH + 1));
        assert!(refused(&beyond).contains("nested"));
        let far_beyond = format!("{{\"a\": {}}}", nested(100_000));
        assert!(refused(&far_beyond).contains("nested"));
    }

    #[test]
    fn refuses_what_python_refuses_or_a_string_cannot_hold() {
        let long_int = format!("{{\"n\": {}}}", "7".repeat(MAX_INT_DIGITS + 1));
        let longest_int = format!("{{\"n\": {}}}", "7".repeat(MAX_INT_DIGITS));
        parsed(&longest_int);
        let long_float = format!("{{\"n\": {}.5}}", "7".repeat(MAX_INT_DIGITS + 1));
        parsed(&long_float);
        for (text, reason) in [
            ("[]", "expected an object"),
            ("1", "expected an object"),
            ("\u{feff}{}", "expected an object"),
            ("{} {}", "extra data"),
            ("{\"a\": 01}", "expected ','"),
            ("{\"a\": 1.}", "expected ','"),
            ("{\"a\": 1e}", "expected ','"),
            ("{\"a\": .5}", "expected a value"),
            ("{\"a\": +1}", "expected a value"),
            ("{\"a\": nan}", "expected a value"),
            ("{\"a\": -NaN}", "expected a digit"),
            ("{\"a\": \"\t\"}", "control character"),
            ("{\"a\": \"\\x\"}", "invalid escape"),
            ("{\"a\": \"\\u12\"}", "invalid \\u escape"),
            ("{\"a\": \"\\ud800\"}", "lone UTF-16 surrogate"),
            ("{\"a\": \"\\udc00\\ud800\"}", "lone UTF-16 surrogate"),
            ("{\"a\": \"\\ud800\\u0041\"}", "lone UTF-16 surrogate"),
            ("{\"a\": 1,}", "expected a key"),
            ("{'a': 1}", "expected a key"),
            ("{\"a\" 1}", "expected ':'"),
            ("{\"a\": [1 2]}", "expected ',' or ']'"),
            ("{\"a\": \"open", "unterminated"),
            ("{", "expected a key"),
            (long_int.as_str(), "4300 digits"),
        ] {
            assert!(
                refused(text).contains(reason),
                "{text:?}: {}",
                refused(text)
            );
        }
        for (body, offset) in [
            (&b"{\"a\": \"\xff\"}"[..], 7),
            (b"{\"a\": 1\xff}", 7),
            (b"{\"a\xe9\": 1}", 3),
            (b"{\"a\": 1 , \"b\": [\"\xc3\xa9\", \xc3]}", 22),
            (b"\xef\xbb{}", 0),
        ] {
            let error = JsonError {
                offset,
                reason: "not UTF-8",
            };
            assert_eq!(check_object(body), Err(error.clone()), "{body:?}");
            assert_eq!(parse_object(body), Err(error), "{body:?}");
        }
        // Text that is not ASCII but is UTF-8, where no value may be, is
        // a syntax error.
        assert_eq!(refused("{\"a\": [\"é\", é]}"), "expected a value");
    }
}
