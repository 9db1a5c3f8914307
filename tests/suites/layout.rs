//! Issue #10: imports among `src/` modules point one way. This reads every
//! library source file (test code aside), builds the graph of references
//! between top-level modules (`crate::…`, and `super::…` that climbs to the
//! crate root; everything under `src/transport/` is `transport`), and fails
//! naming every cycle with the lines that close it. `src/main.rs` (the
//! binary) is not read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[test]
fn src_modules_import_one_way() {
    let graph = Graph::of_src(Path::new("src"));
    assert!(
        graph.edges.len() >= 10,
        "only {} references found: the reader is broken",
        graph.edges.len()
    );
    let cycles = graph.cycles();
    assert!(
        cycles.is_empty(),
        "import cycles among src/ modules:\n{}",
        cycles.join("\n")
    );
}

/// Transports reach the stream through `feed` only: never `hub`, `source`,
/// `window` or `changelog` directly (the chain source → hub → feed →
/// transport).
#[test]
fn transports_reach_the_stream_through_feed() {
    let graph = Graph::of_src(Path::new("src"));
    let past: Vec<String> = graph
        .edges
        .iter()
        .filter(|((from, to), _)| {
            from == "transport" && ["hub", "source", "window", "changelog"].contains(&to.as_str())
        })
        .map(|((_, to), lines)| format!("transport → {to}: {lines:?}"))
        .collect();
    assert!(past.is_empty(), "{}", past.join("\n"));
}

/// The transports (`ws`, `sse`, `poll`, `socketio`) are siblings: none
/// imports another; what two of them share lives beside them in
/// `transport/` (`websocket`, `wire`, `start`, `close`, …).
#[test]
fn transports_do_not_import_each_other() {
    let src = Path::new("src");
    let transports = ["ws", "sse", "poll", "socketio"];
    let mut files = Vec::new();
    rust_files(&src.join("transport"), &mut files);
    let mut seen = 0;
    let mut past = Vec::new();
    for f in &files {
        let path = module_path(src, f).expect("a module under src/transport");
        let Some(own) = path.get(1).filter(|t| transports.contains(&t.as_str())) else {
            continue;
        };
        seen += 1;
        let text = std::fs::read_to_string(f).expect("read a source file");
        let toks = tokens(&without_test_items(&code_only(&text)));
        for i in 0..toks.len() {
            let at_path_start = i == 0 || toks[i - 1].0 != "::";
            let names = if at_path_start
                && is(&toks, i, "crate")
                && is(&toks, i + 1, "::")
                && is(&toks, i + 2, "transport")
                && is(&toks, i + 3, "::")
            {
                names_after(&toks, i + 4)
            } else if at_path_start && is(&toks, i, "super") {
                let mut ups = 0;
                let mut j = i;
                while is(&toks, j, "super") && is(&toks, j + 1, "::") {
                    ups += 1;
                    j += 2;
                }
                // from src/transport/<t>.rs one `super` is `transport`,
                // from src/transport/<t>/<m>.rs two
                if ups == path.len() - 1 {
                    names_after(&toks, j)
                } else {
                    Vec::new()
                }
            } else {
                Vec::new()
            };
            for name in names {
                if name != *own && transports.contains(&name.as_str()) {
                    past.push(format!("{}:{}: {own} → {name}", f.display(), toks[i].1));
                }
            }
        }
    }
    assert!(
        seen >= 10,
        "only {seen} transport files found: the reader is broken"
    );
    assert!(past.is_empty(), "{}", past.join("\n"));
}

/// The modules beside the chain (`auth`, `limits`, `metrics`, `config`)
/// serve it and never reach into it: nothing of `source`, `hub`, `feed`,
/// `transport`, `presence` or the market API.
#[test]
fn modules_beside_the_chain_do_not_reach_into_it() {
    let graph = Graph::of_src(Path::new("src"));
    let beside = ["auth", "limits", "metrics", "config"];
    let chain = ["source", "hub", "feed", "transport", "presence", "shop"];
    let past: Vec<String> = graph
        .edges
        .iter()
        .filter(|((from, to), _)| beside.contains(&from.as_str()) && chain.contains(&to.as_str()))
        .map(|((from, to), lines)| format!("{from} → {to}: {lines:?}"))
        .collect();
    assert!(past.is_empty(), "{}", past.join("\n"));
}

