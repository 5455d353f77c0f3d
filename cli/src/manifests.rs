//! Reading Kubernetes manifests as GitOps repositories hold them: YAML or JSON files, many documents per
//! file, `kind: List` (what `kubectl get -o yaml` writes), directories walked in name order, `-` for
//! standard input. Empty documents are skipped; anything else that is not an object with `apiVersion` and
//! `kind` is an error that names the file and the document.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// One object and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// `<file>` or `<file>#<n>` (the n-th document, from 1) when the file holds several.
    pub source: String,
    /// The object.
    pub value: Value,
}

impl Manifest {
    /// Its `apiVersion`.
    pub fn api_version(&self) -> &str {
        self.value.get("apiVersion").and_then(Value::as_str).unwrap_or_default()
    }

    /// Its `kind`.
    pub fn kind(&self) -> &str {
        self.value.get("kind").and_then(Value::as_str).unwrap_or_default()
    }

    /// The API group of its `apiVersion` (empty for core/v1).
    pub fn group(&self) -> &str {
        self.api_version().rsplit_once('/').map_or("", |(group, _)| group)
    }

    /// Its `metadata.name`.
    pub fn name(&self) -> &str {
        self.value.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default()
    }

    /// Its `metadata.namespace`, if it names one.
    pub fn namespace(&self) -> Option<&str> {
        self.value.pointer("/metadata/namespace").and_then(Value::as_str).filter(|n| !n.is_empty())
    }

    /// `Kind namespace/name` or `Kind name`, as messages name it.
    pub fn describe(&self) -> String {
        match self.namespace() {
            Some(ns) => format!("{} {ns}/{}", self.kind(), self.name()),
            None => format!("{} {}", self.kind(), self.name()),
        }
    }
}

/// Why manifests could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A document is not YAML, or not an object with apiVersion and kind.
    #[error("{source_name}: {reason}")]
    Malformed {
        /// `<file>#<n>`.
        source_name: String,
        /// What is wrong.
        reason: String,
    },
}

/// Whether a directory entry holds manifests.
fn is_manifest_file(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
}

/// Every manifest file under `path` (itself when it is a file), in name order.
pub fn files(path: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let read_err = |source| ManifestError::Read { path: path.display().to_string(), source };
    if path == Path::new("-") {
        return Ok(vec![path.to_owned()]);
    }
    let meta = fs::metadata(path).map_err(read_err)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut entries: Vec<PathBuf> =
        fs::read_dir(path).map_err(read_err)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    let mut out = Vec::new();
    for entry in entries {
        let hidden = entry.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if entry.is_dir() {
            out.extend(files(&entry)?);
        } else if is_manifest_file(&entry) {
            out.push(entry);
        }
    }
    Ok(out)
}

/// Reads every manifest under each path.
pub fn load(paths: &[PathBuf]) -> Result<Vec<Manifest>, ManifestError> {
    let mut out = Vec::new();
    for path in paths {
        for file in files(path)? {
            let text = read_text(&file)?;
            let name = if file == Path::new("-") { "standard input".to_owned() } else { file.display().to_string() };
            out.extend(parse(&name, &text)?);
        }
    }
    Ok(out)
}

/// A file's text (`-`: standard input).
pub fn read_text(path: &Path) -> Result<String, ManifestError> {
    let read_err = |source| ManifestError::Read { path: path.display().to_string(), source };
    if path == Path::new("-") {
        let mut text = String::new();
        io::stdin().read_to_string(&mut text).map_err(read_err)?;
        return Ok(text);
    }
    fs::read_to_string(path).map_err(read_err)
}

