//! Pollen's trust chain (placeholder until the trust-chain work lands).
