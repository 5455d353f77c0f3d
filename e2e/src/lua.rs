//! The shipped Lua integrations, run as their engines run them: `e2e/.bin/luacheck` (gopher-lua, see
//! e2e/tools/lua) with Argo CD's or Karmada's libraries, on objects captured from the real API server.

use std::path::PathBuf;

use serde_json::Value;

use crate::{repo_root, run, tool};

/// Argo CD's health of an object of `kind` (ChannelContract or ContractPolicy), by our health.lua:
/// (status, message).
pub fn argocd_health(kind: &str, object: &Value) -> (String, String) {
    let script = health_lua(kind);
    let input = temp_json(object);
    let mut cmd = std::process::Command::new(tool("luacheck"));
    cmd.arg("argocd-health").arg(&script).arg(&input);
    let out: Value = serde_json::from_str(&run(cmd, None).ok()).expect("luacheck prints JSON");
    let _ = std::fs::remove_file(input);
    (out["status"].as_str().unwrap_or_default().to_owned(), out["message"].as_str().unwrap_or_default().to_owned())
}

/// The health.lua of `kind` in Argo CD's resource_customizations layout.
pub fn health_lua(kind: &str) -> PathBuf {
    repo_root().join(format!("integrations/argocd/resource_customizations/csp.contracts.dev/{kind}/health.lua"))
}

/// Calls `function` of the Karmada customization `customization` (healthInterpretation, statusReflection,
/// statusAggregation) of `kind` with `args`; its results.
pub fn karmada(kind: &str, customization: &str, function: &str, args: &[Value]) -> Vec<Value> {
    let script = karmada_script(kind, customization);
    let script_file =
        std::env::temp_dir().join(format!("csp-karmada-{}-{}.lua", std::process::id(), crate::unique("s")));
    std::fs::write(&script_file, script).expect("write the script");
    let input = temp_json(&Value::Array(args.to_vec()));
    let mut cmd = std::process::Command::new(tool("luacheck"));
    cmd.arg("karmada").arg(&script_file).arg(function).arg(&input);
    let out = run(cmd, None).ok();
    let _ = std::fs::remove_file(input);
    let _ = std::fs::remove_file(script_file);
    match serde_json::from_str(&out).expect("luacheck prints JSON") {
        Value::Array(v) => v,
        Value::Null => Vec::new(),
        other => vec![other],
    }
}

/// The Lua of one customization of `kind` in integrations/karmada/resourceinterpretercustomizations.yaml.
pub fn karmada_script(kind: &str, customization: &str) -> String {
    let path = repo_root().join("integrations/karmada/resourceinterpretercustomizations.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    for doc in yaml_serde::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).expect("a YAML document");
        if v["spec"]["target"]["kind"] == kind {
            return v["spec"]["customizations"][customization]["luaScript"]
                .as_str()
                .unwrap_or_else(|| panic!("{kind} has no {customization}"))
                .to_owned();
        }
    }
    panic!("no customization for {kind}")
}

fn temp_json(v: &Value) -> PathBuf {
    let path = std::env::temp_dir().join(format!("csp-lua-{}-{}.json", std::process::id(), crate::unique("o")));
    std::fs::write(&path, serde_json::to_vec(v).expect("json")).expect("write the object");
    path
}

/// An object as kubectl returned it, without what changes from run to run (uid, resourceVersion, managed
/// fields, times of creation, labels), with the tests' unique names (`<name>-<pid>-<n>`) made plain and
/// their namespaces (`e2e-…`) named `shop`, for testdata.
pub fn scrubbed(mut object: Value) -> Value {
    if let Some(m) = object["metadata"].as_object_mut() {
        for k in ["uid", "resourceVersion", "managedFields", "creationTimestamp", "annotations", "labels"] {
            m.remove(k);
        }
    }
    let text = serde_json::to_string(&object).expect("json");
    let mut out = String::with_capacity(text.len());
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        out.push_str(&plain(token));
        token.clear();
    };
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || c == '-' {
            token.push(c);
        } else {
            flush(&mut token, &mut out);
            out.push(c);
        }
    }
    flush(&mut token, &mut out);
    serde_json::from_str(&out).expect("json")
}

/// `e2e-…-<pid>-<n>` → `shop`; `<name>-<pid>-<n>` → `<name>`; anything else unchanged.
fn plain(token: &str) -> String {
    let parts: Vec<&str> = token.rsplitn(3, '-').collect();
    let numbered =
        parts.len() == 3 && parts[..2].iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
    match (numbered, parts.last()) {
        (true, Some(stem)) if stem.starts_with("e2e-") => "shop".to_owned(),
        (true, Some(stem)) => (*stem).to_owned(),
        _ => token.to_owned(),
    }
}

/// With `CSP_UPDATE_TESTDATA=1`, writes `object` (scrubbed) as Argo CD testdata `name.yaml` of `kind`.
pub fn capture(kind: &str, name: &str, object: &Value) {
    if std::env::var("CSP_UPDATE_TESTDATA").as_deref() != Ok("1") {
        return;
    }
    let path = health_lua(kind).with_file_name("testdata").join(format!("{name}.yaml"));
    let yaml = yaml_serde::to_string(&scrubbed(object.clone())).expect("yaml");
    std::fs::write(&path, yaml).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
