//! Writes the CRD manifests to `crds/manifests/` (or the folder given as the first argument).
#![forbid(unsafe_code)]

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("manifests"));
    std::fs::create_dir_all(&dir)?;
    for (file, crd) in crds::manifests::all() {
        let path = dir.join(file);
        std::fs::write(&path, crds::manifests::to_yaml(&crd)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
