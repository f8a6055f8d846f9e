//! jsonb_text: the JSON text PostgreSQL 15 prints for a value stored as `jsonb` (`jsonb_out`,
//! what `payload::text` reads back), produced in Rust from the raw JSON, byte for byte. A
//! webhook's first attempt sends it instead of the request's own bytes, so that every attempt
//! of one delivery carries the same body as the retries that read the payload back.
//!
//! What PostgreSQL does to a document, each rule measured on a PostgreSQL 15 server (the unit
//! tests keep the examples; `tests/server/jsonb_text.rs` compares thousands of random
//! documents with the server's own output):
//!
//! - Layout: `{"a": 1, "b": [1, 2]}`: `", "` between members and elements, `": "` after keys,
//!   `{}` and `[]` when empty, no other whitespace.
//! - Keys: sorted shorter first, then by their UTF-8 bytes; of duplicate keys the last value
//!   wins, at the key's sorted place.
//! - Strings: escapes are decoded (`\u` surrogate pairs included); `"` `\` and the control
//!   characters are escaped again (`\b \f \n \r \t`, others as `\u00XX` in lowercase hex);
//!   everything else, `/` DEL and U+2028 included, is raw UTF-8. `\u0000` and unpaired
//!   surrogates are refused, as are raw control characters.
//! - Numbers are `numeric`: a plain decimal, no exponent, with as many digits after the point
//!   as were written less the exponent (`1.50` → `1.50`, `1.0e1` → `10`, `1e-2` → `0.01`,
//!   `150e-1` → `15.0`), and no sign on zero (`-0.0` → `0.0`). Out of `numeric`'s range is
//!   refused (bounds below).
//!
//! Never touches I/O, imports nothing of the crate, and allocates nothing in proportion to a
//! number's exponent before its bounds are checked: a hostile `1e999999999` costs nothing.

use std::borrow::Cow;
use std::cmp::Ordering;

/// Deepest nesting of arrays and objects, the document's own braces included: the bound the
/// server puts on payloads before storing them (`api::jsonb`). PostgreSQL parses `jsonb`
/// recursively and itself takes deeper documents (~20,000 levels at the default 2 MB
/// `max_stack_depth`, ~1,000 at its 100 kB minimum); no real event nests past a few dozen.
pub const DEPTH_MAX: usize = 512;
/// Highest power of ten of a nonzero number's leading digit that `numeric` stores (32,767
/// base-10,000 digits above the point).
pub const WEIGHT_MAX: i64 = 131_071;
/// Most digits after the decimal point `numeric` stores (its 14-bit display scale).
pub const DSCALE_MAX: i64 = 16_383;
/// Largest exponent magnitude PostgreSQL reads (`INT_MAX / 2 - 1`): `0e1073741822` is stored,
/// `0e1073741823` refused.
pub const EXPONENT_MAX: i64 = 1_073_741_822;
/// Longest string in bytes (decoded) one jsonb value holds (`JENTRY_OFFLENMASK`).
const STRING_BYTES_MAX: usize = 0x0FFF_FFFF;
/// Longest text in bytes PostgreSQL can hand back: a `text` value is one allocation of at most
/// `MaxAllocSize` (1 GiB - 1), its 4-byte header included. Numbers written with large
/// exponents print far longer than they are written (`1e131071` is 131,072 digits), so a
/// document PostgreSQL stores may still be one it cannot print.
const TEXT_BYTES_MAX: usize = 0x3FFF_FFFF - 4;

/// The text PostgreSQL prints for `raw::jsonb` (`jsonb_out`), or `None` when `raw` is not JSON
/// PostgreSQL's jsonb would take: not UTF-8, not JSON, a string with `\u0000` or an unpaired
/// surrogate, a number out of `numeric`'s range, nesting deeper than `DEPTH_MAX`, or text
/// longer than PostgreSQL can return.
///
/// Not modelled: jsonb's 256 MB caps on one container's binary size and element count. By the
/// format's layout (not measured) a jsonb value takes at most ~7 bytes per byte of JSON text,
/// so no text under 32 MB reaches them; the server takes payloads of at most a few megabytes.
pub fn canonical(raw: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(raw).ok()?;
    let mut parser = Parser {
        text,
        bytes: raw,
        at: 0,
    };
    parser.skip_whitespace();
    let value = parser.value(0)?;
    parser.skip_whitespace();
    if parser.at != raw.len() {
        return None;
    }
    // The length first: the allocation is made once, and never for text PostgreSQL could not
    // return.
    let len = value.printed_len();
    if len > TEXT_BYTES_MAX {
        return None;
    }
    let mut out = String::with_capacity(len);
    value.print(&mut out);
    debug_assert_eq!(out.len(), len);
    Some(out)
}

