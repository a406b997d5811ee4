//! The house's shape, checked: capabilities meet in the core and never import
//! each other, the API or the daemon; the core and the config import no layer
//! above them; the API knows no capability by name. A violating `use` fails
//! this test, so CI fails the build.
//!
//! Below the layers, files: no import circle between two files (a circle
//! means neither can be read, tested or split without the other), and no
//! file so long that it holds more than one concern.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const CAPABILITIES: &[&str] = &["share", "links", "scripts", "idle", "azure", "pool", "users"];

/// The crate's top-level modules a file under `layer` may not name.
fn forbidden_for(layer: &str) -> Vec<&'static str> {
    let above_core = ["api", "daemon", "cli", "share", "links", "scripts", "idle", "azure", "pool", "users"];
    match layer {
        "core" => above_core.to_vec(),
        "config" => [&above_core[..], &["core"]].concat(),
        "api" => ["daemon", "cli", "share", "links", "scripts", "idle", "azure", "pool", "users"].to_vec(),
        capability if CAPABILITIES.contains(&capability) => ["api", "daemon", "cli"]
            .into_iter()
            .chain(CAPABILITIES.iter().copied().filter(|other| *other != capability))
            .collect(),
        _ => Vec::new(),
    }
}

/// Every top-level module named after `crate::` in `source`, comments left out;
/// grouped imports (`crate::{api, core::x}`) count each name.
fn crate_modules_named(source: &str) -> BTreeSet<String> {
    let code: String = source
        .lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut names = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let before_ok = at == 0 || !rest[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_');
        rest = &rest[at + "crate::".len()..];
        if !before_ok {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level names of the group: split at commas that are not nested.
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        names.insert(first_ident(&group[start..i]));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        names.insert(first_ident(&group[start..i]));
                        start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            names.insert(first_ident(rest));
        }
    }
    names.remove("");
    names
}

fn first_ident(text: &str) -> String {
    text.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// (file, module it must not name) for every violation under `src`.
fn violations(src: &Path) -> Vec<(String, String)> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut found = Vec::new();
    for file in files {
        let relative = file.strip_prefix(src).unwrap();
        // This file's own examples name every layer on purpose.
        if relative == Path::new("core/layering.rs") {
            continue;
        }
        let layer =
            relative.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        let forbidden = forbidden_for(&layer);
        let source = std::fs::read_to_string(&file).unwrap();
        for name in crate_modules_named(&source) {
            if forbidden.contains(&name.as_str()) {
                found.push((relative.display().to_string(), name));
            }
        }
    }
    found.sort();
    found
}

#[test]
fn the_checker_sees_plain_grouped_and_nested_imports_and_skips_comments() {
    let names = crate_modules_named(
        "use crate::api::types::X;\nuse crate::{core::task, daemon};\n// crate::cli is only a comment\nlet x = my_crate::share::y;\nfn f() { crate::links::run() }\nuse crate::{core::{a, b}, idle::{c}};\n",
    );
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(names, ["api", "core", "daemon", "idle", "links"]);
}

#[test]
fn the_checker_would_fail_on_a_capability_importing_another() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("links")).unwrap();
    std::fs::write(dir.path().join("links/mod.rs"), "use crate::share::ShareHandle;\nuse crate::core::task;\n")
        .unwrap();
    std::fs::create_dir_all(dir.path().join("core")).unwrap();
    std::fs::write(dir.path().join("core/x.rs"), "use crate::api::server;\n").unwrap();
    assert_eq!(
        violations(dir.path()),
        [("core/x.rs".to_string(), "api".to_string()), ("links/mod.rs".to_string(), "share".to_string())]
    );
}

#[test]
fn no_layer_imports_one_above_it_and_capabilities_never_import_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = violations(&src);
    assert!(found.is_empty(), "layering violations (file, forbidden module): {found:#?}");
}

/// Longest a source file may be; past it, it holds more than one concern.
const MAX_LINES: usize = 650;

/// Files others are splitting right now (#26); each goes from here when split.
const LONG_FILES_BEING_SPLIT: &[&str] = &[];

