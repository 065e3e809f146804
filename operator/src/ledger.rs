//! The version ledger, pure: may a verified artifact be delivered to an install path, given the highest
//! version the operator delivered there before?
//!
//! The publisher signs a version claim (`pollen.dev/version`) with the manifest digest and the
//! repository; the operator keeps, in the TrustPolicy's status, the highest claimed version it
//! delivered per (normalised repository, install path). Whoever can move a tag can then no longer make
//! the operator deliver an older signed build under a fresh, higher sequence:
//! - a higher version is delivered and becomes the new mark;
//! - the same version under the same digest is delivered again (a re-index, a second rollout);
//! - a lower version (`Downgrade`), or the same version under another digest (`VersionReused`), is
//!   refused unless the rollout sets `allowDowngrade`; then it is delivered, the mark stays;
//! - an artifact without a claim is refused (`Unversioned`) unless the TrustPolicy sets
//!   `allowUnversioned`; then it is delivered and the ledger is not touched.
//!
//! Versions compare by semantic-version precedence (build metadata is ignored).
//!
//! Non-goals: reading or writing the ledger (the controller does), judging signatures (`pollen-trust`).

use std::cmp::Ordering;

use pollen_crds::DeliveredVersion;
use pollen_crds::conditions::reasons;
use semver::Version;

/// What the ledger says about a candidate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver it; `record` says whether it becomes the new mark for its key.
    Deliver {
        /// Whether to write the candidate into the ledger.
        record: bool,
    },
    /// Deliver it because the rollout allows a downgrade; `from` is the recorded mark, which stays.
    DowngradeAllowed {
        /// The highest version delivered before.
        from: String,
    },
    /// Refuse it: `Verified=False` with `reason`.
    Refuse {
        /// The condition reason.
        reason: &'static str,
        /// What the condition says.
        message: String,
    },
}

/// The candidate artifact, verified.
#[derive(Clone, Debug)]
pub struct Candidate<'a> {
    /// The normalised repository, `registry/path`.
    pub repository: &'a str,
    /// The install path.
    pub target_path: &'a str,
    /// The manifest digest.
    pub digest: &'a str,
    /// The publisher's version claim.
    pub version: Option<&'a Version>,
}

/// The ledger entry for `repository` and `target_path`, if any.
pub fn lookup<'a>(
    ledger: &'a [DeliveredVersion],
    repository: &str,
    target_path: &str,
) -> Option<&'a DeliveredVersion> {
    ledger
        .iter()
        .find(|e| e.repository == repository && e.target_path == target_path)
}

/// Decides on `candidate` against the ledger entry for its key.
pub fn decide(
    recorded: Option<&DeliveredVersion>,
    candidate: &Candidate<'_>,
    allow_unversioned: bool,
    allow_downgrade: bool,
) -> Verdict {
    let Some(version) = candidate.version else {
        return if allow_unversioned {
            Verdict::Deliver { record: false }
        } else {
            Verdict::Refuse {
                reason: reasons::UNVERSIONED,
                message: "the publisher signature makes no version claim (pollen.dev/version) and the \
                          TrustPolicy does not set allowUnversioned"
                    .into(),
            }
        };
    };
    // An entry the operator cannot read (it alone writes them) is replaced.
    let Some((rec, mark)) = recorded.and_then(|r| Some((r, Version::parse(&r.version).ok()?))) else {
        return Verdict::Deliver { record: true };
    };
    let refuse = |reason, what: String| {
        if allow_downgrade {
            Verdict::DowngradeAllowed {
                from: rec.version.clone(),
            }
        } else {
            Verdict::Refuse {
                reason,
                message: format!(
                    "{what} {mark} delivered from {} to {} by {} ({}); set artifact.allowDowngrade to deliver it",
                    rec.repository, rec.target_path, rec.rollout, rec.digest
                ),
            }
        }
    };
    match version.cmp_precedence(&mark) {
        Ordering::Greater => Verdict::Deliver { record: true },
        Ordering::Equal if candidate.digest == rec.digest => Verdict::Deliver { record: false },
        Ordering::Equal => refuse(
            reasons::VERSION_REUSED,
            format!(
                "version {version} is signed for {}, but it names the build",
                candidate.digest
            ),
        ),
        Ordering::Less => refuse(
            reasons::DOWNGRADE,
            format!("version {version} is lower than the highest version"),
        ),
    }
}

