//! The piece picker and peer choice: pure, deterministic (seeded RNG, caller-supplied time), no I/O.
//!
//! The engine tells the picker what it learns (peers, have-maps, haves, "fetching" hints, completions,
//! failures) and asks it what to request next, per peer ([`Picker::pick_for_peer`]) and from the origin
//! ([`Picker::pick_for_origin`]). Rules:
//! - **random first**: until a node holds `random_first` chunks it picks at random, so fresh nodes have
//!   something to trade at once;
//! - **rarest first**: then the chunk the fewest connected peers hold, ties broken at random;
//! - **endgame**: when nothing unrequested is left, in-flight chunks are requested from a second peer of
//!   the same site (never a second copy across sites, unless stalled); the first copy to arrive cancels
//!   the others ([`Picker::completed`] returns what to cancel);
//! - **pipelining**: each peer gets about its bandwidth-delay product in flight
//!   (`rate × rtt / chunk_size + 1`, clamped), measured from completions;
//! - **runs**: after the random phase, each chunk chosen by the rules above is extended with the chunks
//!   that follow it, while they are just as eligible (the peer has them, nobody requested them, the site
//!   rules allow them, no more common than the rarity cut-off of this pick), up to `run_bytes` and half
//!   the pipeline. The engine asks for a run with one request, so small chunks do not cost a stream each;
//! - **sites**: a chunk some same-site peer holds is never fetched from another site; a chunk only other
//!   sites hold is fetched across the WAN by one node of the site, its rendezvous-hash owner;
//! - **origin once**: a chunk goes to the origin only if no connected peer holds it, nobody announced
//!   fetching it, and this node is the rendezvous-hash owner of the chunk's block (`origin_run_bytes` of
//!   chunks) among the connected nodes that read the origin. Every node computes the same owner, so each
//!   chunk is read from the origin about once in total, and a node reads its blocks as runs, one range GET
//!   each. If nothing happens for `stall_after` (an owner vanished silently), ownership and hints are
//!   ignored;
//! - **origin readers**: the fleet elects `origin_concurrency` of the nodes that read the origin (the
//!   highest scores of a hash of the node name salted with the index id, so each rollout elects
//!   others); only they own blocks and read, until a stall. The elected readers share the
//!   `origin_concurrency` range GETs in flight (rounded up), so that however large the fleet, about
//!   that many flows cross the origin's uplink: every parallel flow there adds to the packets lost;
//! - **origin budget**: origin reads stop at a byte budget per rollout and node.
//!
//! [`UploadSlots`] bounds concurrent uploads, overall and per peer.
//!
//! Non-goals: tit-for-tat or choking (peers of one fleet cooperate), and timing (callers pass `now`).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::bitfield::Bitfield;

/// The engine's handle for a connected peer.
pub type PeerId = u32;

/// Where a chunk is being fetched from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// A peer.
    Peer(PeerId),
    /// The origin registry.
    Origin,
}

/// Tunables.
#[derive(Clone, Debug)]
pub struct PickerConfig {
    /// Chunks picked at random before rarest-first starts.
    pub random_first: u32,
    /// Fewest requests in flight per peer.
    pub min_pipeline: u32,
    /// Most requests in flight per peer.
    pub max_pipeline: u32,
    /// Bytes kept in flight per peer at least, whatever the measured bandwidth-delay product (small
    /// chunks on fast links would otherwise leave the pipe idle between requests).
    pub min_inflight_bytes: u64,
    /// Longest run of consecutive chunks handed out for one request, in bytes (at most one chunk when
    /// smaller than a chunk; `0` turns runs off).
    pub run_bytes: u64,
    /// Most sources for one chunk in endgame.
    pub endgame_sources: usize,
    /// Origin requests the fleet keeps in flight at once, and origin readers it elects. Of the nodes
    /// that read from the origin (this node and the connected peers that do), the fleet elects this
    /// many; each elected reader keeps `ceil(origin_concurrency / elected)` requests in flight. Fewer
    /// parallel flows through the origin's uplink lose fewer packets, and every lost packet is sent
    /// (and paid for) again; too few leave the uplink idle.
    pub origin_concurrency: u32,
    /// Origin reads come in runs of consecutive chunks of up to this many bytes, one range GET each
    /// (one chunk when a chunk is larger). Origin ownership goes by blocks of this size, so that a whole
    /// run belongs to one node: fewer, larger requests cost the origin fewer response headers.
    pub origin_run_bytes: u64,
    /// Origin byte budget for this rollout on this node (`None`: unlimited).
    pub origin_budget: Option<u64>,
    /// After this long without progress anywhere, ownership rules and hints are ignored.
    pub stall_after: Duration,
}