/// Source text with comments and string literals blanked, so neither a
/// comment nor a message that names a path makes an edge; cut where the
/// file's test module starts (a test's `super::` is the file itself, and
/// tests may reach anywhere).
fn code_only(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let lines: Vec<&str> = source.lines().collect();
    for (n, line) in lines.iter().enumerate() {
        let next = lines.get(n + 1).map_or("", |l| l.trim());
        if line.trim() == "#[cfg(test)]" && next.starts_with("mod ") && next.ends_with('{') {
            break;
        }
        let mut in_string = false;
        let mut escaped = false;
        let mut previous = ' ';
        for c in line.chars() {
            if in_string {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    in_string = false;
                }
                out.push(' ');
                continue;
            }
            if c == '/' && previous == '/' {
                out.pop();
                break;
            }
            if c == '"' {
                in_string = true;
            }
            out.push(c);
            previous = c;
        }
        out.push('\n');
    }
    out
}

/// Every path that starts with `crate::` or `super::` in `code`, grouped
/// imports expanded (`super::{a::b, c}` gives `super::a::b` and `super::c`),
/// as lists of segments; `super` stays a segment for the caller to resolve.
fn paths_named(code: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let bytes: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !(bytes[i - 1].is_alphanumeric() || bytes[i - 1] == '_' || bytes[i - 1] == ':');
        let rest: String = bytes[i..bytes.len().min(i + 7)].iter().collect();
        if starts_word && (rest.starts_with("crate::") || rest.starts_with("super::")) {
            let mut at = i;
            found.extend(parse_tree(&bytes, &mut at, Vec::new()));
            i = at.max(i + 1);
        } else {
            i += 1;
        }
    }
    found
}

/// Parses `a::b::{c, d::e}` from `at`, each full path prefixed with `prefix`.
fn parse_tree(text: &[char], at: &mut usize, prefix: Vec<String>) -> Vec<Vec<String>> {
    let mut path = prefix;
    loop {
        while *at < text.len() && text[*at].is_whitespace() {
            *at += 1;
        }
        if *at < text.len() && text[*at] == '{' {
            *at += 1;
            let mut all = Vec::new();
            loop {
                all.extend(parse_tree(text, at, path.clone()));
                while *at < text.len() && text[*at].is_whitespace() {
                    *at += 1;
                }
                match text.get(*at) {
                    Some(',') => *at += 1,
                    Some('}') => {
                        *at += 1;
                        return all;
                    }
                    _ => return all,
                }
                while *at < text.len() && text[*at].is_whitespace() {
                    *at += 1;
                }
                if text.get(*at) == Some(&'}') {
                    *at += 1;
                    return all;
                }
            }
        }
        let start = *at;
        while *at < text.len() && (text[*at].is_alphanumeric() || text[*at] == '_' || text[*at] == '*') {
            *at += 1;
        }
        let ident: String = text[start..*at].iter().collect();
        if !ident.is_empty() && ident != "*" {
            path.push(ident);
        }
        if text.get(*at) == Some(&':') && text.get(*at + 1) == Some(&':') {
            *at += 2;
            continue;
        }
        return vec![path];
    }
}

/// The module path of a source file: `share/mod.rs` is `share`,
/// `share/probe.rs` is `share::probe`, `lib.rs` is the crate itself.
fn module_of(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().to_string()).collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs");
        if stem != "mod" && stem != "lib" {
            parts.push(stem.to_string());
        }
    }
    parts
}

/// The file-level import graph of `src`: file -> files it names, test code
/// and binaries (separate crates) left out.
fn import_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut modules: BTreeMap<Vec<String>, String> = BTreeMap::new();
    let mut sources = Vec::new();
    for file in files {
        let relative = file.strip_prefix(src).unwrap().to_path_buf();
        let name = relative.display().to_string();
        if relative.starts_with("bin") || relative.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        modules.insert(module_of(&relative), name.clone());
        sources.push((name, module_of(&relative), std::fs::read_to_string(&file).unwrap()));
    }
    let mut graph = BTreeMap::new();
    for (name, module, source) in sources {
        let mut edges = BTreeSet::new();
        for path in paths_named(&code_only(&source)) {
            // Resolve `crate::` and each `super::` to an absolute module path.
            let mut absolute: Vec<String> = Vec::new();
            let mut segments = path.into_iter().peekable();
            match segments.peek().map(String::as_str) {
                Some("crate") => {
                    segments.next();
                }
                Some("super") => {
                    absolute = module.clone();
                    while segments.peek().map(String::as_str) == Some("super") {
                        segments.next();
                        absolute.pop();
                    }
                }
                _ => continue,
            }
            absolute.extend(segments);
            // The longest prefix that is a file is the file named.
            let target = (0..=absolute.len()).rev().find_map(|n| modules.get(&absolute[..n]));
            if let Some(target) = target {
                if *target != name {
                    edges.insert(target.clone());
                }
            }
        }
        graph.insert(name, edges);
    }
    graph
}