/// The reader itself: a reference in a test module does not count, comments
/// and strings are not code, grouped imports and `super::` paths do count,
/// and a cycle is reported with its evidence.
#[test]
fn the_reader_sees_what_the_compiler_sees() {
    let modules: BTreeSet<String> = ["a", "b", "c", "transport"].map(String::from).into();
    let root = BTreeMap::from([("Thing".to_string(), "c".to_string())]);
    let mut g = Graph::default();
    g.read(
        &["a"],
        "use crate::{b::X, c};\n// crate::transport\nconst S: &str = \"crate::transport\";\n\
         #[cfg(test)]\nmod tests { use crate::transport; }\n",
        "src/a.rs",
        &modules,
        &root,
    );
    g.read(
        &["transport", "ws"],
        "use super::super::a::Y; use super::close::Z; fn f() -> crate::Thing { todo!() }",
        "src/transport/ws/mod.rs",
        &modules,
        &root,
    );
    let pairs: BTreeSet<(String, String)> = g.edges.keys().cloned().collect();
    let want: BTreeSet<(String, String)> = [
        ("a", "b"),
        ("a", "c"),
        ("transport", "a"),
        ("transport", "c"),
    ]
    .map(|(x, y)| (x.to_string(), y.to_string()))
    .into();
    assert_eq!(pairs, want);
    assert!(g.cycles().is_empty());
    g.read(&["c"], "use crate::transport;", "src/c.rs", &modules, &root);
    let cycles = g.cycles();
    assert_eq!(cycles.len(), 1, "{cycles:?}");
    assert!(
        cycles[0].contains("c → transport") && cycles[0].contains("src/c.rs:1"),
        "{}",
        cycles[0]
    );
}

/// References between top-level modules: (from, to) → where, first seen.
#[derive(Default)]
struct Graph {
    edges: BTreeMap<(String, String), String>,
}

impl Graph {
    fn of_src(src: &Path) -> Graph {
        let mut files = Vec::new();
        rust_files(src, &mut files);
        let modules: BTreeSet<String> = files
            .iter()
            .filter_map(|f| module_path(src, f))
            .map(|p| p[0].clone())
            .collect();
        let lib = std::fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs");
        let root = root_reexports(&lib);
        let mut g = Graph::default();
        for f in &files {
            let Some(path) = module_path(src, f) else {
                continue;
            };
            let text = std::fs::read_to_string(f).expect("read a source file");
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            g.read(&path, &text, &f.display().to_string(), &modules, &root);
        }
        g
    }

    /// Adds the references of one file, whose module path is `path`.
    fn read(
        &mut self,
        path: &[&str],
        text: &str,
        file: &str,
        modules: &BTreeSet<String>,
        root: &BTreeMap<String, String>,
    ) {
        let code = without_test_items(&code_only(text));
        let toks = tokens(&code);
        let from = path[0].to_string();
        // inline `mod x { … }` blocks: (name, brace depth inside them)
        let mut inline: Vec<(String, usize)> = Vec::new();
        let mut depth = 0;
        let mut i = 0;
        while i < toks.len() {
            let (t, line) = (&toks[i].0, toks[i].1);
            match t.as_str() {
                "{" => depth += 1,
                "}" => {
                    if inline.last().is_some_and(|(_, d)| *d == depth) {
                        inline.pop();
                    }
                    depth -= 1;
                }
                "mod" if toks.get(i + 2).is_some_and(|t| t.0 == "{") => {
                    inline.push((toks[i + 1].0.clone(), depth + 1));
                }
                _ => {}
            }
            let at_path_start = i == 0 || toks[i - 1].0 != "::";
            let targets = if t == "crate" && at_path_start && is(&toks, i + 1, "::") {
                names_after(&toks, i + 2)
            } else if t == "super" && at_path_start && is(&toks, i + 1, "::") {
                let mut ups = 0;
                let mut j = i;
                while is(&toks, j, "super") && is(&toks, j + 1, "::") {
                    ups += 1;
                    j += 2;
                }
                let here = path.len() + inline.len();
                if ups >= here {
                    names_after(&toks, j)
                } else {
                    Vec::new() // within this top-level module
                }
            } else {
                Vec::new()
            };
            for name in targets {
                let to = if modules.contains(&name) {
                    name
                } else if let Some(m) = root.get(&name) {
                    m.clone()
                } else if name == "self" || name == "*" {
                    continue;
                } else {
                    panic!("{file}:{line}: crate::{name} is neither a module nor a re-export of lib.rs");
                };
                if to != from {
                    self.edges
                        .entry((from.clone(), to))
                        .or_insert_with(|| format!("{file}:{line}"));
                }
            }
            i += 1;
        }
    }