impl Default for PickerConfig {
    fn default() -> Self {
        PickerConfig {
            random_first: 4,
            min_pipeline: 2,
            max_pipeline: 32,
            min_inflight_bytes: 1024 * 1024,
            run_bytes: 1024 * 1024,
            endgame_sources: 2,
            origin_concurrency: 8,
            origin_run_bytes: 256 * 1024,
            origin_budget: None,
            stall_after: Duration::from_secs(10),
        }
    }
}

#[derive(Debug)]
struct PeerState {
    name: String,
    same_site: bool,
    have: Bitfield,
    fetching: Bitfield,
    inflight: u32,
    rate: f64,
    rtt: Duration,
    /// Whether it reads from the origin (until it says otherwise, it does).
    reads_origin: bool,
    /// Its score in the origin readers' election.
    election: u64,
}

/// Piece picker state for one index on one node.
#[derive(Debug)]
pub struct Picker {
    cfg: PickerConfig,
    name: String,
    chunk_size: u32,
    payload_size: u64,
    have: Bitfield,
    availability: Vec<u16>,
    site_availability: Vec<u16>,
    inflight: HashMap<u32, Vec<Source>>,
    /// The keys of `inflight` as a bitfield, for cheap membership tests in the pick loops.
    requested: Bitfield,
    origin_inflight: u32,
    origin_bytes: u64,
    peers: BTreeMap<PeerId, PeerState>,
    rng: StdRng,
    last_progress: Duration,
    /// Expected members and their election scores.
    expected: Vec<(String, u64)>,
    expect_until: Duration,
    /// Salt of the origin readers' election (the index id), so that each rollout elects other nodes.
    election_key: Vec<u8>,
    /// This node's score in that election.
    election: u64,
}

/// The last origin reader elected (its election score and name), when not every reader is.
type ElectionCut = Option<(u64, String)>;

/// 64-bit rendezvous (highest random weight) score of `node` for `chunk`.
fn hrw(node: &str, chunk: u32) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(node.as_bytes());
    h.update(&chunk.to_be_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_be_bytes(b)
}

impl Picker {
    /// A picker for a payload of `payload_size` bytes in chunks of `chunk_size`, on node `name`, holding
    /// `have` already (e.g. resumed from the store).
    pub fn new(
        name: &str,
        chunk_size: u32,
        payload_size: u64,
        have: Bitfield,
        cfg: PickerConfig,
        seed: u64,
    ) -> Self {
        let n = have.len() as usize;
        Picker {
            cfg,
            name: name.to_owned(),
            chunk_size,
            payload_size,
            have,
            availability: vec![0; n],
            site_availability: vec![0; n],
            inflight: HashMap::new(),
            requested: Bitfield::new(n as u32),
            origin_inflight: 0,
            origin_bytes: 0,
            peers: BTreeMap::new(),
            rng: StdRng::seed_from_u64(seed),
            last_progress: Duration::ZERO,
            expected: Vec::new(),
            expect_until: Duration::ZERO,
            election_key: Vec::new(),
            election: 0,
        }
        .with_election_key(&[])
    }

    fn with_election_key(mut self, key: &[u8]) -> Self {
        self.set_election_key(key);
        self
    }

    /// Salts the origin readers' election (see [`Picker::pick_for_origin`]) with `key`, the index id:
    /// every node of a rollout elects the same readers, and another rollout elects others, so that the
    /// origin traffic does not always land on the same nodes.
    pub fn set_election_key(&mut self, key: &[u8]) {
        self.election_key = key.to_vec();
        self.election = self.election_score(&self.name);
        let scores: Vec<(PeerId, u64)> = self
            .peers
            .iter()
            .map(|(id, p)| (*id, self.election_score(&p.name)))
            .collect();
        for (id, score) in scores {
            if let Some(p) = self.peers.get_mut(&id) {
                p.election = score;
            }
        }
        let expected = std::mem::take(&mut self.expected);
        self.expected = expected
            .into_iter()
            .map(|(n, _)| {
                let score = self.election_score(&n);
                (n, score)
            })
            .collect();
    }

