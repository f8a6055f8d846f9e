//! The floor rule, checked on the source: every module imports only from floors below its own
//! (`FLOORS` in lib.rs), no file imports its own folder's `mod.rs` (a folder's `mod.rs` is its
//! top, re-exporting what lies below), and the files of `src/` import each other without a
//! cycle. Imports are read as text: `crate::` paths (`triggers::` in main.rs), `super::` and
//! `self::` paths, and paths that start with a child module's name, in `use` lines and
//! anywhere else. Comments and test modules are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::FLOORS;

/// A module by its path: `[]` is the crate root, `["api", "events"]` is `src/api/events.rs`.
type Module = Vec<String>;

struct Source {
    module: Module,
    /// Declared under `#[cfg(test)]` by its parent: a test, not part of the house.
    test: bool,
    /// The children this file declares under `#[cfg(test)]`.
    test_children: Vec<String>,
    tokens: Vec<String>,
}

/// Drops comments, string literals and, from a `#[cfg(test)]` item on, the rest of the file
/// (test modules close a file here).
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    if !escaped && c == '"' {
                        break;
                    }
                    escaped = !escaped && c == '\\';
                }
                out.push_str("\"\"");
            }
            // A char literal such as '"' would open a string above; lifetimes pass through.
            '\'' => {
                let rest: String = chars.clone().take(3).collect();
                if rest.starts_with("\\") || rest.chars().nth(1) == Some('\'') {
                    for c in chars.by_ref() {
                        if c == '\'' {
                            break;
                        }
                    }
                } else {
                    out.push(c);
                }
            }
            c => out.push(c),
        }
    }
    out
}

fn tokenize(code: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut chars = code.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_alphanumeric() || c == '_' {
            let mut word = c.to_string();
            while let Some(&n) = chars.peek().filter(|n| n.is_alphanumeric() || **n == '_') {
                word.push(n);
                chars.next();
            }
            tokens.push(word);
        } else if c == ':' && chars.peek() == Some(&':') {
            chars.next();
            tokens.push("::".into());
        } else if !c.is_whitespace() {
            tokens.push(c.to_string());
        }
    }
    tokens
}

fn read_sources(dir: &Path, module: Module, out: &mut Vec<Source>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let path = entry.path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            let mut m = module.clone();
            m.push(name);
            read_sources(&path, m, out);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") || name == "floors" {
            continue;
        }
        let mut m = module.clone();
        if !matches!(name.as_str(), "mod" | "lib") {
            m.push(name);
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let test_children = text
            .split("#[cfg(test)]\nmod ")
            .skip(1)
            .filter_map(|rest| Some(rest.split_once(';')?.0.to_string()))
            .collect();
        out.push(Source {
            module: m,
            test: false,
            test_children,
            tokens: tokenize(&code_of(&text)),
        });
    }
}

/// Every path a file names, resolved to absolute module paths (with the item names after them,
/// which resolution trims).
fn paths_named(src: &Source, known: &BTreeSet<Module>) -> Vec<Module> {
    let t = &src.tokens;
    let mut out = Vec::new();
    let mut i = 0;
    while i < t.len() {
        let start: Option<Module> = match t[i].as_str() {
            "crate" => Some(vec![]),
            "triggers" if src.module == ["main"] => Some(vec![]),
            "super" => Some(src.module[..src.module.len().saturating_sub(1)].to_vec()),
            "self" => Some(src.module.clone()),
            // A child's name starts a path, unless it follows `::` or declares the child.
            word if i > 0 && t[i - 1] != "::" && t[i - 1] != "mod" => {
                let mut child = src.module.clone();
                child.push(word.to_string());
                known.contains(&child).then_some(src.module.clone())
            }
            _ => None,
        };
        let Some(base) = start else {
            i += 1;
            continue;
        };
        let from = if matches!(t[i].as_str(), "crate" | "triggers" | "super" | "self") {
            if t.get(i + 1).map(String::as_str) != Some("::") {
                i += 1;
                continue;
            }
            i + 2
        } else {
            i
        };
        i = use_tree(t, from, base, &mut out);
    }
    out
}

/// Reads one use-tree (or plain path) at `t[i]` under `prefix`; returns where it ended.
fn use_tree(t: &[String], mut i: usize, prefix: Module, out: &mut Vec<Module>) -> usize {
    match t.get(i).map(String::as_str) {
        Some("{") => {
            i += 1;
            while i < t.len() && t[i] != "}" {
                i = use_tree(t, i, prefix.clone(), out);
                if t.get(i).map(String::as_str) == Some(",") {
                    i += 1;
                }
            }
            i + 1
        }
        Some("*") => {
            out.push(prefix);
            i + 1
        }
        Some("self") => {
            out.push(prefix);
            i + 1
        }
        Some(word) if word.starts_with(|c: char| c.is_alphabetic() || c == '_') => {
            let mut path = prefix;
            path.push(word.to_string());
            if t.get(i + 1).map(String::as_str) == Some("::") {
                use_tree(t, i + 2, path, out)
            } else {
                out.push(path);
                i + 1
            }
        }
        _ => {
            out.push(prefix);
            i
        }
    }
}

