//! api::jsonb: what PostgreSQL's `jsonb` would refuse in a payload, found in one pass over its
//! JSON text before the event is queued. A refused row found only inside a batch fails the
//! batch and costs a retry; found here, it is a clear 400 that costs nobody else anything.
//!
//! The bounds are PostgreSQL 15's, measured with `SELECT (...)::jsonb` on the boundary values
//! (the tests below keep them): `numeric` holds a nonzero number whose leading digit is at most
//! at 10^131071, at most 16,383 digits after the point as written (exponent applied, trailing
//! zeros counted: `1.0e-16383` is refused, so is `0e-20000`), and exponents under 2^30 - 1.
//! Strings may not hold `\u0000` or unpaired surrogates. Nesting is bounded well under
//! PostgreSQL's own limit, which depends on `max_stack_depth`.
//!
//! Beyond what PostgreSQL refuses, one bound of the server's own: what a payload's numbers print
//! as. `numeric` stores `1e131071` in a few bytes but prints it as 131,072 digits, so a 256 KiB
//! payload of such numbers would print as gigabytes, more than PostgreSQL can hand back; the
//! statements that read payloads for several tenants at once (a delivery claim) would fail
//! for all of them. A payload's numbers may print as at most `PRINTED_DIGITS_MAX` digits.

// The bounds PostgreSQL puts on `jsonb` (and the server's on nesting) are `jsonb_text`'s, which
// prints what is stored.
use crate::jsonb_text::{exponent_of, scale, DEPTH_MAX};

/// Digits a payload's numbers may print as, all together: four times the largest event body,
/// far past any real payload's (which print as about as many digits as they are written with).
pub const PRINTED_DIGITS_MAX: u64 = 1 << 20;

/// Why PostgreSQL would refuse the JSON text `json` as `jsonb`, or `None`. `json` is valid
/// JSON (the caller parsed it).
pub fn refusal(json: &[u8]) -> Option<&'static str> {
    let mut depth = 0usize;
    let mut printed: u64 = 0;
    let mut i = 0;
    while i < json.len() {
        let step = match json[i] {
            b'"' => string_end(json, i + 1),
            b'[' | b'{' => {
                depth += 1;
                if depth > DEPTH_MAX {
                    return Some("nests arrays and objects deeper than 512 levels");
                }
                Ok(i + 1)
            }
            b']' | b'}' => {
                depth -= 1;
                Ok(i + 1)
            }
            b'-' | b'0'..=b'9' => number_end(json, i).and_then(|(end, digits)| {
                printed += digits;
                if printed > PRINTED_DIGITS_MAX {
                    return Err("has numbers that print as more than 1,048,576 digits");
                }
                Ok(end)
            }),
            _ => Ok(i + 1),
        };
        match step {
            Ok(next) => i = next,
            Err(why) => return Some(why),
        }
    }
    None
}

/// The end of the string whose content starts at `at`, checking its `\u` escapes.
fn string_end(json: &[u8], mut at: usize) -> Result<usize, &'static str> {
    let hex = |at: usize| -> Option<u16> {
        let digits = std::str::from_utf8(json.get(at..at + 4)?).ok()?;
        u16::from_str_radix(digits, 16).ok()
    };
    loop {
        let off = json[at..]
            .iter()
            .position(|&c| c == b'"' || c == b'\\')
            .ok_or("has an unterminated string")?;
        at += off;
        if json[at] == b'"' {
            return Ok(at + 1);
        }
        if json.get(at + 1) != Some(&b'u') {
            at += 2; // any other escape is two bytes
            continue;
        }
        let unit = hex(at + 2).unwrap_or(0xFFFF);
        at += 6;
        match unit {
            0 => return Err("must not contain \\u0000"),
            0xD800..=0xDBFF => {
                let low = (json.get(at) == Some(&b'\\') && json.get(at + 1) == Some(&b'u'))
                    .then(|| hex(at + 2))
                    .flatten();
                if !matches!(low, Some(0xDC00..=0xDFFF)) {
                    return Err("has an unpaired UTF-16 surrogate escape");
                }
                at += 6;
            }
            0xDC00..=0xDFFF => return Err("has an unpaired UTF-16 surrogate escape"),
            _ => {}
        }
    }
}