    /// The election score of `name`: computed once per node (peers and this node keep theirs).
    fn election_score(&self, name: &str) -> u64 {
        let mut h = blake3::Hasher::new();
        h.update(b"pollen/origin-election\n");
        h.update(&self.election_key);
        h.update(name.as_bytes());
        let mut b = [0u8; 8];
        b.copy_from_slice(&h.finalize().as_bytes()[..8]);
        u64::from_be_bytes(b)
    }

    /// Expected members not connected yet (name, election score), while `now` is before the
    /// expectation deadline.
    fn expected_absent(&self, now: Duration) -> impl Iterator<Item = (&str, u64)> {
        self.expected
            .iter()
            .filter(move |(n, _)| now < self.expect_until && !self.peers.values().any(|p| &p.name == n))
            .map(|(n, score)| (n.as_str(), *score))
    }

    /// The fleet elects `origin_concurrency` of the origin readers this node knows of (itself, the
    /// connected peers that read from the origin, expected members not connected yet): those with the
    /// highest election scores. `None` if there are no more readers than that, so every one is elected.
    fn election(&self, now: Duration) -> ElectionCut {
        let seats = self.cfg.origin_concurrency.max(1) as usize;
        let mut scored: Vec<(u64, &str)> = vec![(self.election, self.name.as_str())];
        scored.extend(
            self.peers
                .values()
                .filter(|p| p.reads_origin)
                .map(|p| (p.election, p.name.as_str())),
        );
        scored.extend(self.expected_absent(now).map(|(n, score)| (score, n)));
        if scored.len() <= seats {
            return None;
        }
        // Highest score first, ties to the smaller name.
        scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
        let (score, name) = scored[seats - 1];
        Some((score, name.to_owned()))
    }

    /// Whether the node `name` with election score `score` is elected under `cut`.
    fn elected(score: u64, name: &str, cut: &ElectionCut) -> bool {
        match cut {
            None => true,
            Some((last_score, last)) => {
                score > *last_score || (score == *last_score && name <= last.as_str())
            }
        }
    }

    /// Number of chunks.
    pub fn chunk_count(&self) -> u32 {
        self.have.len()
    }

    /// Length in bytes of chunk `c`.
    pub fn chunk_len(&self, c: u32) -> u64 {
        let start = u64::from(c) * u64::from(self.chunk_size);
        (start + u64::from(self.chunk_size)).min(self.payload_size) - start
    }

    /// What this node holds.
    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    /// Whether every chunk is held.
    pub fn is_complete(&self) -> bool {
        self.have.is_complete()
    }

    /// Bytes read from the origin so far.
    pub fn origin_bytes(&self) -> u64 {
        self.origin_bytes
    }

    /// Chunks in flight from the origin (announced to new peers as `Fetching`).
    pub fn origin_inflight(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .inflight
            .iter()
            .filter(|(_, s)| s.contains(&Source::Origin))
            .map(|(c, _)| *c)
            .collect();
        v.sort_unstable();
        v
    }

    /// Whether a connected peer is in this node's site (`None`: not connected).
    pub fn same_site(&self, id: PeerId) -> Option<bool> {
        self.peers.get(&id).map(|p| p.same_site)
    }