/// The ledger with `entry` as the mark for its key (replacing the old one), sorted by key.
pub fn record(ledger: &[DeliveredVersion], entry: DeliveredVersion) -> Vec<DeliveredVersion> {
    let mut out: Vec<DeliveredVersion> = ledger
        .iter()
        .filter(|e| !(e.repository == entry.repository && e.target_path == entry.target_path))
        .cloned()
        .collect();
    out.push(entry);
    out.sort_by(|a, b| (&a.repository, &a.target_path).cmp(&(&b.repository, &b.target_path)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPO: &str = "registry.test/fleet/gw";
    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn entry(version: &str, digest: &str) -> DeliveredVersion {
        DeliveredVersion {
            repository: REPO.into(),
            target_path: "fw.bin".into(),
            version: version.into(),
            digest: digest.into(),
            rollout: "fleet/gw-2".into(),
        }
    }

    fn verdict(
        recorded: Option<&DeliveredVersion>,
        v: Option<&str>,
        digest: &str,
        unver: bool,
        down: bool,
    ) -> Verdict {
        let v = v.map(|v| Version::parse(v).unwrap());
        let c = Candidate {
            repository: REPO,
            target_path: "fw.bin",
            digest,
            version: v.as_ref(),
        };
        decide(recorded, &c, unver, down)
    }

    #[test]
    fn the_first_and_higher_versions_are_delivered_and_recorded() {
        assert_eq!(
            verdict(None, Some("1.0.0"), D1, false, false),
            Verdict::Deliver { record: true }
        );
        let e = entry("1.4.2", D1);
        for v in ["1.4.3", "2.0.0", "1.5.0-rc.1"] {
            assert_eq!(
                verdict(Some(&e), Some(v), D2, false, false),
                Verdict::Deliver { record: true },
                "{v}"
            );
        }
        // The same build again (a re-index, a second rollout): delivered, nothing to write.
        assert_eq!(
            verdict(Some(&e), Some("1.4.2"), D1, false, false),
            Verdict::Deliver { record: false }
        );
    }

    #[test]
    fn a_lower_version_is_refused_unless_the_rollout_allows_it() {
        let e = entry("2.0.0", D2);
        for v in ["1.9.9", "2.0.0-rc.1", "0.1.0"] {
            match verdict(Some(&e), Some(v), D1, false, false) {
                Verdict::Refuse { reason, message } => {
                    assert_eq!(reason, reasons::DOWNGRADE);
                    assert!(message.contains(v) && message.contains("2.0.0"), "{message}");
                    assert!(
                        message.contains("fleet/gw-2") && message.contains("allowDowngrade"),
                        "{message}"
                    );
                }
                other => panic!("{v}: {other:?}"),
            }
            assert_eq!(
                verdict(Some(&e), Some(v), D1, true, true),
                Verdict::DowngradeAllowed { from: "2.0.0".into() }
            );
        }
    }

    #[test]
    fn the_same_version_under_another_digest_is_refused() {
        let e = entry("2.0.0", D2);
        let v = verdict(Some(&e), Some("2.0.0"), D1, false, false);
        assert!(
            matches!(&v, Verdict::Refuse { reason, message } if *reason == reasons::VERSION_REUSED && message.contains(D1) && message.contains(D2)),
            "{v:?}"
        );
        // Build metadata does not make another version.
        let v = verdict(Some(&e), Some("2.0.0+rebuild.7"), D1, false, false);
        assert!(
            matches!(
                v,
                Verdict::Refuse {
                    reason: reasons::VERSION_REUSED,
                    ..
                }
            ),
            "{v:?}"
        );
        assert_eq!(
            verdict(Some(&e), Some("2.0.0"), D1, false, true),
            Verdict::DowngradeAllowed { from: "2.0.0".into() }
        );
    }

    #[test]
    fn unversioned_artifacts_need_the_policy_and_leave_the_ledger_alone() {
        let e = entry("2.0.0", D2);
        for recorded in [None, Some(&e)] {
            assert!(matches!(
                verdict(recorded, None, D1, false, false),
                Verdict::Refuse {
                    reason: reasons::UNVERSIONED,
                    ..
                }
            ));
            // allowDowngrade on the rollout is no substitute for the policy.
            assert!(matches!(
                verdict(recorded, None, D1, false, true),
                Verdict::Refuse {
                    reason: reasons::UNVERSIONED,
                    ..
                }
            ));
            assert_eq!(
                verdict(recorded, None, D1, true, false),
                Verdict::Deliver { record: false }
            );
        }
    }

    #[test]
    fn an_unreadable_entry_is_replaced() {
        let e = entry("not-a-version", D2);
        assert_eq!(
            verdict(Some(&e), Some("0.0.1"), D1, false, false),
            Verdict::Deliver { record: true }
        );
    }

    #[test]
    fn recording_replaces_the_entry_of_its_key_and_keeps_the_others_sorted() {
        let other_path = DeliveredVersion {
            target_path: "a.bin".into(),
            ..entry("9.0.0", D1)
        };
        let other_repo = DeliveredVersion {
            repository: "registry.test/fleet/aaa".into(),
            ..entry("3.0.0", D1)
        };
        let ledger = vec![entry("1.0.0", D1), other_path.clone(), other_repo.clone()];
        let out = record(&ledger, entry("2.0.0", D2));
        assert_eq!(out, vec![other_repo, other_path, entry("2.0.0", D2)]);
        assert_eq!(lookup(&out, REPO, "fw.bin"), Some(&entry("2.0.0", D2)));
        assert_eq!(lookup(&out, REPO, "nope.bin"), None);
    }
}
