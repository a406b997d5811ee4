//! The house's shape, checked: capabilities meet in the core and never import
//! each other, the API or the daemon; the core and the config import no layer
//! above them; the API knows no capability by name. A violating `use` fails
//! this test, so CI fails the build.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const CAPABILITIES: &[&str] = &["share", "links", "scripts", "idle", "azure"];

/// The crate's top-level modules a file under `layer` may not name.
fn forbidden_for(layer: &str) -> Vec<&'static str> {
    let above_core = ["api", "daemon", "cli", "share", "links", "scripts", "idle", "azure"];
    match layer {
        "core" => above_core.to_vec(),
        "config" => [&above_core[..], &["core"]].concat(),
        "api" => ["daemon", "cli", "share", "links", "scripts", "idle", "azure"].to_vec(),
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