    /// The connected peers of this node's site.
    pub fn same_site_peers(&self) -> std::collections::HashSet<PeerId> {
        self.peers
            .iter()
            .filter(|(_, p)| p.same_site)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Requests in flight to a peer.
    pub fn peer_inflight(&self, id: PeerId) -> u32 {
        self.peers.get(&id).map_or(0, |p| p.inflight)
    }

    /// What the picker knows about the chunks this node still lacks, for a log line when a node stalls:
    /// each peer's pipeline and how many chunks it holds, then, per missing chunk (up to `limit`), whether
    /// it is requested, from which sources, and which peers hold it.
    pub fn describe_stall(&self, limit: usize) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        for (id, p) in &self.peers {
            let _ = write!(
                s,
                "peer {} inflight {}/{} holds {}; ",
                p.name,
                p.inflight,
                self.pipeline_target(*id),
                p.have.count()
            );
        }
        for c in self.have.iter_zeros().take(limit) {
            let holders: Vec<&str> = self
                .peers
                .values()
                .filter(|p| p.have.get(c))
                .map(|p| p.name.as_str())
                .collect();
            let _ = write!(
                s,
                "chunk {c}: requested {} from {:?}, held by {holders:?}; ",
                self.requested.get(c),
                self.inflight.get(&c).map(Vec::as_slice).unwrap_or_default()
            );
        }
        s
    }

    /// Names of fleet members expected to join (static peers with known names). Until `until`, each one
    /// that is not connected yet counts in the origin ownership as a node holding nothing, so that nodes
    /// whose connections are still forming compute the same owners.
    pub fn expect_members(&mut self, names: &[String], until: Duration) {
        self.expected = names
            .iter()
            .filter(|n| **n != self.name)
            .map(|n| (n.clone(), self.election_score(n)))
            .collect();
        self.expect_until = until;
    }

    /// Registers a connected peer with its node name and whether it is in this node's site.
    pub fn add_peer(&mut self, id: PeerId, name: &str, same_site: bool) {
        let n = self.have.len();
        self.remove_peer(id);
        self.peers.insert(
            id,
            PeerState {
                name: name.to_owned(),
                same_site,
                have: Bitfield::new(n),
                fetching: Bitfield::new(n),
                inflight: 0,
                rate: 0.0,
                rtt: Duration::from_millis(10),
                reads_origin: true,
                election: self.election_score(name),
            },
        );
    }

    /// A peer said whether it reads from the origin. One that does not is left out of the origin
    /// ownership, so that its share of the chunks is read by the others instead of waited for.
    pub fn peer_reads_origin(&mut self, id: PeerId, reads: bool) {
        if let Some(p) = self.peers.get_mut(&id) {
            p.reads_origin = reads;
        }
    }

    /// Forgets a peer (disconnected or banned); its in-flight chunks become free. Returns them.
    pub fn remove_peer(&mut self, id: PeerId) -> Vec<u32> {
        let Some(p) = self.peers.remove(&id) else {
            return Vec::new();
        };
        for c in p.have.iter_ones() {
            self.availability[c as usize] -= 1;
            if p.same_site {
                self.site_availability[c as usize] -= 1;
            }
        }
        let mut freed = Vec::new();
        self.inflight.retain(|&c, srcs| {
            srcs.retain(|s| *s != Source::Peer(id));
            if srcs.is_empty() {
                freed.push(c);
                false
            } else {
                true
            }
        });
        for &c in &freed {
            self.requested.clear(c);
        }
        freed.sort_unstable();
        freed
    }

    /// A peer's full have-map (replaces what was known).
    pub fn peer_have_map(&mut self, id: PeerId, bits: &Bitfield, now: Duration) {
        if bits.len() != self.have.len() {
            return;
        }
        let Some(p) = self.peers.get_mut(&id) else { return };
        for c in p.have.iter_ones() {
            self.availability[c as usize] -= 1;
            if p.same_site {
                self.site_availability[c as usize] -= 1;
            }
        }
        p.have = bits.clone();
        for c in p.have.iter_ones() {
            self.availability[c as usize] += 1;
            if p.same_site {
                self.site_availability[c as usize] += 1;
            }
            p.fetching.clear(c);
        }
        self.last_progress = now;
    }

    /// A peer announced a newly verified chunk.
    pub fn peer_have(&mut self, id: PeerId, c: u32, now: Duration) {
        let Some(p) = self.peers.get_mut(&id) else { return };
        if p.have.set(c) {
            self.availability[c as usize] += 1;
            if p.same_site {
                self.site_availability[c as usize] += 1;
            }
            p.fetching.clear(c);
            self.last_progress = now;
        }
    }

