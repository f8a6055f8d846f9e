//! `jsonb_text::canonical` against the server it stands in for: thousands of random documents
//! (duplicate and multi-byte keys, escapes of every kind, numbers in every notation, broken
//! ones too), each compared with what PostgreSQL prints for it as `jsonb`, refusals included.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use testkit::shared_cluster;
use triggers::jsonb_text::{canonical, DEPTH_MAX};

/// Random documents compared, besides the hand-picked ones.
const DOCUMENTS: usize = 4_000;
/// The generator's seed: every run compares the same documents.
const SEED: [u8; 32] = *b"jsonb_text: the postgres output.";

/// JSON whitespace, mostly none.
fn ws() -> impl Strategy<Value = String> + Clone {
    prop_oneof![4 => Just(String::new()), 1 => "[ \t\n\r]{1,3}"]
}

/// A JSON number: every notation, with digits and exponents near `numeric`'s bounds now and
/// then (positive exponents that print 131,072 digits, negative ones that print 16,383).
fn number() -> impl Strategy<Value = String> {
    let int = prop_oneof![
        3 => Just("0".to_string()),
        6 => "[1-9][0-9]{0,8}",
        1 => "[1-9][0-9]{18,60}",
    ];
    let frac = prop_oneof![
        4 => Just(String::new()),
        3 => "\\.[0-9]{1,10}",
        1 => "\\.0{1,20}[0-9]{0,5}",
    ];
    let exponent_value = prop_oneof![
        20 => 0i64..30,
        4 => 30i64..400,
        1 => 131_060i64..131_075,
        1 => -16_390i64..-16_375,
        1 => 1_073_741_820i64..1_073_741_825,
        1 => -1_073_741_825i64..-1_073_741_820,
        1 => 10_000_000_000i64..100_000_000_000_000,
    ];
    let exponent = prop_oneof![
        3 => Just(String::new()),
        2 => (
            "[eE]",
            prop_oneof![Just(""), Just("+")],
            "0{0,2}",
            exponent_value
        )
            .prop_map(|(e, plus, zeros, v)| {
                let sign = if v < 0 { "-" } else { plus };
                format!("{e}{sign}{zeros}{}", v.unsigned_abs())
            }),
    ];
    (prop_oneof![Just(""), Just("-")], int, frac, exponent)
        .prop_map(|(sign, int, frac, exp)| format!("{sign}{int}{frac}{exp}"))
}

/// A `\u` escape of `unit`, its hex digits in a random mix of cases.
fn u_escape(unit: u16, case: u8) -> String {
    let hex: String = format!("{unit:04x}")
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if case >> i & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    format!("\\u{hex}")
}

/// A piece of a string's content, as written in JSON: mostly valid, now and then something
/// jsonb refuses.
fn string_piece() -> impl Strategy<Value = String> {
    let unit =
        |range: std::ops::Range<u16>| (range, any::<u8>()).prop_map(|(u, case)| u_escape(u, case));
    prop_oneof![
        40 => "[a-zA-Z0-9 /'.,:{}\\[\\]#]{1,4}",
        15 => prop::sample::select(vec![
            "é", "中", "😀", "\u{7f}", "\u{80}", "\u{2028}", "\u{feff}", "\u{fffd}", "\u{ffff}",
            "\u{10ffff}", "ß", "\u{301}",
        ])
        .prop_map(str::to_string),
        15 => "\\\\[\"\\\\/bfnrt]",
        10 => unit(1..0x20),
        10 => unit(0x20..0x80),
        10 => unit(0x80..0xD800),
        5 => unit(0xE000..0xFFFF),
        5 => (0xD800u16..0xDC00, 0xDC00u16..0xE000, any::<u8>())
            .prop_map(|(hi, lo, case)| format!("{}{}", u_escape(hi, case), u_escape(lo, !case))),
        // Refused: NUL, unpaired surrogates, raw control characters, unknown or short escapes.
        1 => prop::sample::select(vec![
            "\\u0000", "\\ud800", "\\uDBFF", "\\udc00", "\\ud800\\u0041", "\\ud800x\\udc00",
            "\\ud800\\ud800\\udc00", "\t", "\n", "\u{1}", "\u{1f}", "\\x", "\\U0041", "\\u12",
            "\\'",
        ])
        .prop_map(str::to_string),
    ]
}

