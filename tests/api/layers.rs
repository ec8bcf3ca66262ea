//! The layers of `src/` point one way (issue #12, point 1; drawn in
//! docs/design.md "Layers"). Every `crate::x` path, every name inside
//! `use crate::{..}`, every `super::` that climbs out of its top-level module,
//! and every `actix_web` use in a file under `src/x…` is an edge `x -> y`
//! (comments, string literals and `#[cfg(test)]` modules are skipped: test
//! fixtures may reach across). Each edge must be in `ALLOWED` (or, for now,
//! in `KNOWN_EXCEPTIONS`), and the table itself has no cycle, so neither has
//! the crate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The pseudo-module for `actix_web`: who may speak HTTP.
const ACTIX: &str = "actix_web";

/// Each top-level module of `src/` and what it may import (besides itself).
/// Bottom to top: a module may import only modules listed before it, so the
/// table (and with it the crate) has no cycle.
const ALLOWED: &[(&str, &[&str])] = &[
    // Pure values and the one clock.
    ("clock", &[]),
    ("domain", &[]),
    ("tokens", &["domain"]),
    ("policy", &["domain"]),
    ("limits", &["clock", "domain"]),
    ("metrics", &[]),
    // Persistence, secrets, the audit record.
    ("store", &["domain", "policy", "tokens"]),
    ("settings", &["domain", "limits", "store"]),
    ("telemetry", &["settings"]),
    ("secrets", &["domain"]),
    (
        "audit",
        &["clock", "domain", "tokens", "store", "metrics", "settings"],
    ),
    // Authentication (API keys and end users' login JWTs) and the running
    // broker's memory.
    (
        "auth",
        &["clock", "domain", "store", "audit", "metrics", "secrets"],
    ),
    // Services: the issuance pipeline and the admin operations. No HTTP.
    (
        "admin",
        &[
            "clock", "domain", "tokens", "policy", "store", "secrets", "audit", "auth",
        ],
    ),
    (
        "credentials",
        &[
            "clock", "domain", "tokens", "policy", "store", "secrets", "audit", "admin",
        ],
    ),
    (
        "replay",
        &[
            "clock", "domain", "tokens", "policy", "store", "audit", "admin",
        ],
    ),
    (
        "state",
        &[
            "clock",
            "domain",
            "tokens",
            "policy",
            "limits",
            "store",
            "secrets",
            "audit",
            "metrics",
            "settings",
            "auth",
            "credentials",
        ],
    ),
    (
        "broker",
        &[
            "clock", "domain", "tokens", "policy", "audit", "auth", "metrics", "state", "store",
        ],
    ),
    // The HTTP layer and the console (HTML over the same services).
    (
        "routes",
        &[
            ACTIX,
            "clock",
            "domain",
            "tokens",
            "policy",
            "limits",
            "store",
            "secrets",
            "audit",
            "metrics",
            "settings",
            "auth",
            "state",
            "admin",
            "credentials",
            "replay",
            "broker",
        ],
    ),
    (
        "console",
        &[
            ACTIX,
            "clock",
            "domain",
            "tokens",
            "policy",
            "store",
            "audit",
            "auth",
            "state",
            "admin",
            "credentials",
            "replay",
            "routes",
        ],
    ),
    (
        "startup",
        &[
            ACTIX,
            "clock",
            "domain",
            "store",
            "secrets",
            "audit",
            "settings",
            "state",
            "routes",
            "console",
            "telemetry",
        ],
    ),
    // The command line: the services directly, or the HTTP API as a client.
    (
        "cli",
        &[
            "clock",
            "domain",
            "tokens",
            "policy",
            "store",
            "secrets",
            "audit",
            "settings",
            "auth",
            "state",
            "admin",
            "credentials",
            "replay",
            "broker",
            "startup",
            "telemetry",
        ],
    ),
];

/// Edges that break the table today, each with the reason; empty now. The
/// test fails once an edge listed here is gone, so the list cannot outlive
/// the reason.
const KNOWN_EXCEPTIONS: &[(&str, &str)] = &[];

/// Crate-root re-exports (`src/lib.rs`) of modules that moved, and the
/// top-level module each names.
const ALIASES: &[(&str, &str)] = &[
    ("cli_audit", "cli"),
    ("cli_credential", "cli"),
    ("cli_policy", "cli"),
    ("cli_token", "cli"),
    ("dev", "cli"),
    ("remote", "cli"),
];