    /// A peer announced it is fetching `c` from outside (origin or another site).
    pub fn peer_fetching(&mut self, id: PeerId, c: u32) {
        if let Some(p) = self.peers.get_mut(&id) {
            p.fetching.set(c);
        }
    }

    /// Updates a peer's smoothed round-trip time (from the QUIC connection).
    pub fn set_rtt(&mut self, id: PeerId, rtt: Duration) {
        if let Some(p) = self.peers.get_mut(&id) {
            p.rtt = rtt;
        }
    }

    /// How many requests a peer should have in flight: its bandwidth-delay product (at least
    /// `min_inflight_bytes`) in chunks, plus one, clamped.
    pub fn pipeline_target(&self, id: PeerId) -> u32 {
        let Some(p) = self.peers.get(&id) else { return 0 };
        let bdp = (p.rate * p.rtt.as_secs_f64()).max(self.cfg.min_inflight_bytes as f64);
        let t = (bdp / f64::from(self.chunk_size.max(1))).ceil() as u32 + 1;
        t.clamp(self.cfg.min_pipeline, self.cfg.max_pipeline)
    }

    fn stalled(&self, now: Duration) -> bool {
        now.saturating_sub(self.last_progress) >= self.cfg.stall_after
    }

    fn someone_fetching(&self, c: u32, same_site_only: bool) -> bool {
        self.peers
            .values()
            .any(|p| p.fetching.get(c) && (!same_site_only || p.same_site))
    }

    /// Whether this node is the rendezvous owner of `c` among itself and the connected peers that lack
    /// it (all of them, or only same-site ones).
    fn owns(&self, c: u32, same_site_only: bool) -> bool {
        self.owns_among(c, c, |p| !same_site_only || p.same_site)
    }

    /// Whether this node is the rendezvous owner of `c` (scored by `key`: the chunk, or its origin
    /// block) among itself and the connected peers that lack it and pass `among`.
    fn owns_among(&self, c: u32, key: u32, among: impl Fn(&PeerState) -> bool) -> bool {
        let mine = hrw(&self.name, key);
        let beats = |name: &str| {
            let s = hrw(name, key);
            s > mine || (s == mine && name < self.name.as_str())
        };
        !self
            .peers
            .values()
            .filter(|p| !p.have.get(c) && among(p))
            .any(|p| beats(&p.name))
    }

    /// Origin ownership: [`Picker::owns`] over the elected origin readers (`cut`) among the connected
    /// peers, plus expected members not yet connected while `now` is before the expectation deadline.
    fn owns_origin(&self, c: u32, now: Duration, cut: &ElectionCut) -> bool {
        let key = c / self.origin_block();
        if !self.owns_among(c, key, |p| {
            p.reads_origin && Self::elected(p.election, &p.name, cut)
        }) {
            return false;
        }
        if now >= self.expect_until {
            return true;
        }
        let mine = hrw(&self.name, key);
        !self
            .expected_absent(now)
            .filter(|(n, score)| Self::elected(*score, n, cut))
            .any(|(n, _)| {
                let s = hrw(n, key);
                s > mine || (s == mine && n < self.name.as_str())
            })
    }

    fn wanted(&self, c: u32) -> bool {
        !self.have.get(c) && !self.requested.get(c)
    }

    /// Whether a chunk held by peer `p` may be fetched from it under the site rules.
    fn site_allows(&self, p: &PeerState, c: u32, stalled: bool) -> bool {
        if p.same_site || stalled {
            return true;
        }
        self.site_availability[c as usize] == 0 && !self.someone_fetching(c, true) && self.owns(c, true)
    }

