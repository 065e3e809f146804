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
    // `cargo run` sets CARGO_MANIFEST_DIR for the process too: prefer it to the one compiled in, so that
    // a binary built from another checkout (a shared target directory) writes into this one.
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    let root = manifest.join("..");
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
