//! The webhook's layers, checked ([`lifecycle::layering`]). A new top module must be placed in [`LAYERS`].

/// The top modules, lowest layer first; a module may import only from the layers before its own.
const LAYERS: [&[&str]; 8] = [
    &["subject", "certs"],
    &["evaluate"],
    &["vap"],
    &["admission", "metrics", "openreports"],
    &["index", "selfcert"],
    &["audit", "enforcement"],
    &["server"],
    &["runtime", "layering"],
];

#[test]
fn every_import_between_the_webhooks_modules_goes_down_the_layers() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (wrong, edges) = lifecycle::layering::check(&src, &LAYERS);
    assert!(edges > 10, "too few edges found ({edges}): is the scan broken?");
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}