    /// Chunks to request from peer `id` now, to bring its pipeline to target. They are recorded as in
    /// flight from that peer.
    pub fn pick_for_peer(&mut self, id: PeerId, now: Duration) -> Vec<u32> {
        let target = self.pipeline_target(id);
        let Some(p) = self.peers.get(&id) else {
            return Vec::new();
        };
        let room = target.saturating_sub(p.inflight) as usize;
        // Refill in batches of a quarter of the target: each pick scans the peer's have-map, so picking
        // after every single completion would cost O(chunks) per chunk.
        if room == 0 || room < (target / 4) as usize || self.is_complete() {
            return Vec::new();
        }
        let stalled = self.stalled(now);
        let random_phase = self.have.count() < self.cfg.random_first;
        // (rarity, chunk)
        let mut cands: Vec<(u16, u32)> = Vec::new();
        for c in p.have.iter_ones_not_in(&self.have) {
            if !self.requested.get(c) && self.site_allows(p, c, stalled) {
                let rarity = if random_phase {
                    0
                } else {
                    self.availability[c as usize]
                };
                cands.push((rarity, c));
            }
        }
        let mut picked: Vec<u32> = Vec::new();
        if !cands.is_empty() {
            // The rarity of the least rare chunk that may be picked now.
            let mut cut = u16::MAX;
            if cands.len() > room {
                // The `room` rarest, ties at the cut-off rarity broken at random: partition by rarity
                // (linear), then draw only as many random numbers as there are places left.
                cut = cands.select_nth_unstable_by_key(room, |t| t.0).1.0;
                let mut sure: Vec<(u16, u32)> = Vec::new();
                let mut ties: Vec<u32> = Vec::new();
                for &(r, c) in &cands {
                    if r < cut {
                        sure.push((r, c));
                    } else if r == cut {
                        ties.push(c);
                    }
                }
                let need = room - sure.len();
                for i in 0..need {
                    let j = self.rng.random_range(i..ties.len());
                    ties.swap(i, j);
                }
                sure.sort_unstable();
                picked.extend(sure.iter().map(|t| t.1));
                picked.extend(&ties[..need]);
            } else {
                cands.sort_unstable();
                picked.extend(cands.iter().map(|t| t.1));
            }
            let max_run = self.max_run(target);
            if !random_phase && max_run > 1 {
                picked = self.extend_into_runs(p, &picked, room, max_run, cut, stalled);
            }
        } else if self.endgame() {
            // Endgame: duplicate in-flight chunks this peer holds, fewest sources first.
            let mut dup: Vec<(usize, u32, u32)> = self
                .inflight
                .iter()
                .filter(|(c, srcs)| {
                    p.have.get(**c)
                        && srcs.len() < self.cfg.endgame_sources
                        && !srcs.contains(&Source::Peer(id))
                        // A second copy across the WAN would cost the site's link a chunk twice.
                        && (p.same_site || stalled)
                })
                .map(|(c, srcs)| (srcs.len(), 0, *c))
                .collect();
            for d in &mut dup {
                d.1 = self.rng.random();
            }
            dup.sort_unstable();
            picked.extend(dup.iter().take(room).map(|t| t.2));
        }
        for &c in &picked {
            self.inflight.entry(c).or_default().push(Source::Peer(id));
            self.requested.set(c);
        }
        if let Some(p) = self.peers.get_mut(&id) {
            p.inflight += picked.len() as u32;
        }
        picked
    }

    /// Longest run for a peer whose pipeline target is `target`: `run_bytes` worth of chunks, and at most
    /// half the target, so that a peer always has a second request in flight when one run ends.
    fn max_run(&self, target: u32) -> usize {
        let by_bytes = self.cfg.run_bytes / u64::from(self.chunk_size.max(1));
        by_bytes.min(u64::from(target / 2)).max(1) as usize
    }

    /// Turns picked chunks (best first) into runs: each one, unless already taken, followed by the next
    /// chunks while they are as eligible as a pick of this round (`cut`: the least rare rarity that made
    /// it). At most `room` chunks in all, at most `max_run` per run; runs are consecutive and ascending in
    /// the result.
    fn extend_into_runs(
        &self,
        p: &PeerState,
        heads: &[u32],
        room: usize,
        max_run: usize,
        cut: u16,
        stalled: bool,
    ) -> Vec<u32> {
        let n = self.have.len();
        let mut out: Vec<u32> = Vec::with_capacity(room);
        for &h in heads {
            if out.len() >= room {
                break;
            }
            if out.contains(&h) {
                continue;
            }
            out.push(h);
            let mut next = h + 1;
            let mut len = 1;
            while len < max_run
                && out.len() < room
                && next < n
                && p.have.get(next)
                && self.wanted(next)
                && self.availability[next as usize] <= cut
                && !out.contains(&next)
                && self.site_allows(p, next, stalled)
            {
                out.push(next);
                next += 1;
                len += 1;
            }
        }
        out
    }

