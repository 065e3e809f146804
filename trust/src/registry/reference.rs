//! Image references: the distribution reference grammar, parsed without a regular expression, and the
//! small helpers that re-point a reference at another tag or digest.
//!
//! Non-goals: resolving tags (that needs a registry), registry mirrors.

use oci_client::Reference;

use super::RegistryError;

/// Parses `registry/repository[:tag][@digest]`.
///
/// The grammar is the distribution reference grammar that oci-client's `Reference::from_str` checks with
/// a regular expression, and the result is the same (`docker.io` and `library/` normalisation, `latest`
/// when neither tag nor digest is given). It is parsed by hand because that expression (Unicode `\w`
/// classes) compiles to about 10 MiB of automaton and per-thread caches that stay resident for the life
/// of the process, which on an edge device is a third of the memory budget.
pub fn parse_reference(s: &str) -> Result<Reference, RegistryError> {
    let bad = |reason: &str| RegistryError::Reference {
        reference: s.into(),
        reason: reason.into(),
    };
    if s.is_empty() {
        return Err(bad("empty reference"));
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (s, None),
    };
    let slash = rest.rfind('/');
    let (name, tag) = match rest.rfind(':') {
        Some(i) if slash.is_none_or(|j| i > j) => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if let Some(t) = tag
        && !valid_tag(t)
    {
        return Err(bad("invalid tag"));
    }
    if let Some(d) = digest {
        let Some((alg, hex)) = d.split_once(':') else {
            return Err(bad("invalid digest"));
        };
        let want = match alg {
            "sha256" => 64,
            "sha384" => 96,
            "sha512" => 128,
            _ => return Err(bad("unsupported digest algorithm")),
        };
        if hex.len() != want || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("invalid digest"));
        }
    }
    // `[domain/]path`: a first component that is a valid host is taken as the domain for validation;
    // it names the registry only if it looks like one (a dot, a port or `localhost`), as in Docker.
    let (first, path) = match name.split_once('/') {
        Some((f, p)) if valid_domain(f) => (Some(f), p),
        _ => (None, name),
    };
    if path.is_empty() || !path.split('/').all(valid_path_component) {
        return Err(bad("invalid repository name"));
    }
    let (mut registry, mut repository) = match first {
        Some(f) if f.contains('.') || f.contains(':') || f == "localhost" => (f.to_owned(), path.to_owned()),
        _ => ("docker.io".to_owned(), name.to_owned()),
    };
    if registry == "index.docker.io" {
        registry = "docker.io".into();
    }
    if registry == "docker.io" && !repository.contains('/') {
        repository = format!("library/{repository}");
    }
    if repository.len() > 255 {
        return Err(bad("repository name too long"));
    }
    Ok(match (tag, digest) {
        (Some(t), Some(d)) => Reference::with_tag_and_digest(registry, repository, t.into(), d.into()),
        (None, Some(d)) => Reference::with_digest(registry, repository, d.into()),
        (Some(t), None) => Reference::with_tag(registry, repository, t.into()),
        (None, None) => Reference::with_tag(registry, repository, "latest".into()),
    })
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn valid_tag(t: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let b = t.as_bytes();
    !b.is_empty() && b.len() <= 128 && word(b[0]) && b.iter().all(|&c| word(c) || c == b'.' || c == b'-')
}

/// Host labels (`[A-Za-z0-9]` or `[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9]`) joined by dots, then `:port`.
fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    !host.is_empty()
        && host.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
        })
}

/// `[a-z0-9]+` runs separated by `.`, `_`, `__` or any number of `-`.
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

/// The repository of a reference, as `registry/repository` (cosign's docker-reference).
pub fn repository_name(r: &Reference) -> String {
    format!("{}/{}", r.registry(), r.repository())
}

/// The same repository at `digest`.
pub fn at_digest(r: &Reference, digest: &str) -> Reference {
    Reference::with_digest(r.registry().into(), r.repository().into(), digest.into())
}

/// The same repository at `tag`.
pub fn at_tag(r: &Reference, tag: &str) -> Reference {
    Reference::with_tag(r.registry().into(), r.repository().into(), tag.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = parse_reference("127.0.0.1:5000/fleet/app:v1").unwrap();
        assert_eq!(repository_name(&r), "127.0.0.1:5000/fleet/app");
        assert_eq!(at_tag(&r, "x").whole(), "127.0.0.1:5000/fleet/app:x");
        assert!(parse_reference("bad ref!!").is_err());
    }

    #[test]
    fn references_parse_as_oci_client_does() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        for s in [
            "127.0.0.1:5000/fleet/app:v1".to_owned(),
            format!("127.0.0.1:5000/bench/app@{digest}"),
            format!("reg.example/a/b:v2@{digest}"),
            "localhost/app".into(),
            "localhost:5000/a_b/c__d/e--f.g:T_1.x-y".into(),
            "busybox".into(),
            "fleet/app:1".into(),
            "index.docker.io/app".into(),
            "docker.io/x/y".into(),
            "Reg.Example:443/app".into(),
            "Upper/app".into(),
            "index.docker.io/x/y:z".into(),
        ] {
            let ours = parse_reference(&s).unwrap();
            let theirs: Reference = s.parse().unwrap();
            assert_eq!(ours.whole(), theirs.whole(), "{s}");
            assert_eq!(ours.registry(), theirs.registry(), "{s}");
            assert_eq!(ours.repository(), theirs.repository(), "{s}");
            assert_eq!(ours.tag(), theirs.tag(), "{s}");
            assert_eq!(ours.digest(), theirs.digest(), "{s}");
        }
        for s in [
            "",
            "bad ref!!",
            "Upper",
            "x/Upper",
            "app:",
            "app:-x",
            "reg.example/app@sha256:abc",
            "reg.example/app@md5:0123456789abcdef0123456789abcdef",
            "reg.example/a//b",
            "reg.example/a_-b",
            "reg.example/a.",
            "-reg.example/app",
            "reg.example:x/app",
        ] {
            assert!(parse_reference(s).is_err(), "{s:?} accepted");
            assert!(s.parse::<Reference>().is_err(), "{s:?} accepted by oci-client");
        }
    }
}