/// The end of the number starting at `at`, checking it against `numeric`'s bounds, and how
/// many digits PostgreSQL prints it with.
fn number_end(json: &[u8], mut at: usize) -> Result<(usize, u64), &'static str> {
    let digits = |at: usize| json[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    if json[at] == b'-' {
        at += 1;
    }
    let int = &json[at..at + digits(at)];
    at += int.len();
    let mut frac: &[u8] = &[];
    if json.get(at) == Some(&b'.') {
        frac = &json[at + 1..at + 1 + digits(at + 1)];
        at += 1 + frac.len();
    }
    let mut exponent: i64 = 0;
    if matches!(json.get(at), Some(b'e' | b'E')) {
        at += 1;
        let negative = json.get(at) == Some(&b'-');
        if matches!(json.get(at), Some(b'-' | b'+')) {
            at += 1;
        }
        let n = digits(at);
        exponent = exponent_of(&json[at..at + n]);
        at += n;
        if negative {
            exponent = -exponent;
        }
    }
    let scale =
        scale(int, frac, exponent).ok_or("has a number beyond PostgreSQL's numeric range")?;
    Ok((at, scale.printed_digits()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(number: &str) -> bool {
        refusal(format!(r#"{{"n":{number}}}"#).as_bytes()).is_some()
    }

    #[test]
    fn numbers_that_print_as_gigabytes_are_refused_however_few_bytes_they_are_written_in() {
        // Each prints as 131,072 digits: eight are within the bound, nine are not.
        let many = |n: usize| format!(r#"{{"n":[{}]}}"#, vec!["1e131071"; n].join(","));
        assert_eq!(refusal(many(8).as_bytes()), None);
        assert!(refusal(many(9).as_bytes()).is_some());
        // Numbers as written print as about as many digits.
        let plain = format!(r#"{{"n":[{}]}}"#, vec!["123.456"; 20_000].join(","));
        assert_eq!(refusal(plain.as_bytes()), None);
        assert!(refusal(br#"{"n":1e-16383}"#).is_none());
    }

    #[test]
    fn numbers_are_held_to_what_postgresql_15_stores() {
        // Each pair measured against PostgreSQL 15: `SELECT ('{"a":' || v || '}')::jsonb`.
        let accepted = [
            "1e131071",
            "9e131071",
            "-1e131071",
            "1.5e131071",
            "12e131070",
            "0.1e131072",
            "100e131069",
            "1e-16383",
            "0e999999",
            "0e999999999",
            "10000000000",
            "0",
            "-0.0",
            "3.14",
        ];
        let refused_by_pg = [
            "1e131072",
            "1e-16384",
            "1e-20000",
            "1.0e-16383",
            "0e-20000",
            "0.0e-16383",
            "0.0001e-16380",
            "0.00000e-16380",
            "1e9999999999999999999",
            "0e9999999999",
            "0e-999999999",
        ];
        for n in accepted {
            assert!(!refused(n), "{n} is stored by PostgreSQL");
        }
        for n in refused_by_pg {
            assert!(refused(n), "{n} is refused by PostgreSQL");
        }
        let zeros = |n| format!("0.{}", "0".repeat(n));
        assert!(!refused(&zeros(16_383)) && refused(&zeros(16_384)));
        let nines = |n| "9".repeat(n);
        assert!(!refused(&nines(131_072)) && refused(&nines(131_073)));
    }

    #[test]
    fn nesting_is_bounded_and_strings_are_not_structure() {
        let nested = |levels: usize| {
            format!(
                "{{\"a\":{}1{}}}",
                "[".repeat(levels - 1),
                "]".repeat(levels - 1)
            )
        };
        assert_eq!(refusal(nested(DEPTH_MAX).as_bytes()), None);
        assert!(refusal(nested(DEPTH_MAX + 1).as_bytes()).is_some());
        // Brackets, digits and quotes inside strings are text.
        let text = format!(r#"{{"s":"{} 1e999999 \" \\ ]]]"}}"#, "[".repeat(1000));
        assert_eq!(refusal(text.as_bytes()), None);
    }

    #[test]
    fn escapes_jsonb_cannot_store_are_refused_and_others_pass() {
        for bad in [
            r#"{"a":"\u0000"}"#,
            r#"{"a":"\ud800"}"#,
            r#"{"a":"\udc00x"}"#,
        ] {
            assert!(refusal(bad.as_bytes()).is_some(), "{bad}");
        }
        assert_eq!(refusal(br#"{"a":"\\u0000 \ud83d\ude00 \n"}"#), None);
    }

    mod fuzz {
        //! The scan against a reference computed from the parts a number was built from, and
        //! against serde_json's reading of the whole document.
        use proptest::prelude::*;
        use serde_json::Value;

        use super::*;
        use crate::jsonb_text::{DSCALE_MAX, EXPONENT_MAX, WEIGHT_MAX};

        /// A JSON number from its parts, and whether PostgreSQL's numeric holds it, computed
        /// from the parts rather than the text.
        fn a_number() -> impl Strategy<Value = (String, bool)> {
            let digits = |n| prop::collection::vec(0u8..10, 1..n);
            let exponent = prop_oneof![
                -20i64..20,
                -16_400i64..-16_300,
                131_000i64..131_100,
                Just(EXPONENT_MAX),
                Just(EXPONENT_MAX + 1),
                Just(-EXPONENT_MAX - 1),
            ];
            (
                any::<bool>(),
                digits(6),
                prop::option::of(digits(6)),
                prop::option::of(exponent),
            )
                .prop_map(|(negative, mut int, frac, exp)| {
                    if int.len() > 1 {
                        int[0] = int[0].max(1); // JSON: no leading zero
                    }
                    let text =
                        |d: &[u8]| d.iter().map(|d| char::from(b'0' + d)).collect::<String>();
                    let mut s = format!("{}{}", if negative { "-" } else { "" }, text(&int));
                    let frac = frac.unwrap_or_default();
                    if !frac.is_empty() {
                        s.push_str(&format!(".{}", text(&frac)));
                    }
                    let e = exp.unwrap_or(0);
                    if let Some(e) = exp {
                        s.push_str(&format!("e{e}"));
                    }
                    let all: Vec<u8> = int.iter().chain(&frac).copied().collect();
                    let scale = frac.len() as i64 - e;
                    let fits = e.abs() <= EXPONENT_MAX
                        && scale <= DSCALE_MAX
                        && match all.iter().position(|&d| d != 0) {
                            None => true,
                            // The leading digit's power of ten.
                            Some(lead) => int.len() as i64 - 1 - lead as i64 + e <= WEIGHT_MAX,
                        };
                    (s, fits)
                })
        }

        /// Arbitrary JSON, strings with NUL and escapes included.
        fn a_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(Value::from),
                "\\PC{0,8}|[\\x00\"\\\\\\[\\]{}]{0,4}".prop_map(Value::from),
            ];
            leaf.prop_recursive(6, 64, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                    prop::collection::btree_map("[a-z\\x00\\[]{0,4}", inner, 0..6)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn has_nul(v: &Value) -> bool {
            match v {
                Value::String(s) => s.contains('\0'),
                Value::Array(a) => a.iter().any(has_nul),
                Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
                _ => false,
            }
        }

        proptest! {
            #[test]
            fn numbers_anywhere_are_judged_as_their_parts_say((number, fits) in a_number(), noise in a_value()) {
                let doc = format!(r#"{{"noise":{noise},"n":[{number}]}}"#);
                prop_assert_eq!(refusal(doc.as_bytes()).is_none(), fits && !has_nul(&noise), "{}", number);
            }

            #[test]
            fn documents_are_refused_only_for_nul_or_depth(v in a_value(), wrap in 0usize..600) {
                fn depth(v: &Value) -> usize {
                    match v {
                        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
                        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
                        _ => 0,
                    }
                }
                // (serde_json reads no deeper than 128 levels, so the reference is computed
                // from the parts, not by reading the document back.)
                let doc = format!(r#"{{"v":{}{}{}}}"#, "[".repeat(wrap), v, "]".repeat(wrap));
                let deep = 1 + wrap + depth(&v) > DEPTH_MAX;
                prop_assert_eq!(refusal(doc.as_bytes()).is_some(), deep || has_nul(&v));
            }
        }
    }
}
