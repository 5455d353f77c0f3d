//! A crate's layers, checked by its own tests: every `crate::<module>` edge between the top modules of
//! its `src/` goes from a higher layer to a lower one, so that there is no import cycle and nothing below
//! imports from above. The operator and the webhook each declare their layers and call [`check`].

use std::collections::BTreeSet;
use std::path::Path;

/// The violations of `layers` (top modules, lowest layer first; a module may import only from the layers
/// before its own) in the crate whose `src/` folder is `src`, and how many edges were found.
pub fn check(src: &Path, layers: &[&[&str]]) -> (Vec<String>, usize) {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut edges = Vec::new();
    for path in &files {
        let Ok(relative) = path.strip_prefix(src) else { continue };
        let Some(from) = top_module(relative) else { continue };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for to in imports(&text) {
            edges.push((relative.display().to_string(), from.clone(), to));
        }
    }
    (violations(layers, &edges), edges.len())
}

/// The top module a file belongs to (`watch/cache.rs` -> `watch`); None for the crate root files.
fn top_module(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

/// The top modules a source text imports with `crate::<module>` (in `use` items and in paths).
pub fn imports(text: &str) -> BTreeSet<String> {
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
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every violation of `layers` among `(file, file's module, imported module)` edges.
pub fn violations(layers: &[&[&str]], edges: &[(String, String, String)]) -> Vec<String> {
    let layer = |module: &str| layers.iter().position(|l| l.contains(&module));
    let mut wrong = Vec::new();
    for (file, from, to) in edges {
        if from == to {
            continue;
        }
        match (layer(from), layer(to)) {
            (Some(a), Some(b)) if b < a => {}
            (Some(_), Some(_)) => wrong.push(format!("{file}: {from} imports {to}, which is not in a lower layer")),
            (None, _) => wrong.push(format!("{file}: module {from} is in no layer")),
            (_, None) => wrong.push(format!("{file}: {from} imports {to}, which is in no layer")),
        }
    }
    wrong
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYERS: [&[&str]; 7] =
        [&["model"], &["envoy"], &["translate"], &["publish"], &["watch"], &["reconcile"], &["runtime", "render"]];

    #[test]
    fn the_check_catches_cycles_and_upward_imports() {
        let text = "use crate::model::X;\nuse crate::{translate, envoy::json};\nlet x = crate::watch::y();\n// crate::runtime\n";
        assert_eq!(imports(text).into_iter().collect::<Vec<_>>(), ["envoy", "model", "translate", "watch"]);
        let edge = |from: &str, to: &str| ("f.rs".to_owned(), from.to_owned(), to.to_owned());
        assert!(violations(&LAYERS, &[edge("reconcile", "watch"), edge("watch", "watch")]).is_empty());
        assert_eq!(violations(&LAYERS, &[edge("watch", "reconcile")]).len(), 1, "upward");
        assert_eq!(
            violations(&LAYERS, &[edge("translate", "publish"), edge("publish", "translate")]).len(),
            1,
            "a cycle"
        );
        assert_eq!(violations(&LAYERS, &[edge("runtime", "render")]).len(), 1, "sideways in one layer");
        assert_eq!(violations(&LAYERS, &[edge("misc", "model")]).len(), 1, "a module in no layer");
    }
}
