//! The checked-in CRD YAML must be exactly what the Rust types generate.
//! Fix a failure with `cargo run -p pollen-crds --bin crdgen`.

use std::path::PathBuf;

#[test]
fn checked_in_crd_yaml_matches_the_types() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let expected = pollen_crds::render::yaml();
    for rel in pollen_crds::render::OUTPUT_PATHS {
        let on_disk = std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| {
            panic!("{rel} is missing ({e}); run `cargo run -p pollen-crds --bin crdgen`")
        });
        assert!(
            on_disk == expected,
            "{rel} has drifted from the Rust types; run `cargo run -p pollen-crds --bin crdgen` and commit the result"
        );
    }
}
