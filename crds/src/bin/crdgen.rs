//! Writes the CRD manifests generated from the Rust types to crds/srv6pipes.io.yaml
//! (or to the path given), which CI checks for drift.

use std::path::{Path, PathBuf};

fn main() -> std::io::Result<()> {
    let path = std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").join(srv6pipes_crds::CRD_FILE)
    });
    std::fs::write(&path, srv6pipes_crds::crd_yaml())?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