/// A parsed document. Strings and numbers borrow the input when it is already how PostgreSQL
/// prints them, which is the common case.
enum Value<'a> {
    Null,
    True,
    False,
    Number(Number<'a>),
    String(Text<'a>),
    Array(Vec<Value<'a>>),
    /// Sorted as PostgreSQL sorts keys, one member per key.
    Object(Vec<(Text<'a>, Value<'a>)>),
}

/// A string's content: borrowed when written with no escape (it then holds no `"`, `\` or
/// control character, so it prints as written), decoded otherwise.
type Text<'a> = Cow<'a, str>;

enum Number<'a> {
    /// Printed as written: no exponent and not a negative zero.
    Verbatim(&'a str),
    /// The digits written before and after the point, and where the point goes once the
    /// exponent is applied (an index into `int` then `frac`); within `numeric`'s bounds.
    Scaled {
        negative: bool,
        int: &'a str,
        frac: &'a str,
        point: i64,
        /// Digits printed after the point.
        dscale: usize,
        /// Index of the first nonzero digit; `None`: the number is zero.
        lead: Option<usize>,
    },
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    /// JSON's whitespace, which is all PostgreSQL's lexer skips (no form feed, no BOM).
    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn literal(&mut self, word: &[u8], value: Value<'a>) -> Option<Value<'a>> {
        if !self.bytes[self.at..].starts_with(word) {
            return None;
        }
        self.at += word.len();
        Some(value)
    }

    /// The value at `at` (whitespace skipped), `depth` arrays and objects in.
    fn value(&mut self, depth: usize) -> Option<Value<'a>> {
        match self.peek()? {
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b'"' => self.string().map(Value::String),
            b'-' | b'0'..=b'9' => self.number().map(Value::Number),
            b't' => self.literal(b"true", Value::True),
            b'f' => self.literal(b"false", Value::False),
            b'n' => self.literal(b"null", Value::Null),
            _ => None,
        }
    }

    fn array(&mut self, depth: usize) -> Option<Value<'a>> {
        if depth > DEPTH_MAX {
            return None;
        }
        self.at += 1; // [
        let mut elements = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Some(Value::Array(elements));
        }
        loop {
            self.skip_whitespace();
            elements.push(self.value(depth)?);
            self.skip_whitespace();
            match self.peek()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    return Some(Value::Array(elements));
                }
                _ => return None,
            }
        }
    }

    fn object(&mut self, depth: usize) -> Option<Value<'a>> {
        if depth > DEPTH_MAX {
            return None;
        }
        self.at += 1; // {
        let mut members: Vec<(Text<'a>, Value<'a>)> = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Some(Value::Object(members));
        }
        loop {
            self.skip_whitespace();
            if self.peek()? != b'"' {
                return None;
            }
            let key = self.string()?;
            self.skip_whitespace();
            if self.peek()? != b':' {
                return None;
            }
            self.at += 1;
            self.skip_whitespace();
            members.push((key, self.value(depth)?));
            self.skip_whitespace();
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    break;
                }
                _ => return None,
            }
        }
        // A stable sort keeps duplicates in the order written; the last of each run wins.
        members.sort_by(|(a, _), (b, _)| key_order(a, b));
        members.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
        Some(Value::Object(members))
    }

    /// The string whose opening quote is at `at`, decoded.
    fn string(&mut self) -> Option<Text<'a>> {
        self.at += 1; // "
        let start = self.at;
        let run = self.plain_run();
        match self.peek()? {
            b'"' if run > STRING_BYTES_MAX => return None,
            b'"' => {
                self.at += 1;
                return Some(Cow::Borrowed(&self.text[start..start + run]));
            }
            b'\\' => {}
            _ => return None, // a raw control character
        }
        let mut decoded = String::with_capacity(run + 16);
        decoded.push_str(&self.text[start..self.at]);
        loop {
            match self.peek()? {
                b'"' => {
                    self.at += 1;
                    break;
                }
                b'\\' => {
                    let c = self.escape()?;
                    decoded.push(c);
                }
                _ => return None,
            }
            let from = self.at;
            self.plain_run();
            decoded.push_str(&self.text[from..self.at]);
        }
        if decoded.len() > STRING_BYTES_MAX {
            return None;
        }
        Some(Cow::Owned(decoded))
    }

    /// Skips bytes that stand for themselves in a string; their count. Stops at `"`, `\`, a
    /// control character, or the end. (Stops only at ASCII, so `at` stays on a char boundary.)
    fn plain_run(&mut self) -> usize {
        let rest = &self.bytes[self.at..];
        let n = rest
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
            .unwrap_or(rest.len());
        self.at += n;
        n
    }

    /// The character of the escape at `at` (a backslash).
    fn escape(&mut self) -> Option<char> {
        let c = match *self.bytes.get(self.at + 1)? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let unit = self.hex(self.at + 2)?;
                self.at += 6;
                let code = match unit {
                    0 => return None, // jsonb cannot hold NUL
                    0xD800..=0xDBFF => {
                        // PostgreSQL wants the low half at once, as another `\u` escape.
                        if self.bytes.get(self.at..self.at + 2) != Some(b"\\u") {
                            return None;
                        }
                        let low = self.hex(self.at + 2)?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return None;
                        }
                        self.at += 6;
                        0x10000 + ((u32::from(unit) - 0xD800) << 10) + (u32::from(low) - 0xDC00)
                    }
                    0xDC00..=0xDFFF => return None,
                    _ => u32::from(unit),
                };
                return char::from_u32(code);
            }
            _ => return None,
        };
        self.at += 2;
        Some(c)
    }

    /// The four hex digits at `at`, either case.
    fn hex(&self, at: usize) -> Option<u16> {
        let digits = self.bytes.get(at..at + 4)?;
        digits.iter().try_fold(0u16, |n, &d| {
            let v = (d as char).to_digit(16)?;
            Some(n << 4 | v as u16)
        })
    }

    /// The number at `at`: JSON's grammar (no leading zeros, no bare point), held to
    /// `numeric`'s bounds.
    fn number(&mut self) -> Option<Number<'a>> {
        let start = self.at;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.at += 1;
        }
        let int_start = self.at;
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.skip_digits(),
            _ => return None,
        }
        let int = &self.text[int_start..self.at];
        let mut frac = "";
        if self.peek() == Some(b'.') {
            self.at += 1;
            let from = self.at;
            self.skip_digits();
            if self.at == from {
                return None;
            }
            frac = &self.text[from..self.at];
        }
        let mut exponent: Option<i64> = None;
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            let minus = self.peek() == Some(b'-');
            if matches!(self.peek(), Some(b'-' | b'+')) {
                self.at += 1;
            }
            let from = self.at;
            self.skip_digits();
            if self.at == from {
                return None;
            }
            let magnitude = exponent_of(&self.bytes[from..self.at]);
            exponent = Some(if minus { -magnitude } else { magnitude });
        }
        let Scale {
            dscale,
            point,
            lead,
        } = scale(int.as_bytes(), frac.as_bytes(), exponent.unwrap_or(0))?;
        if exponent.is_none() && !(negative && lead.is_none()) {
            return Some(Number::Verbatim(&self.text[start..self.at]));
        }
        Some(Number::Scaled {
            negative: negative && lead.is_some(),
            int,
            frac,
            point,
            dscale: dscale as usize,
            lead,
        })
    }

    fn skip_digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
    }
}