    /// One line per strongly connected group of modules: a cycle through it,
    /// with where each step is referenced.
    fn cycles(&self) -> Vec<String> {
        let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (a, b) in self.edges.keys() {
            next.entry(a).or_default().push(b);
            next.entry(b).or_default();
        }
        let mut out = Vec::new();
        for group in strongly_connected(&next) {
            if group.len() < 2 {
                continue;
            }
            let start = group[0];
            let cycle = path_back(&next, &group, start);
            let steps: Vec<String> = cycle
                .windows(2)
                .map(|w| {
                    let at = &self.edges[&(w[0].to_string(), w[1].to_string())];
                    format!("{} → {} ({at})", w[0], w[1])
                })
                .collect();
            out.push(format!("{{{}}}: {}", group.join(", "), steps.join(", ")));
        }
        out
    }
}

/// Tarjan's algorithm; each group sorted.
fn strongly_connected<'a>(next: &BTreeMap<&'a str, Vec<&'a str>>) -> Vec<Vec<&'a str>> {
    struct State<'a> {
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        groups: Vec<Vec<&'a str>>,
    }
    fn visit<'a>(v: &'a str, next: &BTreeMap<&'a str, Vec<&'a str>>, s: &mut State<'a>) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for &w in &next[v] {
            if !s.index.contains_key(w) {
                visit(w, next, s);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut group = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                group.push(w);
                if w == v {
                    break;
                }
            }
            group.sort_unstable();
            s.groups.push(group);
        }
    }
    let mut s = State {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        groups: Vec::new(),
    };
    for &v in next.keys() {
        if !s.index.contains_key(v) {
            visit(v, next, &mut s);
        }
    }
    s.groups
}

/// A shortest cycle from `start` back to itself inside `group` (breadth first).
fn path_back<'a>(
    next: &BTreeMap<&'a str, Vec<&'a str>>,
    group: &[&'a str],
    start: &'a str,
) -> Vec<&'a str> {
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for &w in &next[v] {
            if !group.contains(&w) {
                continue;
            }
            if w == start {
                let mut cycle = vec![start, v];
                let mut at = v;
                while at != start {
                    at = came_from[at];
                    cycle.push(at);
                }
                cycle.reverse();
                return cycle;
            }
            if !came_from.contains_key(w) {
                came_from.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    unreachable!("{start} is in a strongly connected group")
}

fn is(toks: &[(String, usize)], i: usize, s: &str) -> bool {
    toks.get(i).is_some_and(|t| t.0 == s)
}

/// The first segments named by the path that continues at `i`: `x` or
/// the top-level names of a group `{x::…, y, …}`.
fn names_after(toks: &[(String, usize)], i: usize) -> Vec<String> {
    let Some((t, _)) = toks.get(i) else {
        return Vec::new();
    };
    if t != "{" {
        return vec![t.clone()];
    }
    let mut names = Vec::new();
    let mut level = 0;
    let mut expect_name = true;
    for (t, _) in &toks[i..] {
        match t.as_str() {
            "{" => level += 1,
            "}" => {
                level -= 1;
                if level == 0 {
                    break;
                }
            }
            "," if level == 1 => expect_name = true,
            _ if level == 1 && expect_name => {
                names.push(t.clone());
                expect_name = false;
            }
            _ => {}
        }
    }
    names
}

/// Identifiers (with `$`), `::`, and single punctuation characters, with their line.
fn tokens(code: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    let mut line = 1;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push((chars[start..i].iter().collect(), line));
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push(("::".into(), line));
            i += 2;
        } else {
            if c != '$' {
                out.push((c.to_string(), line));
            }
            i += 1;
        }
    }
    out
}