/// The file a path lands in: its longest prefix that is a module.
fn resolve(path: &Module, known: &BTreeSet<Module>) -> Module {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|m| known.contains(m))
        .unwrap_or_default()
}

fn floor_of(module: &Module) -> Option<usize> {
    match module.first().map(String::as_str) {
        None => None,
        Some("main") => Some(FLOORS.len()),
        Some(top) => FLOORS.iter().position(|f| f.contains(&top)),
    }
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

#[test]
fn every_module_imports_only_from_floors_below_and_no_file_imports_in_a_cycle() {
    let mut sources = Vec::new();
    read_sources(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        vec![],
        &mut sources,
    );
    // Files their parent declares under #[cfg(test)] are tests.
    let test_files: BTreeSet<Module> = sources
        .iter()
        .flat_map(|s| {
            s.test_children.iter().map(|child| {
                let mut m = s.module.clone();
                m.push(child.clone());
                m
            })
        })
        .collect();
    for s in &mut sources {
        s.test = test_files.contains(&s.module);
    }
    let known: BTreeSet<Module> = sources.iter().map(|s| s.module.clone()).collect();

    let mut problems = Vec::new();
    for top in known.iter().filter(|m| m.len() == 1 && m[0] != "main") {
        if floor_of(top).is_none() {
            problems.push(format!("module `{}` is on no floor of FLOORS", name(top)));
        }
    }
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for s in sources.iter().filter(|s| !s.test) {
        for path in paths_named(s, &known) {
            let to = resolve(&path, &known);
            if to == s.module || to.is_empty() {
                continue;
            }
            if s.module.starts_with(&to) {
                problems.push(format!(
                    "{} imports {}, its own folder's top",
                    name(&s.module),
                    name(&to)
                ));
            }
            if !s.module.is_empty() && s.module[0] != to[0] {
                if let (Some(a), Some(b)) = (floor_of(&s.module), floor_of(&to)) {
                    if a <= b {
                        problems.push(format!(
                            "{} (floor {a}) imports {} (floor {b})",
                            name(&s.module),
                            name(&to),
                        ));
                    }
                }
            }
            edges.entry(s.module.clone()).or_default().insert(to);
        }
    }
    // Depth-first search for a cycle among files.
    fn visit(
        m: &Module,
        edges: &BTreeMap<Module, BTreeSet<Module>>,
        state: &mut BTreeMap<Module, bool>,
        stack: &mut Vec<Module>,
        problems: &mut Vec<String>,
    ) {
        match state.get(m) {
            Some(true) => return,
            Some(false) => {
                let at = stack.iter().position(|s| s == m).unwrap();
                let cycle: Vec<String> = stack[at..].iter().chain([m]).map(name).collect();
                problems.push(format!("import cycle: {}", cycle.join(" -> ")));
                return;
            }
            None => {}
        }
        state.insert(m.clone(), false);
        stack.push(m.clone());
        for next in edges.get(m).into_iter().flatten() {
            visit(next, edges, state, stack, problems);
        }
        stack.pop();
        state.insert(m.clone(), true);
    }
    let mut state = BTreeMap::new();
    for m in &known {
        visit(m, &edges, &mut state, &mut Vec::new(), &mut problems);
    }
    // The checker must see the imports it checks.
    let seen = |from: &[&str], to: &[&str]| {
        let module = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Module>();
        edges
            .get(&module(from))
            .is_some_and(|e| e.contains(&module(to)))
    };
    assert!(seen(&["api", "events"], &["queue"]) && seen(&["server"], &["core"]));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn paths_are_read_from_use_trees_and_code() {
    let known: BTreeSet<Module> = [
        vec![],
        vec!["a".into()],
        vec!["a".into(), "b".into()],
        vec!["c".into()],
    ]
    .into_iter()
    .collect();
    let src = Source {
        module: vec!["a".into()],
        test: false,
        test_children: vec![],
        tokens: tokenize(&code_of(
            "use crate::{c::{self, X}, a::b::*};\n// crate::z\nlet s = \"crate::q\"; b::f(); super::c::g();",
        )),
    };
    let got: BTreeSet<Module> = paths_named(&src, &known)
        .iter()
        .map(|p| resolve(p, &known))
        .collect();
    let want: BTreeSet<Module> = [vec!["c".into()], vec!["a".into(), "b".into()]]
        .into_iter()
        .collect();
    assert_eq!(got, want);
}
