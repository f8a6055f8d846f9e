//! db::statements (test only): every SQL statement in the server's source, listed, and each
//! either confined to one organization or named here with the reason it is not. On a
//! PostgreSQL sharded by organization (Citus), the first kind is single-shard; the second runs
//! on every shard, so each must be rare and known (tuning/README.md lists them). A new
//! statement that is neither fails this test until it is one or the other.
//! `cargo test --lib statements -- --nocapture` prints the list.

use std::fs;
use std::path::Path;

/// Statements that are not confined to one organization: (file, a piece of the statement, why).
/// Pieces are matched with whitespace runs read as one space.
const NOT_CONFINED: &[(&str, &str, &str)] = &[
    (
        "orgs.rs",
        "WHERE k.key_hash = $1",
        "a key look-up: a key does not name its organization (once per key per node)",
    ),
    (
        "deliveries.rs",
        "FROM organizations WHERE webhook_url IS NOT NULL",
        "the endpoints: every configured one at start, when a node's webhook listener \
         connects and once a minute (reload), one organization's when `AND org_id = $1` is \
         appended (reload_one)",
    ),
    (
        "deliveries.rs",
        "WHERE d.due_at <= now()",
        "delivery claims: due rows of every organization, oldest first",
    ),
    (
        "deliveries.rs",
        "FROM deliveries WHERE due_at < 'infinity' LIMIT $1",
        "the delivery backlog count for the stats, every 5 s",
    ),
    (
        "deliveries.rs",
        "FROM events WHERE {filter}",
        "re-delivery: every caller's filter starts with `org_id = $1`",
    ),
    (
        "events.rs",
        "FROM STDIN (FORMAT binary)",
        "a batch's rows by COPY: each carries its org_id (COPY_COLUMNS) and goes to its shard",
    ),
    (
        "events.rs",
        "INSERT INTO events ({columns})",
        "a batch's rows from staging or arrays: each carries its org_id and goes to its shard",
    ),
    (
        "deliveries.rs",
        "INSERT INTO delivery_attempts",
        "attempts recorded by the hundred: each row carries its org_id and goes to its shard",
    ),
    ("mod.rs", "pg_advisory_", "the migration lock: no table"),
    (
        "listen.rs",
        "SELECT pg_notify($1, $2)",
        "a change announced to every node (keys, tiers, webhooks): no table",
    ),
    (
        "orgs.rs",
        "SELECT DISTINCT key_prefix FROM api_keys",
        "the prefixes of every issued key, when a node's key listener connects",
    ),
    (
        "partitions.rs",
        "advisory_",
        "the partition upkeep's lock: no table",
    ),
    (
        "partitions.rs",
        "FROM pg_",
        "the partition upkeep reads the catalog (partitions, their bounds, the legacy table's \
         bound): no table of rows",
    ),
    (
        "partitions.rs",
        "SELECT to_regclass($1)",
        "the partition upkeep: does a class or the legacy table exist",
    ),
    (
        "partitions.rs",
        "DELETE FROM",
        "the partition upkeep's trimming: rows of expired events of every organization, a \
         bounded batch per statement, run on every shard (Citus: once a minute at most)",
    ),
    (
        "orgs.rs",
        "FROM organizations o ORDER BY",
        "the operator's listing of every organization (`triggers org list`)",
    ),
    ("health.rs", "SELECT 1", "the readiness probe: no table"),
    (
        "mod.rs",
        "FROM pg_database WHERE datname = $1",
        "the embedded cluster's start-up: does the server's database exist",
    ),
    (
        "mod.rs",
        "SELECT pg_backend_pid()",
        "the delivery store's session, to tell its own notices apart: no table",
    ),
];

/// Whether `sql` touches only rows of the organization(s) it is given: filtered by an
/// organization parameter (or an array of them, unnested as `k`), or inserting one row of
/// given values that leads with its org_id.
fn confined(sql: &str) -> bool {
    let filtered = ["org_id = $", "org_id = ANY(", "org_id = k.org_id"];
    let one_row = sql.contains("(org_id,") && sql.contains("VALUES ($1");
    filtered.iter().any(|f| sql.contains(f)) || one_row
}

