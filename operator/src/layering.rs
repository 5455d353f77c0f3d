//! The operator's layers, checked: every `use crate::<module>` edge between top modules of `src/` goes
//! from a higher layer to a lower one, so that there is no import cycle and nothing below imports from
//! above. A new top module must be placed in [`LAYERS`].

use std::collections::BTreeSet;
use std::path::Path;

/// The top modules, lowest layer first; a module may import only from the layers before its own.
const LAYERS: [&[&str]; 7] =
    [&["model"], &["envoy"], &["translate"], &["publish"], &["watch"], &["reconcile"], &["runtime", "render"]];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The top module a file belongs to (`watch/cache.rs` -> `watch`); None for the crate root files.
fn top_module(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main" | "layering")).then(|| name.to_owned())
}

/// The top modules a source text imports with `crate::<module>` (in `use` items and in paths).
fn imports(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines().map(str::trim_start).filter(|l| !l.starts_with("//")) {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let module: String = after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !module.is_empty() {
                found.insert(module);
            }
            rest = after;
        }
    }
    // `use crate::{a, b}` groups.
    for group in text.split("use crate::{").skip(1) {
        let inside = group.split('}').next().unwrap_or_default();
        for item in inside.split(',') {
            let module: String = item.trim().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !module.is_empty() {
                found.insert(module);
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every violation of [`LAYERS`] among `(file's module, imported module)` edges.
fn violations(edges: &[(String, String, String)]) -> Vec<String> {
    let mut wrong = Vec::new();
    for (file, from, to) in edges {
        if from == to || to == "lifecycle" {
            continue;
        }
        match (layer(from), layer(to)) {
            (Some(a), Some(b)) if b < a => {}
            (Some(_), Some(_)) => wrong.push(format!("{file}: {from} imports {to}, which is not in a lower layer")),
            (None, _) => wrong.push(format!("{file}: module {from} is in no layer of LAYERS")),
            (_, None) => wrong.push(format!("{file}: {from} imports {to}, which is in no layer of LAYERS")),
        }
    }
    wrong
}

#[test]
fn every_import_between_the_operators_modules_goes_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut edges = Vec::new();
    for path in &files {
        let relative = path.strip_prefix(&src).expect("under src");
        let Some(from) = top_module(relative) else { continue };
        let text = std::fs::read_to_string(path).expect("readable");
        for to in imports(&text) {
            edges.push((relative.display().to_string(), from.clone(), to));
        }
    }
    assert!(edges.len() > 20, "too few edges found ({}): is the scan broken?", edges.len());
    let wrong = violations(&edges);
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn the_check_catches_cycles_and_upward_imports() {
    let text =
        "use crate::model::X;\nuse crate::{translate, envoy::json};\nlet x = crate::watch::y();\n// crate::runtime\n";
    assert_eq!(imports(text).into_iter().collect::<Vec<_>>(), ["envoy", "model", "translate", "watch"]);
    let edge = |from: &str, to: &str| ("f.rs".to_owned(), from.to_owned(), to.to_owned());
    assert!(violations(&[edge("reconcile", "watch"), edge("watch", "watch")]).is_empty());
    assert_eq!(violations(&[edge("watch", "reconcile")]).len(), 1, "upward");
    assert_eq!(violations(&[edge("translate", "publish"), edge("publish", "translate")]).len(), 1, "a cycle");
    assert_eq!(violations(&[edge("runtime", "render")]).len(), 1, "sideways in one layer");
    assert_eq!(violations(&[edge("misc", "model")]).len(), 1, "a module in no layer");
}
