//! `crdgen`: write Pollen's CRD YAML into the repository (`crds/` and the Helm chart).
//!
//! `crdgen` with no argument writes the files; `crdgen --stdout` prints the YAML instead.
use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let yaml = pollen_crds::render::yaml();
    if std::env::args().any(|a| a == "--stdout") {
        print!("{yaml}");
        return Ok(());
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for rel in pollen_crds::render::OUTPUT_PATHS {
        let path = root.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, &yaml)?;
        eprintln!("wrote {rel}");
    }
    Ok(())
}