/// PostgreSQL's order of jsonb keys (`lengthCompareJsonbString`): shorter first, then bytes.
/// An exponent's digits as a number, saturating just past `EXPONENT_MAX` (whatever lies beyond
/// is refused alike).
pub fn exponent_of(digits: &[u8]) -> i64 {
    digits.iter().fold(0i64, |e, &d| {
        (e * 10 + i64::from(d - b'0')).min(EXPONENT_MAX + 1)
    })
}

/// Where a number written with the digits `int` `.` `frac` and `exponent` stands, as `numeric`
/// stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scale {
    /// Digits printed after the point.
    pub dscale: i64,
    /// Where the point goes once the exponent is applied: an index into `int` then `frac`.
    pub point: i64,
    /// Index of the first nonzero digit; `None`: the number is zero.
    pub lead: Option<usize>,
}

impl Scale {
    /// Digits the number prints with: those before the point (at least one), then `dscale`.
    pub fn printed_digits(&self) -> u64 {
        let before = self
            .lead
            .map_or(1, |lead| (self.point - lead as i64).max(1));
        (before + self.dscale) as u64
    }
}

/// The scale of a number, or `None` when `numeric` cannot hold it (PostgreSQL 15 refuses it).
pub fn scale(int: &[u8], frac: &[u8], exponent: i64) -> Option<Scale> {
    if exponent.abs() > EXPONENT_MAX {
        return None;
    }
    let dscale = (frac.len() as i64 - exponent).max(0);
    if dscale > DSCALE_MAX {
        return None;
    }
    let point = int.len() as i64 + exponent;
    let lead = int.iter().chain(frac).position(|&d| d != b'0');
    if lead.is_some_and(|lead| point - 1 - lead as i64 > WEIGHT_MAX) {
        return None;
    }
    Some(Scale {
        dscale,
        point,
        lead,
    })
}

