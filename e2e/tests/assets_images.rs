//! The Dockerfiles in `images/` stay buildable as the workspace changes: every workspace member is in
//! the build context (cargo needs all of them), each image builds and runs a binary its package really
//! declares, base images are pinned (no `latest`), and the runtime stage is distroless and non-root.
//! The chart's image names match the images' binaries.
//!
//! No container engine runs here, so the images are not built; `images/lint.sh` lints the files with
//! hadolint. This test reads files only.

use std::path::PathBuf;

use pollen_e2e::tools;

fn root() -> PathBuf {
    tools::workspace_root()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

/// The workspace members, from the root Cargo.toml.
fn members() -> Vec<String> {
    let manifest = read("Cargo.toml");
    let line = manifest
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .expect("a members line");
    let list = &line[line.find('[').unwrap() + 1..line.rfind(']').unwrap()];
    list.split(',')
        .map(|m| m.trim().trim_matches('"').to_string())
        .filter(|m| !m.is_empty())
        .collect()
}

#[test]
fn each_image_copies_the_workspace_and_runs_a_declared_binary_as_non_root() {
    let members = members();
    assert!(members.len() >= 5, "{members:?}");
    for (image, package_dir, binary) in [
        ("images/operator/Dockerfile", "operator", "pollen-operator"),
        ("images/edge-node/Dockerfile", "edge-node", "pollen-edge-node"),
    ] {
        let df = read(image);
        for m in &members {
            assert!(
                df.lines().any(|l| l.trim() == format!("COPY {m} {m}")),
                "{image} does not copy workspace member {m}: the build would fail"
            );
        }
        let cargo = read(&format!("{package_dir}/Cargo.toml"));
        let package = cargo
            .lines()
            .find_map(|l| l.strip_prefix("name = "))
            .expect("package name")
            .trim_matches('"');
        assert!(
            cargo.contains(&format!("[[bin]]\nname = \"{binary}\"")),
            "{package_dir}/Cargo.toml declares no binary {binary}"
        );
        assert!(
            df.contains(&format!("-p {package} --bin {binary}")),
            "{image} does not build {package}/{binary}"
        );
        assert!(
            df.contains(&format!("ENTRYPOINT [\"/usr/local/bin/{binary}\"]")),
            "{image} entrypoint"
        );
        let froms: Vec<&str> = df.lines().filter(|l| l.starts_with("FROM ")).collect();
        assert!(froms.len() >= 2, "{image} is not multi-stage");
        for f in &froms {
            let reference = f.split_whitespace().nth(1).unwrap();
            assert!(!reference.ends_with(":latest"), "{image}: {f}");
            assert!(
                reference.rsplit('/').next().unwrap().contains(':'),
                "{image}: unpinned {f}"
            );
        }
        let runtime = froms.last().unwrap();
        assert!(
            runtime.contains("distroless") && runtime.ends_with(":nonroot"),
            "{image}: runtime {runtime}"
        );
        let user = df
            .lines()
            .rev()
            .find(|l| l.starts_with("USER "))
            .expect("a USER line");
        assert_eq!(user, "USER 65532:65532", "{image}");
        let ignore = read(&format!("{image}.dockerignore"));
        for excluded in ["target/", ".tools/"] {
            assert!(
                ignore.lines().any(|l| l == excluded),
                "{image}.dockerignore lacks {excluded}"
            );
        }
    }
    // The chart runs those images.
    let values = read("charts/pollen/values.yaml");
    for repo in ["repository: pollen-operator", "repository: pollen-edge-node"] {
        assert!(values.contains(repo), "values.yaml lacks {repo}");
    }
}