/// `text` with comments and the contents of string and char literals blanked
/// (line breaks kept, so lines still count).
fn code_only(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |ch: char| if ch == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < c.len() {
        if c[i] == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            let mut nest = 0;
            loop {
                if i >= c.len() {
                    break;
                }
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    nest += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    nest -= 1;
                    out.push_str("  ");
                    i += 2;
                    if nest == 0 {
                        break;
                    }
                } else {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
        } else if c[i] == 'r'
            && matches!(c.get(i + 1), Some('"') | Some('#'))
            && !ident_before(&c, i)
        {
            // raw string r"…", r#"…"#
            let mut j = i + 1;
            let mut hashes = 0;
            while c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                out.push(c[i]);
                i += 1;
                continue;
            }
            out.push('"');
            j += 1;
            loop {
                if j >= c.len() {
                    break;
                }
                if c[j] == '"' && (0..hashes).all(|k| c.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                out.push(blank(c[j]));
                j += 1;
            }
            out.push('"');
            i = j;
        } else if c[i] == '"' {
            out.push('"');
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < c.len() {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
            out.push('"');
            i += 1;
        } else if c[i] == '\'' {
            // a char literal ('x', '\n', '\u{..}'), else a lifetime
            if c.get(i + 1) == Some(&'\\') {
                let mut j = i + 2;
                while j < c.len() && c[j] != '\'' {
                    j += 1;
                }
                out.push_str("' '");
                i = j + 1;
            } else if c.get(i + 2) == Some(&'\'') {
                out.push_str("' '");
                i += 3;
            } else {
                out.push('\'');
                i += 1;
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

fn ident_before(c: &[char], i: usize) -> bool {
    i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_')
}

/// `code` with every item marked `#[cfg(test)]` blanked: up to its first `;`
/// or through its braces, whichever comes first.
fn without_test_items(code: &str) -> String {
    const MARK: &str = "#[cfg(test)]";
    let mut out: Vec<char> = code.chars().collect();
    let text: String = out.iter().collect();
    let starts: Vec<usize> = text
        .match_indices(MARK)
        .map(|(b, _)| text[..b].chars().count())
        .collect();
    for start in starts {
        let mut depth = 0;
        let mut end = out.len();
        for (j, &ch) in out.iter().enumerate().skip(start + MARK.len()) {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = j + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = j + 1;
                    break;
                }
                _ => {}
            }
        }
        for ch in &mut out[start..end] {
            if *ch != '\n' {
                *ch = ' ';
            }
        }
    }
    out.into_iter().collect()
}

/// The root's `pub use module::{A, B};` / `pub use module::A;`: name → module.
fn root_reexports(lib: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let code = code_only(lib);
    for stmt in code.split(';') {
        let Some(rest) = stmt.trim().strip_prefix("pub use ") else {
            continue;
        };
        let rest = rest.trim().trim_start_matches("crate::");
        let Some((module, names)) = rest.split_once("::") else {
            continue;
        };
        for name in names
            .trim_matches(|c| c == '{' || c == '}' || c == ' ')
            .split(',')
        {
            let name = name.trim();
            let name = name.rsplit(" as ").next().unwrap_or(name).trim();
            let name = name.rsplit("::").next().unwrap_or(name);
            if !name.is_empty() {
                out.insert(name.to_string(), module.trim().to_string());
            }
        }
    }
    out
}

/// Module path of a library file (`src/transport/ws/io.rs` → transport, ws,
/// io); `None` for the crate roots and the benchmark.
fn module_path(src: &Path, file: &Path) -> Option<Vec<String>> {
    let rel = file.strip_prefix(src).ok()?;
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    match parts.first().map(String::as_str) {
        None | Some("lib") | Some("main") | Some("bench") => None,
        _ => Some(parts),
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read src/")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}