    /// Endgame: every missing chunk is already in flight.
    fn endgame(&self) -> bool {
        (self.have.len() - self.have.count()) as usize == self.inflight.len()
    }

    /// Chunks to fetch from the origin now, under the origin rule and budget: up to this node's share of
    /// requests, each a block's worth of chunks, whole owned blocks in random order and each block's
    /// chunks ascending (the engine reads consecutive picks with one range GET). They are recorded as in
    /// flight from the origin; the engine announces them to peers with a `Fetching` hint.
    pub fn pick_for_origin(&mut self, now: Duration) -> Vec<u32> {
        let block = self.origin_block();
        let room = self
            .origin_share()
            .saturating_mul(block)
            .saturating_sub(self.origin_inflight);
        if room == 0 || self.is_complete() {
            return Vec::new();
        }
        let stalled = self.stalled(now);
        let cut = self.election(now);
        if !stalled && !Self::elected(self.election, &self.name, &cut) {
            return Vec::new();
        }
        let mut budget_left = self
            .cfg
            .origin_budget
            .map(|b| b.saturating_sub(self.origin_bytes));
        // Reserve budget for what is already in flight from the origin.
        for (c, srcs) in &self.inflight {
            if srcs.contains(&Source::Origin)
                && let Some(b) = budget_left.as_mut()
            {
                *b = b.saturating_sub(self.chunk_len(*c));
            }
        }
        // (the block's random rank, chunk): whole blocks in random order, each block's chunks in order,
        // so that the engine reads each block's picks as one run.
        let mut cands: Vec<(u32, u32)> = Vec::new();
        let (mut cur, mut rank) = (u32::MAX, 0u32);
        for c in self.have.iter_zeros() {
            if !self.wanted(c) || self.availability[c as usize] > 0 {
                continue;
            }
            if !stalled && (self.someone_fetching(c, false) || !self.owns_origin(c, now, &cut)) {
                continue;
            }
            if c / block != cur {
                cur = c / block;
                rank = self.rng.random();
            }
            cands.push((rank, c));
        }
        cands.sort_unstable();
        let mut picked = Vec::new();
        for (_, c) in cands {
            if picked.len() as u32 >= room {
                break;
            }
            let len = self.chunk_len(c);
            if let Some(b) = budget_left.as_mut() {
                if *b < len {
                    break;
                }
                *b -= len;
            }
            picked.push(c);
        }
        for &c in &picked {
            self.inflight.entry(c).or_default().push(Source::Origin);
            self.requested.set(c);
        }
        self.origin_inflight += picked.len() as u32;
        picked
    }

    /// Chunks per origin block (and longest origin run): `origin_run_bytes` of chunks, at least one.
    fn origin_block(&self) -> u32 {
        (self.cfg.origin_run_bytes / u64::from(self.chunk_size.max(1))).clamp(1, 1 << 16) as u32
    }

    /// An elected reader's share of the fleet's origin requests: `origin_concurrency` divided among the
    /// elected readers (this node and the connected peers that read from the origin, at most
    /// `origin_concurrency` of them), rounded up; one each once there are that many readers.
    pub fn origin_share(&self) -> u32 {
        let seats = self.cfg.origin_concurrency.max(1);
        let readers = 1 + self.peers.values().filter(|p| p.reads_origin).count() as u32;
        seats.div_ceil(readers.min(seats))
    }

    fn drop_source(&mut self, c: u32, src: Source) {
        if let Some(srcs) = self.inflight.get_mut(&c)
            && let Some(pos) = srcs.iter().position(|s| *s == src)
        {
            srcs.swap_remove(pos);
            match src {
                Source::Peer(id) => {
                    if let Some(p) = self.peers.get_mut(&id) {
                        p.inflight = p.inflight.saturating_sub(1);
                    }
                }
                Source::Origin => self.origin_inflight = self.origin_inflight.saturating_sub(1),
            }
            if srcs.is_empty() {
                self.inflight.remove(&c);
                self.requested.clear(c);
            }
        }
    }