/// The objects of one file's text.
pub fn parse(name: &str, text: &str) -> Result<Vec<Manifest>, ManifestError> {
    let mut docs = Vec::new();
    for (i, doc) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let source_name = format!("{name}#{}", i + 1);
        let value = Value::deserialize(doc)
            .map_err(|e| ManifestError::Malformed { source_name: source_name.clone(), reason: e.to_string() })?;
        docs.push((source_name, value));
    }
    let several = docs.len() > 1;
    let mut out = Vec::new();
    for (source_name, value) in docs {
        let source = if several { source_name } else { name.to_owned() };
        flatten(source, value, &mut out)?;
    }
    Ok(out)
}

fn flatten(source: String, value: Value, out: &mut Vec<Manifest>) -> Result<(), ManifestError> {
    let malformed = |reason: String| ManifestError::Malformed { source_name: source.clone(), reason };
    match value {
        Value::Null => Ok(()),
        Value::Object(ref map) => {
            let kind = map.get("kind").and_then(Value::as_str).unwrap_or_default();
            let api_version = map.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
            if kind.is_empty() || api_version.is_empty() {
                return Err(malformed("not a Kubernetes object: it needs apiVersion and kind".to_owned()));
            }
            if kind == "List" || (kind.ends_with("List") && map.contains_key("items")) {
                let items = map.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
                for (i, item) in items.into_iter().enumerate() {
                    flatten(format!("{source} items[{i}]"), item, out)?;
                }
                return Ok(());
            }
            out.push(Manifest { source, value });
            Ok(())
        }
        other => Err(malformed(format!("not a Kubernetes object but {}", type_name(&other)))),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_documents_lists_and_empty_documents_are_read() {
        let text = "---\napiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: pay}\n---\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: pay}}\n";
        let m = parse("x.yaml", text).expect("parsed");
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].kind(), m[0].name(), m[0].namespace()), ("Service", "a", Some("pay")));
        assert_eq!(m[0].source, "x.yaml#1");
        assert_eq!(m[1].source, "x.yaml#3 items[0]");
        assert_eq!(m[1].describe(), "Namespace pay");
    }

    #[test]
    fn a_document_that_is_not_an_object_names_its_file_and_number() {
        let err = parse("x.yaml", "apiVersion: v1\nkind: Service\n---\n- a\n").expect_err("a list");
        assert_eq!(err.to_string(), "x.yaml#2: not a Kubernetes object but a list");
        let err = parse("y.yaml", "metadata: {name: a}\n").expect_err("no kind");
        assert!(err.to_string().starts_with("y.yaml: not a Kubernetes object"), "{err}");
        let err = parse("z.yaml", "a: [\n").expect_err("not yaml");
        assert!(err.to_string().starts_with("z.yaml#1: "), "{err}");
    }

    #[test]
    fn a_single_document_is_named_by_its_file_alone_and_json_reads_too() {
        let m = parse(
            "c.json",
            r#"{"apiVersion": "csp.contracts.dev/v1alpha1", "kind": "ChannelContract", "metadata": {"name": "pv"}}"#,
        )
        .expect("json");
        assert_eq!((m[0].source.as_str(), m[0].group(), m[0].namespace()), ("c.json", "csp.contracts.dev", None));
    }

    #[test]
    fn directories_are_walked_in_name_order_skipping_hidden_and_other_files() {
        let dir = tempfile::tempdir().expect("dir");
        let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: NAME}\n";
        fs::create_dir(dir.path().join("b")).expect("mkdir");
        fs::write(dir.path().join("b/2.yaml"), svc.replace("NAME", "b2")).expect("write");
        fs::write(dir.path().join("a.yml"), svc.replace("NAME", "a")).expect("write");
        fs::write(dir.path().join(".hidden.yaml"), "not: [yaml").expect("write");
        fs::write(dir.path().join("README.md"), "# docs").expect("write");
        let names: Vec<String> =
            load(&[dir.path().to_owned()]).expect("load").iter().map(|m| m.name().to_owned()).collect();
        assert_eq!(names, ["a", "b2"]);
        let err = load(&[dir.path().join("missing")]).expect_err("missing");
        assert!(err.to_string().starts_with("cannot read "), "{err}");
    }
}