fn is_statement(lit: &str) -> bool {
    let s = lit.trim_start();
    [
        "SELECT ",
        "INSERT INTO ",
        "UPDATE ",
        "DELETE FROM ",
        "WITH ",
    ]
    .iter()
    .any(|k| s.starts_with(k))
        || (s.starts_with("COPY ") && s.contains("FROM STDIN"))
}

/// The string literals of Rust source `src`, with their line.
fn literals(src: &str) -> Vec<(usize, String)> {
    let b = src.as_bytes();
    let (mut i, mut line, mut out) = (0, 1, Vec::new());
    while i < b.len() {
        match b[i] {
            b'\n' => line += 1,
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'\'' => {
                // A char literal ('"', '\'', '\n'), or a lifetime.
                if b.get(i + 1) == Some(&b'\\') {
                    i += 2;
                    while i < b.len() && b[i] != b'\'' {
                        i += 1;
                    }
                } else if b.get(i + 2) == Some(&b'\'') {
                    i += 2;
                }
            }
            b'r' if b.get(i + 1).is_some_and(|&c| c == b'"' || c == b'#')
                && !b[i.saturating_sub(1)].is_ascii_alphanumeric() =>
            {
                let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
                let start = i + 2 + hashes;
                let close = format!("\"{}", "#".repeat(hashes));
                let end = start + src[start..].find(&close).expect("a raw string ends");
                out.push((line, src[start..end].to_string()));
                line += src[start..end].matches('\n').count();
                i = end + close.len();
                continue;
            }
            b'"' => {
                let (start, mut j) = (i + 1, i + 1);
                while b[j] != b'"' {
                    j += if b[j] == b'\\' { 2 } else { 1 };
                }
                out.push((line, src[start..j].to_string()));
                line += src[start..j].matches('\n').count();
                i = j + 1;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_statement_is_confined_to_one_organization_or_named_with_its_reason() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let (mut listed, mut unexplained, mut used) = (0, Vec::new(), vec![false; NOT_CONFINED.len()]);
    for f in &files {
        let name = f.file_name().unwrap().to_str().unwrap();
        let rel = f.strip_prefix(&src).unwrap().display().to_string();
        if rel == "db/statements.rs" {
            continue;
        }
        for (line, lit) in literals(&fs::read_to_string(f).unwrap()) {
            if !is_statement(&lit) {
                continue;
            }
            listed += 1;
            let flat = lit.split_whitespace().collect::<Vec<_>>().join(" ");
            let why = NOT_CONFINED
                .iter()
                .position(|(file, piece, _)| *file == name && flat.contains(piece));
            let class = match why {
                _ if confined(&lit) => "confined to the organizations given".to_string(),
                Some(k) => {
                    used[k] = true;
                    format!("not confined: {}", NOT_CONFINED[k].2)
                }
                None => {
                    unexplained.push(format!("{rel}:{line}: {flat}"));
                    "UNEXPLAINED".to_string()
                }
            };
            eprintln!("{rel}:{line} [{class}]\n    {flat}");
        }
    }
    assert!(
        listed > 30,
        "found only {listed} statements: is the scan broken?"
    );
    assert!(
        unexplained.is_empty(),
        "statements neither confined to one organization nor named in NOT_CONFINED:\n{}",
        unexplained.join("\n")
    );
    let stale: Vec<_> = NOT_CONFINED
        .iter()
        .zip(&used)
        .filter(|(_, used)| !**used)
        .map(|((file, piece, _), _)| format!("{file}: {piece}"))
        .collect();
    assert!(
        stale.is_empty(),
        "NOT_CONFINED names statements that are gone: {stale:?}"
    );
}

#[test]
fn the_scan_finds_literals_past_chars_lifetimes_comments_and_raw_strings() {
    let src = r##"let q = '"'; // "not this"
fn f<'a>(x: &'a str) { let s = "SELECT 1 FROM t WHERE org_id = $1"; }
let r = r#"UPDATE t SET a = "b""#; let e = "a \" b";"##;
    let found: Vec<String> = literals(src).into_iter().map(|(_, l)| l).collect();
    assert_eq!(
        found,
        [
            "SELECT 1 FROM t WHERE org_id = $1",
            r#"UPDATE t SET a = "b""#,
            r#"a \" b"#
        ]
    );
    assert!(confined(&found[0]) && is_statement(&found[1]) && !is_statement(&found[2]));
}