/// One source file's edges: (target module, what named it, line).
fn edges_of(path_in_src: &str, text: &str) -> Vec<(String, String, usize)> {
    let code = strip_tests(&strip(text));
    let toks = tokens(&code);
    let mut module = module_path(path_in_src);
    let mut inline: Vec<(usize, usize)> = Vec::new(); // (depth at `{`, module-path length before)
    let mut depth = 0usize;
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let (t, line) = (&toks[i].0, toks[i].1);
        match t.as_str() {
            "{" => depth += 1,
            "}" => {
                depth = depth.saturating_sub(1);
                if let Some(&(d, len)) = inline.last()
                    && d == depth
                {
                    module.truncate(len);
                    inline.pop();
                }
            }
            "mod" if i + 2 < toks.len() && is_ident(&toks[i + 1].0) && toks[i + 2].0 == "{" => {
                inline.push((depth, module.len()));
                module.push(toks[i + 1].0.clone());
            }
            "actix_web" => out.push((ACTIX.to_owned(), "actix_web".to_owned(), line)),
            "crate" if at(&toks, i + 1) == "::" => {
                for name in names_after(&toks, i + 2) {
                    out.push((name.clone(), format!("crate::{name}"), line));
                }
            }
            "super" if i == 0 || at(&toks, i - 1) != "::" => {
                let mut ups = 0;
                let mut j = i;
                while at(&toks, j) == "super" && at(&toks, j + 1) == "::" {
                    ups += 1;
                    j += 2;
                }
                if ups == 0 {
                    i += 1; // `pub(super)`
                    continue;
                }
                if ups >= module.len() {
                    for name in names_after(&toks, j) {
                        out.push((
                            name.clone(),
                            format!("{}{name}", "super::".repeat(ups)),
                            line,
                        ));
                    }
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// The module path of a file: `policy/file.rs` is `[policy, file]`,
/// `policy/mod.rs` is `[policy]`.
fn module_path(path_in_src: &str) -> Vec<String> {
    let mut parts: Vec<String> = path_in_src
        .trim_end_matches(".rs")
        .split('/')
        .map(str::to_owned)
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

fn at(toks: &[(String, usize)], i: usize) -> &str {
    toks.get(i).map_or("", |t| t.0.as_str())
}

fn is_ident(t: &str) -> bool {
    t.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// The top-level names a path continues with at `i`: one ident, or each
/// entry of a `{..}` group.
fn names_after(toks: &[(String, usize)], i: usize) -> Vec<String> {
    match at(toks, i) {
        "{" => {
            let mut names = Vec::new();
            let mut depth = 0;
            let mut expect = true;
            for (t, _) in &toks[i..] {
                match t.as_str() {
                    "{" => {
                        depth += 1;
                        continue;
                    }
                    "}" => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                        continue;
                    }
                    "," if depth == 1 => {
                        expect = true;
                        continue;
                    }
                    _ => {}
                }
                if depth == 1 && expect {
                    if is_ident(t) && t != "self" {
                        names.push(t.clone());
                    }
                    expect = false;
                }
            }
            names
        }
        t if is_ident(t) => vec![t.to_owned()],
        _ => Vec::new(),
    }
}

/// Identifiers, `::`, and single punctuation characters, with line numbers.
fn tokens(code: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut line = 1;
    let mut chars = code.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\n' {
            line += 1;
        } else if c.is_alphabetic() || c == '_' {
            let mut s = String::from(c);
            while let Some(&d) = chars.peek() {
                if d.is_alphanumeric() || d == '_' {
                    s.push(d);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push((s, line));
        } else if c == ':' && chars.peek() == Some(&':') {
            chars.next();
            out.push(("::".to_owned(), line));
        } else if !c.is_whitespace() {
            out.push((c.to_string(), line));
        }
    }
    out
}

/// The source with comments, string and character literals blanked out
/// (newlines kept, so line numbers hold).
fn strip(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |out: &mut String, c: char| out.push(if c == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied().unwrap_or('\0');
        if c == '/' && next == '/' {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == '*' {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
        } else if (c == 'r' || (c == 'b' && next == 'r'))
            && !b
                .get(i.wrapping_sub(1))
                .is_some_and(|p| p.is_alphanumeric() || *p == '_')
            && {
                let s = if c == 'b' { i + 2 } else { i + 1 };
                let mut k = s;
                while b.get(k) == Some(&'#') {
                    k += 1;
                }
                b.get(k) == Some(&'"')
            }
        {
            // A raw string: r#"…"# with any number of #.
            i += if c == 'b' { 2 } else { 1 };
            let mut hashes = 0;
            while b[i] == '#' {
                hashes += 1;
                i += 1;
            }
            i += 1;
            while i < b.len() {
                if b[i] == '"' && (0..hashes).all(|h| b.get(i + 1 + h) == Some(&'#')) {
                    i += 1 + hashes;
                    break;
                }
                blank(&mut out, b[i]);
                i += 1;
            }
            out.push_str("\"\"");
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                if let Some(&x) = b.get(i) {
                    blank(&mut out, x);
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}'), or a lifetime ('a).
            let close = if next == '\\' {
                (i + 3..b.len().min(i + 13)).find(|&k| b[k] == '\'')
            } else if b.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match close {
                Some(k) => {
                    out.push_str("' '");
                    i = k + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Blanks out every `#[cfg(test)]` module (`mod x { … }`).
fn strip_tests(code: &str) -> String {
    let mut out = code.to_owned();
    let mut from = 0;
    while let Some(k) = out[from..].find("#[cfg(test)]") {
        let start = from + k;
        let after = start + "#[cfg(test)]".len();
        // Skip further attributes, then expect `mod name {` (or `pub mod`).
        let rest = &out[after..];
        let item = rest.trim_start();
        let mut item_start = after + (rest.len() - item.len());
        let mut item_text = item;
        while item_text.starts_with("#[") {
            let Some(end) = item_text.find(']') else {
                break;
            };
            let t = item_text[end + 1..].trim_start();
            item_start += item_text.len() - t.len();
            item_text = t;
        }
        let words: Vec<&str> = item_text.split_whitespace().take(3).collect();
        let is_mod = matches!(
            words.as_slice(),
            ["mod", ..] | ["pub", "mod", ..] | ["pub(crate)", "mod", ..]
        );
        let Some(open) = out[item_start..].find(['{', ';']).map(|o| item_start + o) else {
            break;
        };
        if !is_mod || out.as_bytes()[open] == b';' {
            from = after;
            continue;
        }
        let mut depth = 0;
        let mut end = open;
        for (o, ch) in out[open..].char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + o + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        let blanked: String = out[start..end]
            .chars()
            .map(|c| if c == '\n' { '\n' } else { ' ' })
            .collect();
        out.replace_range(start..end, &blanked);
        from = start + blanked.len();
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every edge between top-level modules of `src/`: (from, to) -> where.
fn crate_edges() -> BTreeMap<(String, String), Vec<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for f in files {
        let rel = f
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if rel == "lib.rs" || rel == "main.rs" {
            continue; // the roots: they declare modules and re-export
        }
        let from = module_path(&rel)[0].clone();
        let text = std::fs::read_to_string(&f).unwrap();
        for (to, via, line) in edges_of(&rel, &text) {
            let to = ALIASES
                .iter()
                .find(|(a, _)| *a == to)
                .map_or(to.clone(), |(_, m)| m.to_string());
            if to != from {
                edges
                    .entry((from.clone(), to))
                    .or_default()
                    .push(format!("src/{rel}:{line} {via}"));
            }
        }
    }
    edges
}

fn allowed() -> BTreeMap<&'static str, BTreeSet<&'static str>> {
    ALLOWED
        .iter()
        .map(|(m, deps)| (*m, deps.iter().copied().collect()))
        .collect()
}

/// The violations of `ALLOWED` among `edges` (exceptions aside).
fn violations(edges: &BTreeMap<(String, String), Vec<String>>) -> Vec<String> {
    let allowed = allowed();
    let mut bad = Vec::new();
    for ((from, to), at) in edges {
        let Some(deps) = allowed.get(from.as_str()) else {
            bad.push(format!(
                "module `{from}` is not in ALLOWED (place it in a layer)"
            ));
            continue;
        };
        if deps.contains(to.as_str()) || KNOWN_EXCEPTIONS.contains(&(from.as_str(), to.as_str())) {
            continue;
        }
        bad.push(format!("{from} -> {to} is not allowed: {}", at.join(", ")));
    }
    bad
}

/// A cycle in a graph given as adjacency lists, if any.
fn find_cycle(graph: &BTreeMap<&str, BTreeSet<&str>>) -> Option<Vec<String>> {
    fn visit<'a>(
        n: &'a str,
        graph: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let from = stack.iter().position(|s| *s == n).unwrap_or(0);
                let mut c: Vec<String> = stack[from..].iter().map(|s| s.to_string()).collect();
                c.push(n.to_owned());
                return Some(c);
            }
            _ => {}
        }
        state.insert(n, 1);
        stack.push(n);
        for m in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, graph, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(n, 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

#[test]
fn the_layer_table_has_no_cycle_and_lists_each_module_once() {
    for (i, (m, deps)) in ALLOWED.iter().enumerate() {
        for d in *deps {
            assert!(
                *d == ACTIX || ALLOWED[..i].iter().any(|(n, _)| n == d),
                "{m} may import {d}, which is not listed before it"
            );
        }
    }
    let allowed = allowed();
    assert_eq!(allowed.len(), ALLOWED.len(), "a module is listed twice");
    for (m, deps) in &allowed {
        for d in deps {
            assert!(
                *d == ACTIX || allowed.contains_key(d),
                "{m} may import {d}, which is not in ALLOWED"
            );
        }
    }
    assert_eq!(find_cycle(&allowed), None);
}

#[test]
fn every_top_level_module_is_in_the_layer_table() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed = allowed();
    for e in std::fs::read_dir(&src).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        let m = name.trim_end_matches(".rs");
        if m == "lib" || m == "main" {
            continue;
        }
        assert!(
            allowed.contains_key(m),
            "src/{name}: add `{m}` to ALLOWED in tests/api/layers.rs"
        );
    }
}

#[test]
fn dependencies_point_one_way() {
    let edges = crate_edges();
    assert!(edges.len() > 50, "the scanner found too little: {edges:?}");
    let bad = violations(&edges);
    assert!(bad.is_empty(), "forbidden imports:\n{}", bad.join("\n"));
    // Every exception is still needed (remove it once its edge is gone).
    for (from, to) in KNOWN_EXCEPTIONS {
        assert!(
            edges.contains_key(&(from.to_string(), to.to_string())),
            "{from} -> {to} no longer happens: drop it from KNOWN_EXCEPTIONS"
        );
    }
}

#[test]
fn the_checker_sees_every_way_of_naming_a_module() {
    let src = r##"
//! Talks about crate::routes in a comment only.
use crate::domain::Role;
use crate::{audit::{self, kind}, store::Store, self};
pub(crate) use crate :: metrics;
fn f() -> crate::tokens::Signer { let s = "crate::cli"; let c = '"'; let l: &'static str = r#"crate::dev"#; todo!() }
pub(super) fn g<'a>(x: &'a str) -> actix_web::HttpResponse { super::super::settings::load() }
/* a block comment naming crate::console /* nested */ crate::replay */
mod inner {
    use super::super::super::limits::Rate;
}
#[cfg(test)]
mod tests {
    use crate::admin;
}
"##;
    let found: BTreeSet<String> = edges_of("policy/file.rs", src)
        .into_iter()
        .map(|(m, _, _)| m)
        .collect();
    let want: BTreeSet<String> = [
        "domain",
        "audit",
        "store",
        "metrics",
        "tokens",
        "actix_web",
        "settings",
        "limits",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(found, want);
    // `super::` that stays inside the top-level module is no edge.
    assert!(edges_of("policy/file.rs", "use super::glob::Glob;").is_empty());
    assert!(edges_of("policy/mod.rs", "use super::x;").len() == 1);
}

#[test]
fn the_checker_fails_a_forbidden_import() {
    let mut edges = BTreeMap::new();
    for (from, to) in [
        ("policy", "limits"),
        ("broker", "routes"),
        ("domain", "tokens"),
        ("cli", "routes"),
    ] {
        let text = format!("use crate::{to}::X;");
        for (t, via, line) in edges_of(&format!("{from}/x.rs"), &text) {
            edges
                .entry((from.to_owned(), t))
                .or_insert_with(Vec::new)
                .push(format!("{via}:{line}"));
        }
    }
    edges.insert(("broker".into(), ACTIX.into()), vec!["actix_web".into()]);
    edges.insert(("newmodule".into(), "domain".into()), vec!["x".into()]);
    let bad = violations(&edges);
    let text = bad.join("\n");
    for want in [
        "policy -> limits",
        "broker -> routes",
        "domain -> tokens",
        "broker -> actix_web",
        "`newmodule`",
        "cli -> routes",
    ] {
        assert!(text.contains(want), "{want} not caught in:\n{text}");
    }
    // And a cycle is found.
    let mut g: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    g.entry("a").or_default().insert("b");
    g.entry("b").or_default().insert("a");
    assert!(find_cycle(&g).is_some());
}

/// Prints the graph (`cargo test --test api layers::print -- --ignored --nocapture`).
#[test]
#[ignore]
fn print_the_graph() {
    for ((from, to), at) in crate_edges() {
        println!("{from} -> {to}   ({})", at[0]);
    }
}