fn key_order(a: &str, b: &str) -> Ordering {
    a.len()
        .cmp(&b.len())
        .then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

/// The escape PostgreSQL's `escape_json` writes for `b`, if any.
fn escape_of(b: u8) -> Option<&'static str> {
    const CONTROL: [&str; 0x20] = [
        "\\u0000", "\\u0001", "\\u0002", "\\u0003", "\\u0004", "\\u0005", "\\u0006", "\\u0007",
        "\\b", "\\t", "\\n", "\\u000b", "\\f", "\\r", "\\u000e", "\\u000f", "\\u0010", "\\u0011",
        "\\u0012", "\\u0013", "\\u0014", "\\u0015", "\\u0016", "\\u0017", "\\u0018", "\\u0019",
        "\\u001a", "\\u001b", "\\u001c", "\\u001d", "\\u001e", "\\u001f",
    ];
    match b {
        b'"' => Some("\\\""),
        b'\\' => Some("\\\\"),
        0..=0x1f => Some(CONTROL[usize::from(b)]),
        _ => None,
    }
}

fn text_len(text: &Text) -> usize {
    2 + match text {
        Cow::Borrowed(s) => s.len(),
        Cow::Owned(s) => s
            .bytes()
            .map(|b| escape_of(b).map_or(1, str::len))
            .sum::<usize>(),
    }
}

fn print_text(text: &Text, out: &mut String) {
    out.push('"');
    match text {
        Cow::Borrowed(s) => out.push_str(s),
        Cow::Owned(s) => {
            // Copies the runs between escapes whole; escapes are ASCII, so runs are chars.
            let mut from = 0;
            for (i, b) in s.bytes().enumerate() {
                if let Some(escape) = escape_of(b) {
                    out.push_str(&s[from..i]);
                    out.push_str(escape);
                    from = i + 1;
                }
            }
            out.push_str(&s[from..]);
        }
    }
    out.push('"');
}

impl Number<'_> {
    fn printed_len(&self) -> usize {
        match *self {
            Number::Verbatim(s) => s.len(),
            Number::Scaled {
                negative,
                point,
                dscale,
                lead,
                ..
            } => {
                let int_digits = match lead {
                    Some(lead) if point > lead as i64 => (point - lead as i64) as usize,
                    _ => 1,
                };
                usize::from(negative) + int_digits + if dscale > 0 { 1 + dscale } else { 0 }
            }
        }
    }

    /// `numeric_out`: the digits from the leading one (or `0`) to the point, then `dscale`
    /// digits after it, zeros where none were written.
    fn print(&self, out: &mut String) {
        let (negative, int, frac, point, dscale, lead) = match *self {
            Number::Verbatim(s) => return out.push_str(s),
            Number::Scaled {
                negative,
                int,
                frac,
                point,
                dscale,
                lead,
            } => (negative, int, frac, point, dscale, lead),
        };
        if negative {
            out.push('-');
        }
        match lead {
            Some(lead) if point > lead as i64 => push_digits(out, int, frac, lead as i64, point),
            _ => out.push('0'),
        }
        if dscale > 0 {
            out.push('.');
            push_digits(out, int, frac, point, point + dscale as i64);
        }
    }
}

