//! Condition types and reasons, as constants shared by the operator, the agent
//! and the kubectl plugin, so that nobody matches on a misspelt string.
//!
//! Conditions follow Kubernetes conventions: `kubectl wait --for=condition=Complete ur/NAME`
//! works because the operator keeps a `Complete` condition with status `True` once every
//! targeted node reports the artifact installed.

/// Condition types of an UpdateRollout.
pub mod types {
    /// The artifact reference resolved to a pinned digest.
    pub const RESOLVED: &str = "Resolved";
    /// The publisher signature on the artifact verified against the TrustPolicy.
    pub const VERIFIED: &str = "Verified";
    /// The signed chunk index exists in the registry.
    pub const INDEXED: &str = "Indexed";
    /// The rollout is delivering to its nodes (True while waves are in progress).
    pub const PROGRESSING: &str = "Progressing";
    /// Every targeted node installed the artifact.
    pub const COMPLETE: &str = "Complete";
    /// The rollout halted: its failure threshold was crossed or it cannot proceed.
    pub const FAILED: &str = "Failed";
    /// Another rollout targets the same install path on overlapping nodes.
    pub const CONFLICT: &str = "Conflict";
    /// The fleet read its whole origin budget (`spec.transfer.originBudgetPercent`) while nodes are
    /// still working: they fetch from peers only. True until the rollout finishes or the budget grows.
    pub const ORIGIN_BUDGET_SPENT: &str = "OriginBudgetSpent";
}

/// Machine-readable reasons attached to conditions.
pub mod reasons {
    /// The tag resolved to a digest.
    pub const DIGEST_PINNED: &str = "DigestPinned";
    /// The registry could not be reached or refused the request.
    pub const REGISTRY_UNAVAILABLE: &str = "RegistryUnavailable";
    /// The registry refused the credentials or the scope, or its TLS certificate is not trusted.
    pub const REGISTRY_ACCESS_DENIED: &str = "RegistryAccessDenied";
    /// The named TrustPolicy does not exist.
    pub const TRUST_POLICY_NOT_FOUND: &str = "TrustPolicyNotFound";
    /// The artifact carries no signature at all.
    pub const UNSIGNED: &str = "Unsigned";
    /// The artifact is signed, but not by a key the TrustPolicy trusts.
    pub const UNTRUSTED_SIGNATURE: &str = "UntrustedSignature";
    /// A trusted publisher signed this digest for another repository (`docker-reference`): the artifact
    /// was copied or tagged across repositories.
    pub const REPOSITORY_MISMATCH: &str = "RepositoryMismatch";
    /// The publisher's version claim is lower than the highest version the operator delivered to this
    /// repository and install path, and the rollout does not set `artifact.allowDowngrade`.
    pub const DOWNGRADE: &str = "Downgrade";
    /// The publisher's version claim equals the highest version delivered to this repository and
    /// install path, but under another digest (a version names one build), and the rollout does not
    /// set `artifact.allowDowngrade`.
    pub const VERSION_REUSED: &str = "VersionReused";
    /// The publisher signature makes no version claim and the TrustPolicy does not set
    /// `allowUnversioned`.
    pub const UNVERSIONED: &str = "Unversioned";
    /// The publisher's version claim is not a semantic version, or its signatures claim different ones.
    pub const INVALID_VERSION_CLAIM: &str = "InvalidVersionClaim";
    /// The operator could not record a new highest version in the TrustPolicy's status (for example
    /// another write came first); it tries again before it delivers anything.
    pub const LEDGER_WRITE_FAILED: &str = "LedgerWriteFailed";
    /// Event reason: a rollout with `artifact.allowDowngrade` delivers a version below (or equal to, under
    /// another digest) the highest delivered.
    pub const DOWNGRADE_ALLOWED: &str = "DowngradeAllowed";
    /// The publisher signature verified.
    pub const SIGNATURE_VERIFIED: &str = "SignatureVerified";
    /// The chunk index was built, pushed and signed.
    pub const INDEX_SIGNED: &str = "IndexSigned";
    /// A wave is being delivered.
    pub const WAVE_IN_PROGRESS: &str = "WaveInProgress";
    /// The rollout waits for the pause after a wave to elapse.
    pub const WAVE_PAUSE: &str = "WavePause";
    /// The user paused the rollout.
    pub const PAUSED_BY_USER: &str = "PausedByUser";
    /// More nodes failed than the failure threshold allows.
    pub const FAILURE_THRESHOLD_CROSSED: &str = "FailureThresholdCrossed";
    /// Every targeted node reports the artifact installed.
    pub const ALL_NODES_INSTALLED: &str = "AllNodesInstalled";
    /// The last wave met its success threshold, though some nodes did not install (yet).
    pub const SUCCESS_THRESHOLD_MET: &str = "SuccessThresholdMet";
    /// The selector matched no EdgeNode.
    pub const NO_TARGETS: &str = "NoTargets";
    /// An older rollout targets the same path on overlapping nodes and wins until it finishes.
    pub const OLDER_ROLLOUT_WINS: &str = "OlderRolloutWins";
    /// The spec is invalid in a way the schema cannot express.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The nodes' reported origin reads reached the rollout's origin budget.
    pub const BUDGET_SPENT: &str = "BudgetSpent";
}
