//! Writes the CRD manifests generated from the Rust types to crds/srv6pipes.io.yaml and to the
//! Helm chart's templates/crds.yaml (same CRDs, annotated to be kept on uninstall), which CI
//! checks for drift, and the resource reference to docs/reference.md.

use std::path::Path;

fn main() -> std::io::Result<()> {
    // It writes into the source tree: any argument (`--help` among them) only says what it does.
    if std::env::args().len() > 1 {
        eprintln!(
            "usage: crdgen (no arguments)\nwrites {}, {} and {} under the workspace it was built from",
            srv6pipes_crds::CRD_FILE,
            srv6pipes_crds::CHART_CRD_FILE,
            srv6pipes_crds::reference::REFERENCE_FILE
        );
        std::process::exit(2);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
    for (file, text) in [
        (srv6pipes_crds::CRD_FILE, srv6pipes_crds::crd_yaml()),
        (srv6pipes_crds::CHART_CRD_FILE, srv6pipes_crds::chart_crd_yaml()),
        (srv6pipes_crds::reference::REFERENCE_FILE, srv6pipes_crds::reference::reference_md()),
    ] {
        std::fs::write(root.join(file), text)?;
        eprintln!("wrote {file}");
    }
    Ok(())
}