/// Pushes the digits at `from..to` of those written (`int` then `frac`), zeros where none were
/// written: before the first (a point moved left) and after the last (moved right).
fn push_digits(out: &mut String, int: &str, frac: &str, from: i64, to: i64) {
    let zeros = |out: &mut String, n: i64| out.extend(std::iter::repeat_n('0', n.max(0) as usize));
    let mut at = from;
    for (start, digits) in [(0, int), (int.len() as i64, frac)] {
        let (lo, hi) = (at.max(start), to.min(start + digits.len() as i64));
        if lo < hi {
            zeros(out, lo - at);
            out.push_str(&digits[(lo - start) as usize..(hi - start) as usize]);
            at = hi;
        }
    }
    zeros(out, to - at);
}

impl Value<'_> {
    fn printed_len(&self) -> usize {
        match self {
            Value::Null => 4,
            Value::True => 4,
            Value::False => 5,
            Value::Number(n) => n.printed_len(),
            Value::String(s) => text_len(s),
            Value::Array(elements) => {
                let separators = 2 * elements.len().saturating_sub(1);
                2 + separators + elements.iter().map(Value::printed_len).sum::<usize>()
            }
            Value::Object(members) => {
                let separators = 2 * members.len().saturating_sub(1) + 2 * members.len();
                let content: usize = members
                    .iter()
                    .map(|(k, v)| text_len(k) + v.printed_len())
                    .sum();
                2 + separators + content
            }
        }
    }

    fn print(&self, out: &mut String) {
        match self {
            Value::Null => out.push_str("null"),
            Value::True => out.push_str("true"),
            Value::False => out.push_str("false"),
            Value::Number(n) => n.print(out),
            Value::String(s) => print_text(s, out),
            Value::Array(elements) => {
                out.push('[');
                for (i, v) in elements.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    v.print(out);
                }
                out.push(']');
            }
            Value::Object(members) => {
                out.push('{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    print_text(k, out);
                    out.push_str(": ");
                    v.print(out);
                }
                out.push('}');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(raw: &str) -> Option<String> {
        canonical(raw.as_bytes())
    }

    /// Each pair as PostgreSQL 15 printed it: `SELECT $$raw$$::jsonb::text`.
    fn check(pairs: &[(&str, &str)]) {
        for (raw, printed) in pairs {
            assert_eq!(canon(raw).as_deref(), Some(*printed), "{raw}");
        }
    }

    fn refused(docs: &[&str]) {
        for raw in docs {
            assert_eq!(canon(raw), None, "{raw} is refused by PostgreSQL");
        }
    }

    #[test]
    fn containers_print_with_one_space_after_commas_and_colons() {
        check(&[
            (r#"{"a":1,"b":[1,2]}"#, r#"{"a": 1, "b": [1, 2]}"#),
            ("{}", "{}"),
            ("[]", "[]"),
            ("[[],{},[{}]]", "[[], {}, [{}]]"),
            (r#"{"a":{}}"#, r#"{"a": {}}"#),
            (
                " \t\r\n{ \"a\" :\n[ 1 ,\t2 ] , \"b\" : { } }\n ",
                r#"{"a": [1, 2], "b": {}}"#,
            ),
            ("[ ]", "[]"),
            ("{\n}", "{}"),
        ]);
    }

    #[test]
    fn top_level_scalars_are_documents_too() {
        check(&[
            ("5", "5"),
            (" 5 ", "5"),
            (r#""x""#, r#""x""#),
            ("true", "true"),
            ("false", "false"),
            ("null", "null"),
            ("-1.5", "-1.5"),
        ]);
    }

    #[test]
    fn keys_sort_shorter_first_then_by_bytes() {
        check(&[
            (
                r#"{"b":1,"a":[1,2],"aa":{},"c":[]}"#,
                r#"{"a": [1, 2], "b": 1, "c": [], "aa": {}}"#,
            ),
            (
                r#"{"bb":1,"a":2,"ab":3,"é":4,"z":5}"#,
                r#"{"a": 2, "z": 5, "ab": 3, "bb": 1, "é": 4}"#,
            ),
            (
                r#"{"B":1,"a":2,"":3,"_":4}"#,
                r#"{"": 3, "B": 1, "_": 4, "a": 2}"#,
            ),
            // By bytes, not by code point order of UTF-16 or by locale.
            (
                r#"{"😀":1,"中":2,"éa":3}"#,
                r#"{"éa": 3, "中": 2, "😀": 1}"#,
            ),
        ]);
    }

    #[test]
    fn of_duplicate_keys_the_last_value_wins_at_the_sorted_place() {
        check(&[
            (r#"{"a":1,"a":2}"#, r#"{"a": 2}"#),
            (r#"{"b":0,"a":1,"b":2,"a":3,"a":4}"#, r#"{"a": 4, "b": 2}"#),
            (r#"{"a":{"b":1,"b":[]},"a":null}"#, r#"{"a": null}"#),
            (r#"{"a":{"b":1,"b":[]}}"#, r#"{"a": {"b": []}}"#),
            // Keys are compared decoded: `\u0061` is `a`.
            (r#"{"a":1,"\u0061":2}"#, r#"{"a": 2}"#),
            (r#"[{"x":1,"x":2},{"x":3}]"#, r#"[{"x": 2}, {"x": 3}]"#),
        ]);
    }

    #[test]
    fn strings_are_decoded_then_escaped_as_postgresql_escapes_them() {
        check(&[
            (
                r#""\u00e9\/\b\f\n\r\t\u001f\u007f\u2028\"\\""#,
                "\"é/\\b\\f\\n\\r\\t\\u001f\u{7f}\u{2028}\\\"\\\\\"",
            ),
            (r#""\ud83d\ude00""#, "\"😀\""),
            (r#""\uD83D\uDE00""#, "\"😀\""),
            (r#""\u0001\u000B\u001A""#, r#""\u0001\u000b\u001a""#),
            (r#""\u0022\u005C\u002F""#, r#""\"\\/""#),
            (r#""\u0008\u000c\u000A\u000d\u0009""#, r#""\b\f\n\r\t""#),
            ("\"é中😀\u{7f}\u{2028}/\"", "\"é中😀\u{7f}\u{2028}/\""),
            (r#""a\nb" "#, r#""a\nb""#),
            (r#""""#, r#""""#),
            (r#"{"k\"ey":"v\\"}"#, r#"{"k\"ey": "v\\"}"#),
        ]);
    }

    #[test]
    fn strings_jsonb_cannot_hold_are_refused() {
        refused(&[
            r#""\u0000""#,
            r#"{"\u0000":1}"#,
            r#""\ud800""#,
            r#""\udc00""#,
            r#""\ud800\u0041""#,
            r#""\ud800x\udc00""#,
            r#""\ud800\ud800\udc00""#,
            r#""\x""#,
            r#""\U0041""#,
            r#""\u00""#,
            r#""\u00g0""#,
            r#""\'""#,
            "\"a\nb\"",
            "\"\t\"",
            "\"\u{1f}\"",
            "\"\0\"",
            r#""abc"#,
            r#""\"#,
        ]);
        assert_eq!(canonical(b"\"\xff\""), None, "not UTF-8");
        assert_eq!(canonical(b"\"\xed\xa0\x80\""), None, "a surrogate in UTF-8");
    }

    #[test]
    fn numbers_print_as_numeric_prints_them() {
        // Digits after the point: as written, less the exponent, never below zero. No sign on
        // zero.
        check(&[
            ("1e2", "100"),
            ("1.50", "1.50"),
            ("1.0e1", "10"),
            ("1E-2", "0.01"),
            ("-0", "0"),
            ("-0.0", "0.0"),
            ("0.10e1", "1.0"),
            ("1e-7", "0.0000001"),
            (
                "123456789012345678901234567890",
                "123456789012345678901234567890",
            ),
            ("-0e5", "0"),
            ("-0.0e-3", "0.0000"),
            ("0e-3", "0.000"),
            ("0.000e2", "0.0"),
            ("1.5e-1", "0.15"),
            ("15e-1", "1.5"),
            ("150e-1", "15.0"),
            ("1.23e+2", "123"),
            ("-1.5", "-1.5"),
            ("1e0", "1"),
            ("0.0", "0.0"),
            ("1E+2", "100"),
            ("10e-1", "1.0"),
            ("-0.000", "0.000"),
            ("100", "100"),
            ("0.001", "0.001"),
            ("1.230", "1.230"),
            ("-1e-0", "-1"),
            ("-1e007", "-10000000"),
            ("0.00012e2", "0.012"),
            ("0.00012e4", "1.2"),
            ("0.00012e6", "120"),
            ("-12.5e-3", "-0.0125"),
            ("0e1073741822", "0"),
            ("-0e-16383", &format!("0.{}", "0".repeat(16_383))),
            ("1e-16383", &format!("0.{}1", "0".repeat(16_382))),
            ("[1e2,-0,1.50]", "[100, 0, 1.50]"),
        ]);
        assert_eq!(
            canon("1e131071").unwrap(),
            format!("1{}", "0".repeat(131_071))
        );
        assert_eq!(
            canon("-0.1e131072").unwrap(),
            format!("-1{}", "0".repeat(131_071))
        );
        let nines = "9".repeat(131_072);
        assert_eq!(canon(&nines).unwrap(), nines);
        let zeros = format!("0.{}", "0".repeat(16_383));
        assert_eq!(canon(&zeros).unwrap(), zeros);
    }

    #[test]
    fn numbers_out_of_numerics_range_or_json_grammar_are_refused() {
        refused(&[
            "1e131072",
            "10e131071",
            "1e-16384",
            "1.0e-16383",
            "0e-20000",
            "0.0e-16383",
            "0e1073741823",
            "0e-1073741822",
            "1e9999999999999999999999",
            "01",
            "-01",
            "1.",
            ".5",
            "+1",
            "-",
            "1e",
            "1e+",
            "1.e5",
            "0x10",
            "1_000",
            "NaN",
            "Infinity",
            "-Infinity",
            "1é",
            "[1 2]",
        ]);
        refused(&[&"9".repeat(131_073), &format!("0.{}", "0".repeat(16_384))]);
    }

    #[test]
    fn text_that_is_not_one_json_document_is_refused() {
        refused(&[
            "",
            "  ",
            "5 5",
            "[1,]",
            "[,1]",
            r#"{"a":1,}"#,
            r#"{"a"}"#,
            r#"{"a" 1}"#,
            "{1:1}",
            "{'a':1}",
            "[1",
            "{",
            "]",
            "tru",
            "truex",
            "[true1]",
            "nul",
            "True",
            "\u{feff}1",
            "\u{c}[]",
            "[1\u{b}]",
            "[1]\u{c}",
            "/* */ 1",
        ]);
    }

    #[test]
    fn nesting_deeper_than_the_bound_is_refused() {
        let nested = |levels: usize| format!("{}{}", "[".repeat(levels), "]".repeat(levels));
        assert_eq!(
            canon(&nested(DEPTH_MAX)),
            Some(nested(DEPTH_MAX).replace("][", "], ["))
        );
        assert_eq!(canon(&nested(DEPTH_MAX + 1)), None);
        let objects =
            |levels: usize| format!("{}1{}", r#"{"a":"#.repeat(levels), "}".repeat(levels));
        assert!(canon(&objects(DEPTH_MAX)).is_some());
        assert_eq!(canon(&objects(DEPTH_MAX + 1)), None);
    }

    #[test]
    fn text_longer_than_postgresql_can_return_is_refused_before_it_is_built() {
        // ~74 kB of JSON that would print as 1.07 GB: refused, with nothing allocated for it.
        let count = TEXT_BYTES_MAX / 131_072 + 1;
        let doc = format!("[{}1e131071]", "1e131071,".repeat(count - 1));
        assert_eq!(canon(&doc), None);
        let fits = format!("[{}1e131071]", "1e131071,".repeat(9));
        assert_eq!(
            canon(&fits).map(|t| t.len()),
            Some(10 * 131_072 + 2 + 9 * 2)
        );
    }

    /// A realistic event payload of about `bytes` bytes: orders with line items, unsorted
    /// keys, escapes, numbers of every kind.
    fn payload(bytes: usize) -> String {
        let item = |i: usize| {
            format!(
                r#"{{"sku":"SKU-{i:05}","qty":{},"price":{}.99,"name":"Widget \"{i}\" \u00e9t\u00e9","tags":["a","b\n"],"weight":1.5e-1,"ok":true,"note":null}}"#,
                i % 7 + 1,
                i * 3
            )
        };
        let mut items = Vec::new();
        let mut len = 0;
        while len < bytes.saturating_sub(200) {
            let one = item(items.len());
            len += one.len() + 1;
            items.push(one);
        }
        format!(
            r#"{{"order_id":"ord_8f14e45f","customer":{{"id":42,"email":"a@example.com","name":"Zoë"}},"items":[{}],"total":1234.50,"currency":"EUR","created_at":"2024-05-01T12:00:00Z"}}"#,
            items.join(",")
        )
    }

    #[test]
    #[ignore = "a timing, not a check: cargo test --release --lib jsonb_text -- --ignored --nocapture"]
    fn timing() {
        for size in [1_000, 200_000] {
            let doc = payload(size);
            let rounds = 20_000_000 / size;
            let start = std::time::Instant::now();
            for _ in 0..rounds {
                std::hint::black_box(canonical(std::hint::black_box(doc.as_bytes())));
            }
            let each = start.elapsed() / rounds as u32;
            let mb_s = doc.len() as f64 / each.as_secs_f64() / 1e6;
            eprintln!("{} bytes: {each:?} each, {mb_s:.0} MB/s", doc.len());
        }
    }

    mod fuzz {
        //! Canonical text is a fixed point: PostgreSQL reads what it printed back to the same
        //! text, and so must `canonical`.
        use proptest::prelude::*;

        use super::*;

        fn ws() -> impl Strategy<Value = String> + Clone {
            "[ \t\n\r]{0,2}"
        }

        fn number() -> impl Strategy<Value = String> {
            "-?(0|[1-9][0-9]{0,25})(\\.[0-9]{1,12})?([eE][+-]?[0-9]{1,3})?"
        }

        fn string() -> impl Strategy<Value = String> {
            concat!(
                "\"([a-zé中😀\u{7f}\u{2028} /]",
                "|\\\\[\"\\\\/bfnrt]",
                "|\\\\u00[01][1-9a-fA-F]",
                "|\\\\u[4-9a-cA-C][0-9a-fA-F]{3}",
                "|\\\\u[dD]83[dD]\\\\u[dD][e-fE-F][0-9a-f]{2}",
                ")*\""
            )
        }

        fn document() -> impl Strategy<Value = String> {
            let leaf = prop_oneof![
                Just("null".to_string()),
                Just("true".to_string()),
                Just("false".to_string()),
                number(),
                string(),
            ];
            leaf.prop_recursive(5, 48, 6, |inner| {
                let element = (ws(), inner, ws()).prop_map(|(a, v, b)| format!("{a}{v}{b}"));
                // A small key alphabet, so that keys repeat.
                let key = prop_oneof![
                    "\"[ab]{0,2}\"",
                    Just("\"\\u0061\"".to_string()),
                    Just("\"é\"".to_string()),
                    string(),
                ];
                prop_oneof![
                    prop::collection::vec(element.clone(), 0..6)
                        .prop_map(|e| format!("[{}]", e.join(","))),
                    prop::collection::vec((key, ws(), element), 0..6).prop_map(|m| {
                        let members: Vec<String> = m
                            .into_iter()
                            .map(|(k, w, v)| format!("{k}{w}:{v}"))
                            .collect();
                        format!("{{{}}}", members.join(","))
                    }),
                ]
            })
        }

        proptest! {
            #[test]
            fn canonical_text_is_its_own_canonical_text(doc in document(), pad in ws()) {
                let once = canonical(format!("{pad}{doc}{pad}").as_bytes());
                prop_assert!(once.is_some(), "{}", doc);
                let once = once.unwrap();
                prop_assert_eq!(canonical(once.as_bytes()), Some(once.clone()));
                // The length reckoned before printing is the length printed (the capacity, and
                // the bound on text PostgreSQL can return, rest on it).
                let mut parser = Parser { text: &once, bytes: once.as_bytes(), at: 0 };
                prop_assert_eq!(parser.value(0).map(|v| v.printed_len()), Some(once.len()));
                let mut parser = Parser { text: &doc, bytes: doc.as_bytes(), at: 0 };
                prop_assert_eq!(parser.value(0).map(|v| v.printed_len()), Some(once.len()));
            }
        }
    }
}