    /// Chunk `c` arrived from `src` and verified, `elapsed` after it was requested. Returns the other
    /// peers still fetching it (endgame), whose requests the engine should cancel.
    pub fn completed(&mut self, c: u32, src: Source, elapsed: Duration, now: Duration) -> Vec<PeerId> {
        let len = self.chunk_len(c);
        if let Source::Peer(id) = src
            && let Some(p) = self.peers.get_mut(&id)
        {
            // With k requests in flight each taking `elapsed`, the peer delivers about k chunks per elapsed.
            let k = f64::from(p.inflight.max(1));
            let sample = k * len as f64 / elapsed.as_secs_f64().max(1e-6);
            p.rate = if p.rate == 0.0 {
                sample
            } else {
                0.75 * p.rate + 0.25 * sample
            };
        }
        if src == Source::Origin {
            self.origin_bytes += len;
        }
        self.drop_source(c, src);
        let others: Vec<Source> = self.inflight.get(&c).cloned().unwrap_or_default();
        for s in &others {
            self.drop_source(c, *s);
        }
        self.have.set(c);
        self.last_progress = now;
        others
            .into_iter()
            .filter_map(|s| match s {
                Source::Peer(id) => Some(id),
                Source::Origin => None,
            })
            .collect()
    }

    /// A request for `c` from `src` failed (error, cancel, or verification failure); the chunk is free
    /// to be picked again.
    pub fn failed(&mut self, c: u32, src: Source) {
        self.drop_source(c, src);
    }

    /// Accounts origin bytes that were read but did not yield a chunk stored by that read (a range GET
    /// cut off or failing verification, or chunks another source stored first): they count against the
    /// origin budget like any other byte read.
    pub fn origin_read_unused(&mut self, bytes: u64) {
        self.origin_bytes += bytes;
    }

    /// Caps origin reads at `bytes` in total from now on (`None`: no cap), replacing the configured
    /// budget: the fleet's allowance for this node, which the operator raises as the rollout goes.
    pub fn set_origin_budget(&mut self, bytes: Option<u64>) {
        self.cfg.origin_budget = bytes;
    }

    /// Whether origin reads are held back by the budget: a chunk is wanted from the origin, but the
    /// budget left cannot pay for it.
    pub fn origin_budget_exhausted(&self) -> bool {
        let Some(b) = self.cfg.origin_budget else {
            return false;
        };
        let inflight: u64 = self
            .inflight
            .iter()
            .filter(|(_, s)| s.contains(&Source::Origin))
            .map(|(c, _)| self.chunk_len(*c))
            .sum();
        let left = b.saturating_sub(self.origin_bytes + inflight);
        !self.is_complete() && left < u64::from(self.chunk_size).min(self.payload_size)
    }

    pub fn charge_origin(&mut self, bytes: u64) {
        self.origin_bytes += bytes;
    }
}

/// Upload slots: at most `total` concurrent chunk uploads, at most `per_peer` to any one peer.
#[derive(Debug)]
pub struct UploadSlots {
    total: u32,
    per_peer: u32,
    used: u32,
    by_peer: HashMap<PeerId, u32>,
}

impl UploadSlots {
    /// New slot accounting.
    pub fn new(total: u32, per_peer: u32) -> Self {
        UploadSlots {
            total,
            per_peer,
            used: 0,
            by_peer: HashMap::new(),
        }
    }

    /// Takes a slot for `peer`, or `false` if none is free.
    pub fn try_acquire(&mut self, peer: PeerId) -> bool {
        let mine = self.by_peer.entry(peer).or_insert(0);
        if self.used >= self.total || *mine >= self.per_peer {
            return false;
        }
        *mine += 1;
        self.used += 1;
        true
    }

    /// Returns a slot taken for `peer`.
    pub fn release(&mut self, peer: PeerId) {
        if let Some(m) = self.by_peer.get_mut(&peer)
            && *m > 0
        {
            *m -= 1;
            self.used -= 1;
            if *m == 0 {
                self.by_peer.remove(&peer);
            }
        }
    }

    /// Slots in use.
    pub fn used(&self) -> u32 {
        self.used
    }
}

#[cfg(test)]
mod tests;