fn string() -> impl Strategy<Value = String> {
    prop::collection::vec(string_piece(), 0..6).prop_map(|p| format!("\"{}\"", p.concat()))
}

/// A key: mostly from a small set, so that objects repeat keys, some spelled two ways
/// (`\u00e9` is `é`, `a\u0062` is `ab`); keys of one length but different bytes.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "", "a", "b", "A", "_", "aa", "ab", "ba", "é", "\\u00e9", "\\u00E9", "\\u0061",
            "a\\u0062", "中", "😀", "\\ud83d\\ude00", "\\n", "\\u000a", "z\\\"", "\\/",
        ])
        .prop_map(|k| format!("\"{k}\"")),
        1 => string(),
    ]
}

/// A document: nested arrays and objects around scalars, whitespace anywhere it may go.
fn document() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        1 => Just("null".to_string()),
        1 => Just("true".to_string()),
        1 => Just("false".to_string()),
        5 => number(),
        5 => string(),
    ];
    let value = leaf.prop_recursive(6, 64, 8, |inner| {
        let element = (ws(), inner, ws()).prop_map(|(a, v, b)| format!("{a}{v}{b}"));
        prop_oneof![
            prop::collection::vec(element.clone(), 0..8).prop_map(|e| {
                if e.is_empty() {
                    "[]".to_string()
                } else {
                    format!("[{}]", e.join(","))
                }
            }),
            prop::collection::vec((ws(), key(), ws(), element), 0..8).prop_map(|m| {
                let members: Vec<String> = m
                    .into_iter()
                    .map(|(a, k, b, v)| format!("{a}{k}{b}:{v}"))
                    .collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    });
    (ws(), value, ws()).prop_map(|(a, v, b)| format!("{a}{v}{b}"))
}

/// One edit that usually breaks a document: a cut, a stray character, a lost one.
fn broken(doc: String, cut: prop::sample::Index, what: usize, stray: char) -> String {
    let bounds: Vec<usize> = doc
        .char_indices()
        .map(|(i, _)| i)
        .chain([doc.len()])
        .collect();
    let at = bounds[cut.index(bounds.len())];
    match what % 3 {
        0 => doc[..at].to_string(),
        1 => format!("{}{stray}{}", &doc[..at], &doc[at..]),
        _ => {
            let next = bounds.iter().find(|&&b| b > at).copied().unwrap_or(at);
            format!("{}{}", &doc[..at], &doc[next..])
        }
    }
}

fn documents() -> impl Strategy<Value = String> {
    let stray = prop::sample::select(vec![
        ',', ']', '}', '[', '{', ':', '"', '\\', 'x', '0', '-', '.', 'e', ' ', '\u{c}', '\u{b}',
        'é',
    ]);
    prop_oneof![
        9 => document(),
        1 => (document(), any::<prop::sample::Index>(), 0usize..3, stray)
            .prop_map(|(d, cut, what, c)| broken(d, cut, what, c)),
    ]
}

/// Hand-picked documents: the rules' examples and the bounds, as the generator rarely lands
/// on them exactly.
fn picked() -> Vec<String> {
    let mut docs: Vec<String> = [
        r#"{"b":1,"a":[1,2],"aa":{},"c":[]}"#,
        r#"{"a":1,"a":2}"#,
        r#"{"a":{"b":1,"b":[]},"a":null}"#,
        r#""\u00e9\/\b\f\n\r\t\u001f\u007f\u2028\"\\""#,
        r#""\ud83d\ude00""#,
        r#""\u0000""#,
        "1e2",
        "1.50",
        "1.0e1",
        "1E-2",
        "-0",
        "-0.0",
        "-0.0e-3",
        "0.10e1",
        "1e-7",
        "123456789012345678901234567890",
        "1e131071",
        "1e131072",
        "-0.1e131072",
        "1e-16383",
        "1e-16384",
        "1.0e-16383",
        "0e1073741822",
        "0e1073741823",
        "0e-1073741822",
        "0e999999999999",
        "5",
        " \"x\" ",
        "",
        "\u{feff}{}",
        "\u{c}{}",
        "[1,]",
        "01",
        "1.",
        ".5",
        "+1",
        "NaN",
        "truex",
        "[true1]",
    ]
    .iter()
    .map(|d| d.to_string())
    .collect();
    docs.push("9".repeat(131_072));
    docs.push("9".repeat(131_073));
    docs.push(format!("0.{}", "0".repeat(16_383)));
    docs.push(format!("0.{}", "0".repeat(16_384)));
    let nested = |levels: usize| format!("{}{}", "[".repeat(levels), "]".repeat(levels));
    docs.push(nested(DEPTH_MAX));
    docs
}

/// What PostgreSQL prints for `doc` as jsonb, or the SQLSTATE it refused it with.
fn postgres_text(
    db: &mut postgres::Client,
    cast: &postgres::Statement,
    doc: &str,
) -> Result<String, String> {
    match db.query_one(cast, &[&doc]) {
        Ok(row) => Ok(row.get(0)),
        Err(e) => {
            let code = e
                .code()
                .unwrap_or_else(|| panic!("no refusal but a failure: {e}"));
            Err(code.code().to_string())
        }
    }
}

/// A document for a failure message: the whole of a short one, the ends of a long one.
fn shown(doc: &str) -> String {
    if doc.chars().count() <= 300 {
        return format!("{doc:?}");
    }
    let head: String = doc.chars().take(150).collect();
    let tail: String = doc.chars().skip(doc.chars().count() - 150).collect();
    format!("{head:?} ... {tail:?} ({} bytes)", doc.len())
}

#[test]
fn the_canonical_text_is_what_postgresql_prints_for_every_document() {
    let mut db = shared_cluster().client();
    let cast = db.prepare("SELECT $1::text::jsonb::text").unwrap();
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &SEED),
    );
    let strategy = documents();
    let mut docs = picked();
    docs.extend((0..DOCUMENTS).map(|_| strategy.new_tree(&mut runner).unwrap().current()));

    let mut refusals: BTreeMap<String, usize> = BTreeMap::new();
    let mut mismatches = Vec::new();
    for doc in &docs {
        let ours = canonical(doc.as_bytes());
        let theirs = postgres_text(&mut db, &cast, doc);
        if let Err(code) = &theirs {
            *refusals.entry(code.clone()).or_default() += 1;
        }
        if ours != theirs.clone().ok() {
            mismatches.push(format!(
                "document {}\n  canonical:  {:?}\n  PostgreSQL: {:?}",
                shown(doc),
                ours.as_deref().map(shown),
                theirs.map(|t| shown(&t)),
            ));
        }
    }
    let refused: usize = refusals.values().sum();
    eprintln!(
        "{} documents: {} printed, refused {refusals:?}",
        docs.len(),
        docs.len() - refused
    );
    assert!(
        mismatches.is_empty(),
        "{} of {} documents differ:\n{}",
        mismatches.len(),
        docs.len(),
        mismatches[..mismatches.len().min(10)].join("\n")
    );
    // The generator must exercise both sides of the contract.
    assert!(
        refused * 20 > docs.len() && refused * 2 < docs.len(),
        "{refusals:?}"
    );
}

/// The one place `canonical` refuses what PostgreSQL would take: nesting past the server's own
/// bound (`api::jsonb` refuses such payloads before they are stored).
#[test]
fn nesting_past_the_servers_bound_is_refused_though_postgresql_takes_it() {
    let mut db = shared_cluster().client();
    let cast = db.prepare("SELECT $1::text::jsonb::text").unwrap();
    let deep = format!(
        "{}1{}",
        r#"{"a":["#.repeat(DEPTH_MAX / 2),
        "]}".repeat(DEPTH_MAX / 2)
    );
    assert_eq!(
        canonical(deep.as_bytes()),
        postgres_text(&mut db, &cast, &deep).ok()
    );
    let deeper = format!("[{deep}]");
    assert!(postgres_text(&mut db, &cast, &deeper).is_ok());
    assert_eq!(canonical(deeper.as_bytes()), None);
}