/// Every import circle in `graph`, each as the files in order with the
/// first repeated at the end (one per strongly connected group).
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let reaches = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(next) = todo.pop() {
            for to in graph.get(&next).into_iter().flatten() {
                if seen.insert(to.clone()) {
                    todo.push(to.clone());
                }
            }
        }
        seen
    };
    let mut found = Vec::new();
    let mut placed = BTreeSet::new();
    for start in graph.keys() {
        if placed.contains(start) || !reaches(start).contains(start) {
            continue;
        }
        // The shortest way back to `start`, breadth first.
        let mut came_from: BTreeMap<String, String> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start.clone()]);
        let mut last = None;
        'search: while let Some(at) = queue.pop_front() {
            for to in graph.get(&at).into_iter().flatten() {
                if to == start {
                    last = Some(at.clone());
                    break 'search;
                }
                if !came_from.contains_key(to) {
                    came_from.insert(to.clone(), at.clone());
                    queue.push_back(to.clone());
                }
            }
        }
        let mut circle = vec![start.clone()];
        let mut at = last;
        while let Some(file) = at {
            if file == *start {
                break;
            }
            circle.push(file.clone());
            at = came_from.get(&file).cloned();
        }
        circle[1..].reverse();
        circle.push(start.clone());
        placed.extend(circle.iter().cloned());
        found.push(circle);
    }
    found
}

#[test]
fn the_graph_resolves_crate_and_super_paths_to_files_and_skips_comments_strings_and_tests() {
    let dir = tempfile::tempdir().unwrap();
    let write = |path: &str, text: &str| {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("lib.rs", "pub mod core;\npub mod share;\n");
    write("core/mod.rs", "pub mod task;\n");
    write(
        "core/task.rs",
        "// crate::share::probe is only a comment\nconst X: &str = \"crate::share\";\n#[cfg(test)]\nfn helper() {}\n",
    );
    write("share/mod.rs", "use crate::core::{task::{self, blocking}, mod_level};\n");
    write("share/probe.rs", "use super::ShareHandle;\nuse super::super::core::task;\n#[cfg(test)]\nmod tests { use super::*; use crate::share::x; }\n");
    let graph = import_graph(dir.path());
    let edges = |file: &str| graph[file].iter().cloned().collect::<Vec<_>>();
    assert_eq!(edges("share/mod.rs"), ["core/mod.rs", "core/task.rs"]);
    assert_eq!(edges("share/probe.rs"), ["core/task.rs", "share/mod.rs"]);
    assert!(edges("core/task.rs").is_empty(), "comments and strings make no edge");
    write("core/task.rs", "#[cfg(test)]\nfn helper() {}\nuse crate::share::probe::X;\n");
    let graph = import_graph(dir.path());
    assert_eq!(
        graph["core/task.rs"].iter().collect::<Vec<_>>(),
        ["share/probe.rs"],
        "a test-only item does not end the file"
    );
}

#[test]
fn the_checker_would_fail_on_a_made_up_circle_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let write = |path: &str, text: &str| {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("links/mod.rs", "mod a;\nmod b;\nmod c;\n");
    write("links/a.rs", "use super::b::Plan;\n");
    write("links/b.rs", "pub fn f() { crate::links::c::g() }\n");
    write("links/c.rs", "use super::{a::Step, b};\n");
    write("links/d.rs", "use super::a::Step;\n");
    let found = circles(&import_graph(dir.path()));
    assert_eq!(found, [["links/a.rs", "links/b.rs", "links/c.rs", "links/a.rs"]]);
}

#[test]
fn no_import_circle_between_files() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = circles(&import_graph(&src));
    let named: Vec<String> = found.iter().map(|circle| circle.join(" -> ")).collect();
    assert!(named.is_empty(), "import circles between files: {named:#?}");
}

#[test]
fn no_source_file_is_longer_than_one_concern() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut long: Vec<(String, usize)> = files
        .iter()
        .map(|file| (file.strip_prefix(&src).unwrap().display().to_string(), std::fs::read_to_string(file).unwrap()))
        .filter(|(name, _)| !LONG_FILES_BEING_SPLIT.contains(&name.as_str()))
        .map(|(name, text)| (name, text.lines().count()))
        .filter(|(_, lines)| *lines > MAX_LINES)
        .collect();
    long.sort();
    assert!(long.is_empty(), "files over {MAX_LINES} lines (split them by concern): {long:#?}");
}
