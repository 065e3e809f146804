//! Lower bounds on the time for every node of a swarm to hold a file of `F` bits (fluid model).
//!
//! - Kumar–Ross (no origin budget): `max(F/u_s, F/d_min, N·F/(u_s + Σu_i))`.
//! - Origin-once (the origin sends each byte once, so the peers upload the other `N−1` copies):
//!   `max(F/u_s, F/d_min, (N−1)·F/Σu_i)`.
//!
//! Rates are in bits per second, the result in seconds. Pure.
//! Non-goals: WAN hops between sites, protocol overheads (headers are about 4–5 % on the wire).

/// The inputs of both bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct SwarmLinks {
    /// File size in bits.
    pub file_bits: f64,
    /// Origin upload rate, bit/s.
    pub origin_up: f64,
    /// Each node's upload rate, bit/s.
    pub node_up: Vec<f64>,
    /// Each node's download rate, bit/s.
    pub node_down: Vec<f64>,
}

impl SwarmLinks {
    /// `n` identical nodes.
    pub fn uniform(file_bytes: u64, origin_up: f64, up: f64, down: f64, n: usize) -> SwarmLinks {
        SwarmLinks {
            file_bits: file_bytes as f64 * 8.0,
            origin_up,
            node_up: vec![up; n],
            node_down: vec![down; n],
        }
    }

    fn common(&self) -> f64 {
        let d_min = self.node_down.iter().copied().fold(f64::INFINITY, f64::min);
        (self.file_bits / self.origin_up).max(self.file_bits / d_min)
    }

    /// The Kumar–Ross bound, seconds.
    pub fn kumar_ross(&self) -> f64 {
        let n = self.node_up.len() as f64;
        let sum_up: f64 = self.node_up.iter().sum();
        self.common().max(n * self.file_bits / (self.origin_up + sum_up))
    }

    /// The origin-once bound, seconds.
    pub fn origin_once(&self) -> f64 {
        let n = self.node_up.len() as f64;
        let sum_up: f64 = self.node_up.iter().sum();
        self.common().max((n - 1.0) * self.file_bits / sum_up)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.max(1.0)
    }

    #[test]
    fn standard_n8_is_upload_limited() {
        // 64 MiB, origin 20 Mbit/s, nodes 10 up / 50 down.
        let l = SwarmLinks::uniform(64 << 20, 20e6, 10e6, 50e6, 8);
        let f = (64u64 << 20) as f64 * 8.0;
        assert!(close(l.kumar_ross(), 8.0 * f / (20e6 + 80e6)));
        assert!(close(l.origin_once(), 7.0 * f / 80e6));
        assert!(l.origin_once() > l.kumar_ross());
    }

    #[test]
    fn slow_origin_dominates() {
        let l = SwarmLinks::uniform(1_000_000, 1e6, 100e6, 100e6, 4);
        assert!(close(l.kumar_ross(), 8.0));
        assert!(close(l.origin_once(), 8.0));
    }

    #[test]
    fn slowest_downlink_dominates() {
        let mut l = SwarmLinks::uniform(1_000_000, 100e6, 100e6, 100e6, 3);
        l.node_down[1] = 2e6;
        assert!(close(l.kumar_ross(), 4.0));
        assert!(close(l.origin_once(), 4.0));
    }

    #[test]
    fn single_node_needs_only_the_origin() {
        let l = SwarmLinks::uniform(1_000_000, 8e6, 1e6, 100e6, 1);
        assert!(close(l.kumar_ross(), 1.0));
        assert!(close(l.origin_once(), 1.0));
    }
}
