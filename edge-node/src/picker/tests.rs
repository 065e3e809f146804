//! Picker unit tests and a small deterministic in-memory swarm simulation.

use super::*;

const MS: Duration = Duration::from_millis(1);

fn cfg() -> PickerConfig {
    PickerConfig {
        // Enough that every reader's share is unlimited in these tests.
        origin_concurrency: 1 << 20,
        origin_run_bytes: 0,
        min_inflight_bytes: 0,
        run_bytes: 0,
        ..PickerConfig::default()
    }
}

fn bits(n: u32, ones: &[u32]) -> Bitfield {
    let mut b = Bitfield::new(n);
    for &c in ones {
        b.set(c);
    }
    b
}

#[test]
fn random_first_picks_only_what_the_peer_has_and_depends_on_seed() {
    let mut firsts = std::collections::HashSet::new();
    for seed in 0..20 {
        let mut p = Picker::new("me", 1024, 64 * 1024, Bitfield::new(64), cfg(), seed);
        p.add_peer(1, "a", true);
        p.peer_have_map(1, &bits(64, &(0..32).collect::<Vec<_>>()), MS);
        let picks = p.pick_for_peer(1, MS);
        assert_eq!(picks.len(), 2, "min pipeline");
        assert!(picks.iter().all(|&c| c < 32));
        firsts.insert(picks[0]);
    }
    assert!(
        firsts.len() > 5,
        "random first picks vary with the seed: {firsts:?}"
    );
}

#[test]
fn same_seed_same_picks() {
    let run = || {
        let mut p = Picker::new("me", 1024, 64 * 1024, Bitfield::new(64), cfg(), 7);
        p.add_peer(1, "a", true);
        p.peer_have_map(1, &Bitfield::full(64), MS);
        p.pick_for_peer(1, MS)
    };
    assert_eq!(run(), run());
}

#[test]
fn rarest_first_after_the_random_phase() {
    let n = 16;
    // Already holds 4 chunks, so the random phase is over.
    let mut p = Picker::new("me", 1024, 16 * 1024, bits(n, &[12, 13, 14, 15]), cfg(), 1);
    p.add_peer(1, "a", true);
    p.add_peer(2, "b", true);
    p.add_peer(3, "c", true);
    p.peer_have_map(1, &bits(n, &[0, 1, 2]), MS);
    p.peer_have_map(2, &bits(n, &[1, 2]), MS);
    p.peer_have_map(3, &bits(n, &[2]), MS);
    // From peer a: chunk 0 (held by 1 peer) before 1 (2 peers) before 2 (3 peers).
    assert_eq!(p.pick_for_peer(1, MS), vec![0, 1]);
    // From peer c: only chunk 2 is left that c has and nobody is fetching.
    assert_eq!(p.pick_for_peer(3, MS), vec![2]);
}

#[test]
fn endgame_duplicates_and_completion_cancels_the_other() {
    let n = 4;
    let mut p = Picker::new("me", 1024, 4 * 1024, bits(n, &[0, 1]), cfg(), 3);
    p.add_peer(1, "a", true);
    p.add_peer(2, "b", true);
    p.peer_have_map(1, &bits(n, &[2, 3]), MS);
    p.peer_have_map(2, &bits(n, &[2, 3]), MS);
    let mut from_a = p.pick_for_peer(1, MS);
    from_a.sort();
    assert_eq!(from_a, vec![2, 3]);
    // Nothing unrequested is left: b gets the same chunks as endgame duplicates.
    let mut from_b = p.pick_for_peer(2, MS);
    from_b.sort();
    assert_eq!(from_b, vec![2, 3]);
    // Chunk 2 arrives from a: b's copy must be cancelled.
    assert_eq!(p.completed(2, Source::Peer(1), 10 * MS, 20 * MS), vec![2]);
    assert_eq!(p.peer_inflight(2), 1);
    assert_eq!(p.peer_inflight(1), 1);
    assert_eq!(p.completed(3, Source::Peer(2), 10 * MS, 20 * MS), vec![1]);
    assert!(p.is_complete());
    assert_eq!(p.peer_inflight(1), 0);
}

#[test]
fn pipeline_follows_the_bandwidth_delay_product() {
    let n = 1000;
    let mut p = Picker::new("me", 64 * 1024, 1000 * 64 * 1024, Bitfield::new(n), cfg(), 1);
    p.add_peer(1, "a", true);
    p.peer_have_map(1, &Bitfield::full(n), MS);
    assert_eq!(p.pipeline_target(1), 2, "no measurement yet: the minimum");
    p.set_rtt(1, Duration::from_millis(100));
    // One chunk of 64 KiB in 6.4 ms with one in flight: 10 MB/s. BDP = 1 MB = ~16 chunks.
    let picks = p.pick_for_peer(1, MS);
    let c = picks[0];
    for &other in &picks[1..] {
        p.failed(other, Source::Peer(1));
    }
    assert_eq!(p.peer_inflight(1), 1);
    p.completed(c, Source::Peer(1), Duration::from_micros(6554), 2 * MS);
    let t = p.pipeline_target(1);
    assert!((16..=18).contains(&t), "target {t}");
    // A slow peer stays at the minimum.
    p.add_peer(2, "b", true);
    p.set_rtt(2, Duration::from_millis(1));
    assert_eq!(p.pipeline_target(2), 2);
    // The floor of bytes in flight holds for small chunks.
    let floor = PickerConfig {
        min_inflight_bytes: 1024 * 1024,
        ..cfg()
    };
    let mut q = Picker::new("me", 64 * 1024, 1000 * 64 * 1024, Bitfield::new(n), floor, 1);
    q.add_peer(1, "a", true);
    assert_eq!(q.pipeline_target(1), 17, "1 MiB of 64 KiB chunks, plus one");
    // The cap holds.
    p.set_rtt(1, Duration::from_secs(10));
    assert_eq!(p.pipeline_target(1), 32);
}

#[test]
fn origin_only_for_chunks_no_peer_has_and_split_between_owners() {
    let n = 64;
    let mut a = Picker::new("node-a", 1024, 64 * 1024, Bitfield::new(n), cfg(), 1);
    let mut b = Picker::new("node-b", 1024, 64 * 1024, Bitfield::new(n), cfg(), 2);
    a.add_peer(1, "node-b", true);
    b.add_peer(1, "node-a", true);
    let pa = a.pick_for_origin(MS);
    let pb = b.pick_for_origin(MS);
    let mut all: Vec<u32> = pa.iter().chain(pb.iter()).copied().collect();
    all.sort();
    assert_eq!(
        all,
        (0..n).collect::<Vec<_>>(),
        "each chunk has exactly one owner"
    );
    assert!(!pa.is_empty() && !pb.is_empty(), "both nodes share the work");
    // A chunk some peer has never goes to the origin.
    let mut c = Picker::new("node-c", 1024, 64 * 1024, Bitfield::new(n), cfg(), 3);
    c.add_peer(1, "node-d", true);
    c.peer_have_map(1, &Bitfield::full(n), MS);
    assert!(c.pick_for_origin(MS).is_empty());
}

#[test]
fn the_fleet_origin_requests_are_shared_among_the_readers() {
    let n = 64;
    let c = PickerConfig {
        origin_concurrency: 4,
        ..cfg()
    };
    let mut p = Picker::new("me", 1024, 64 * 1024, Bitfield::new(n), c, 1);
    assert_eq!(p.origin_share(), 4, "alone: all of them");
    p.add_peer(1, "a", true);
    assert_eq!(p.origin_share(), 2);
    p.add_peer(2, "b", true);
    assert_eq!(p.origin_share(), 2, "4 among 3, rounded up");
    for (id, name) in [(3, "c"), (4, "d"), (5, "e"), (6, "f")] {
        p.add_peer(id, name, true);
    }
    assert_eq!(p.origin_share(), 1, "7 readers: four elected, one request each");
    // Elect "me" whatever the scores: the readers that outrank it stop reading.
    let cut = p.election(MS);
    let mut outrank: Vec<u32> = (1..=6).filter(|id| p.peers[id].election > p.election).collect();
    outrank.truncate(outrank.len().saturating_sub(3));
    for &id in &outrank {
        p.peer_reads_origin(id, false);
    }
    assert!(Picker::elected(p.election, "me", &p.election(MS)), "{cut:?}");
    let first = p.pick_for_origin(MS);
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(p.pick_for_origin(2 * MS).is_empty(), "the share is in flight");
    // Peers that stop reading from the origin leave their part of the fleet's requests.
    for id in 1..=6 {
        p.peer_reads_origin(id, false);
    }
    assert_eq!(p.origin_share(), 4);
    assert_eq!(p.pick_for_origin(3 * MS).len(), 3, "one in flight, three more");
}

/// A full mesh of `names`, every picker with the same election key; returns the pickers.
fn mesh(names: &[&str], key: &[u8], c: &PickerConfig, n: u32) -> Vec<Picker> {
    names
        .iter()
        .enumerate()
        .map(|(i, me)| {
            let mut p = Picker::new(
                me,
                1024,
                u64::from(n) * 1024,
                Bitfield::new(n),
                c.clone(),
                i as u64,
            );
            p.set_election_key(key);
            for (j, other) in names.iter().enumerate() {
                if i != j {
                    p.add_peer(j as PeerId, other, true);
                    p.peer_have_map(j as PeerId, &Bitfield::new(n), MS);
                }
            }
            p
        })
        .collect()
}

#[test]
fn the_fleet_elects_as_many_origin_readers_as_requests_and_they_cover_the_payload() {
    let n = 64;
    let c = PickerConfig {
        origin_concurrency: 2,
        origin_run_bytes: 4 * 1024,
        ..cfg()
    };
    let names = ["n0", "n1", "n2", "n3", "n4", "n5", "n6"];
    let mut fleet = mesh(&names, b"index-a", &c, n);
    // Each elected reader drains its owned blocks; the others read nothing.
    let mut readers = Vec::new();
    let mut read = Vec::new();
    for p in &mut fleet {
        let mut mine = Vec::new();
        loop {
            let picks = p.pick_for_origin(MS);
            if picks.is_empty() {
                break;
            }
            for &c in &picks {
                p.completed(c, Source::Origin, MS, MS);
            }
            mine.extend(picks);
        }
        if !mine.is_empty() {
            readers.push(p.name.clone());
        }
        read.extend(mine);
    }
    assert_eq!(readers.len(), 2, "two readers elected: {readers:?}");
    read.sort_unstable();
    assert_eq!(
        read,
        (0..n).collect::<Vec<_>>(),
        "every chunk read once, by one of them"
    );

    // Another index elects from the same nodes by other scores.
    let sets: std::collections::BTreeSet<Vec<String>> = [b"index-a", b"index-b", b"index-c", b"index-d"]
        .iter()
        .map(|key| {
            let fleet = mesh(&names, *key, &c, n);
            let cut = fleet[0].election(MS);
            names
                .iter()
                .filter(|name| Picker::elected(fleet[0].election_score(name), name, &cut))
                .map(|name| (*name).to_owned())
                .collect()
        })
        .collect();
    assert!(sets.len() > 1, "four rollouts elected the same readers: {sets:?}");

    // Keyed after its peers connected, a node elects what the others elect.
    let mut late = Picker::new("n0", 1024, u64::from(n) * 1024, Bitfield::new(n), c.clone(), 9);
    for (j, other) in names.iter().enumerate().skip(1) {
        late.add_peer(j as PeerId, other, true);
    }
    late.set_election_key(b"index-a");
    assert_eq!(late.election(MS), mesh(&names, b"index-a", &c, n)[3].election(MS));
    // The same with members expected but not connected yet.
    let all: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut keyed_first = Picker::new("n0", 1024, u64::from(n) * 1024, Bitfield::new(n), c.clone(), 9);
    keyed_first.set_election_key(b"index-a");
    keyed_first.expect_members(&all, 10 * MS);
    let mut keyed_last = Picker::new("n0", 1024, u64::from(n) * 1024, Bitfield::new(n), c.clone(), 9);
    keyed_last.expect_members(&all, 10 * MS);
    keyed_last.set_election_key(b"index-a");
    assert!(keyed_last.election(MS).is_some());
    assert_eq!(keyed_last.election(MS), keyed_first.election(MS));
    assert_eq!(keyed_last.election(MS), late.election(MS));

    // A node left out reads once nothing has happened for `stall_after`.
    let mut fleet = mesh(&names, b"index-a", &c, n);
    let cut = fleet[0].election(MS);
    let out = fleet
        .iter_mut()
        .find(|p| !Picker::elected(p.election, &p.name, &cut))
        .expect("five of seven are not elected");
    assert!(out.pick_for_origin(MS).is_empty());
    assert!(
        !out.pick_for_origin(MS + c.stall_after).is_empty(),
        "stalled: it reads"
    );
}

#[test]
fn origin_reads_come_in_runs_of_whole_owned_blocks() {
    let n = 64;
    // Blocks of 4 chunks; each node keeps one request (one block) in flight.
    let c = PickerConfig {
        origin_concurrency: 2,
        origin_run_bytes: 4 * 1024,
        ..cfg()
    };
    let mut a = Picker::new("node-a", 1024, 64 * 1024, Bitfield::new(n), c.clone(), 1);
    let mut b = Picker::new("node-b", 1024, 64 * 1024, Bitfield::new(n), c, 2);
    a.add_peer(1, "node-b", true);
    b.add_peer(1, "node-a", true);
    let mut all = Vec::new();
    let mut t = MS;
    for p in [&mut a, &mut b] {
        loop {
            let picks = p.pick_for_origin(t);
            if picks.is_empty() {
                break;
            }
            assert_eq!(picks.len(), 4, "one whole block per request: {picks:?}");
            let first = picks[0];
            assert_eq!(first % 4, 0, "{picks:?}");
            assert_eq!(picks, (first..first + 4).collect::<Vec<_>>());
            assert!(p.pick_for_origin(t).is_empty(), "one request at a time");
            for &x in &picks {
                p.completed(x, Source::Origin, MS, t);
            }
            all.extend(picks);
            t += MS;
        }
    }
    all.sort();
    assert_eq!(
        all,
        (0..n).collect::<Vec<_>>(),
        "each block has exactly one owner"
    );
    // Chunks of a block that a peer already holds are left out of the run.
    let mut d = Picker::new(
        "node-d",
        1024,
        8 * 1024,
        Bitfield::new(8),
        PickerConfig {
            origin_concurrency: 1,
            origin_run_bytes: 8 * 1024,
            ..cfg()
        },
        1,
    );
    d.add_peer(1, "node-e", true);
    d.peer_reads_origin(1, false);
    d.peer_have_map(1, &bits(8, &[2, 5]), MS);
    assert_eq!(d.pick_for_origin(MS), vec![0, 1, 3, 4, 6, 7]);
}

#[test]
fn expected_members_take_their_share_before_they_connect() {
    let n = 64;
    let names = vec!["node-a".to_string(), "node-b".to_string()];
    let mut a = Picker::new("node-a", 1024, 64 * 1024, Bitfield::new(n), cfg(), 1);
    a.expect_members(&names, Duration::from_secs(10));
    // Alone but expecting node-b: only node-a's rendezvous share.
    let mine = a.pick_for_origin(MS);
    let expected: Vec<u32> = (0..n).filter(|&c| hrw("node-a", c) > hrw("node-b", c)).collect();
    let mut got = mine.clone();
    got.sort();
    assert_eq!(got, expected);
    // After the deadline an absent member no longer holds chunks back.
    let rest = a.pick_for_origin(Duration::from_secs(11));
    assert_eq!(rest.len() + mine.len(), n as usize);
}

#[test]
fn fetching_hint_and_stall() {
    let n = 8;
    let mut p = Picker::new("x", 1024, 8 * 1024, Bitfield::new(n), cfg(), 1);
    // Alone: owns everything.
    p.add_peer(1, "y", true);
    for c in 0..n {
        p.peer_fetching(1, c);
    }
    assert!(
        p.pick_for_origin(MS).is_empty(),
        "the peer announced fetching everything"
    );
    // After a long silence the hints are ignored.
    let later = MS + p.cfg.stall_after;
    assert_eq!(p.pick_for_origin(later).len(), n as usize);
}

#[test]
fn origin_budget_caps_reads() {
    let n = 10;
    let c = PickerConfig {
        origin_budget: Some(3 * 1000),
        ..cfg()
    };
    let mut p = Picker::new("x", 1000, 10_000, Bitfield::new(n), c, 1);
    let picks = p.pick_for_origin(MS);
    assert_eq!(picks.len(), 3);
    for c in picks {
        p.completed(c, Source::Origin, MS, 2 * MS);
    }
    assert_eq!(p.origin_bytes(), 3000);
    assert!(p.pick_for_origin(3 * MS).is_empty());
}

#[test]
fn origin_bytes_read_for_nothing_count_against_the_budget() {
    let c = PickerConfig {
        origin_budget: Some(5 * 1000),
        ..cfg()
    };
    let mut p = Picker::new("x", 1000, 10_000, Bitfield::new(10), c, 1);
    // A range GET cut off after 2.5 chunks' worth of bytes.
    p.origin_read_unused(2_500);
    assert_eq!(p.origin_bytes(), 2_500);
    assert_eq!(p.pick_for_origin(MS).len(), 2, "2,500 bytes of the budget left");
}

#[test]
fn same_site_peer_preferred_and_remote_chunks_pulled_by_the_site_owner() {
    let n = 32;
    let mut p = Picker::new("s1-a", 1024, 32 * 1024, bits(n, &[28, 29, 30, 31]), cfg(), 1);
    p.add_peer(1, "s1-b", true);
    p.add_peer(2, "s2-a", false);
    p.peer_have_map(1, &bits(n, &[0, 1]), MS);
    p.peer_have_map(2, &Bitfield::full(n), MS);
    let remote = p.pick_for_peer(2, MS);
    assert!(
        !remote.contains(&0) && !remote.contains(&1),
        "local chunks never cross the WAN"
    );
    // The remote chunks this node pulls are exactly those it owns within its site.
    for c in 2..28 {
        let mine = hrw("s1-a", c) > hrw("s1-b", c);
        if remote.contains(&c) {
            assert!(mine, "chunk {c} pulled by a non-owner");
        }
    }
}

#[test]
fn removing_a_peer_frees_its_chunks() {
    let n = 8;
    let mut p = Picker::new("x", 1024, 8 * 1024, Bitfield::new(n), cfg(), 1);
    p.add_peer(1, "y", true);
    p.peer_have_map(1, &Bitfield::full(n), MS);
    let picks = p.pick_for_peer(1, MS);
    let mut freed = p.remove_peer(1);
    freed.sort();
    let mut picks_sorted = picks.clone();
    picks_sorted.sort();
    assert_eq!(freed, picks_sorted);
    assert!(p.availability.iter().all(|&a| a == 0));
    // With the peer gone, this node owns every chunk for the origin.
    assert_eq!(p.pick_for_origin(MS).len(), n as usize);
}

#[test]
fn upload_slots_limit_total_and_per_peer() {
    let mut s = UploadSlots::new(3, 2);
    assert!(s.try_acquire(1));
    assert!(s.try_acquire(1));
    assert!(!s.try_acquire(1), "per-peer limit");
    assert!(s.try_acquire(2));
    assert!(!s.try_acquire(3), "total limit");
    s.release(1);
    assert!(s.try_acquire(3));
    assert_eq!(s.used(), 3);
}

/// Result of a simulated swarm.
struct SimResult {
    origin_reads: u32,
    /// Per destination site: chunks received from another site or the origin.
    wan_in: HashMap<usize, u32>,
    finish_ticks: Vec<u32>,
}

/// Simulates `sites.len()` nodes, fully meshed, moving `n` chunks. Peer transfers take 2 ticks (4 across
/// sites), origin reads 3; have and fetching messages take 1 tick. Deterministic for a seed.
fn simulate(sites: &[usize], n: u32, seed: u64) -> SimResult {
    simulate_with(sites, n, seed, &cfg())
}

/// The picker with runs on: 16 chunks in flight per peer at least, runs of up to 8.
fn runs_cfg() -> PickerConfig {
    PickerConfig {
        min_inflight_bytes: 16 * 1024,
        run_bytes: 8 * 1024,
        ..cfg()
    }
}

fn simulate_with(sites: &[usize], n: u32, seed: u64, cfg: &PickerConfig) -> SimResult {
    simulate_wan(sites, n, seed, cfg, 4)
}

/// The simulation with a cross-site transfer taking `wan_ticks` (same-site transfers take 2).
fn simulate_wan(sites: &[usize], n: u32, seed: u64, cfg: &PickerConfig, wan_ticks: u32) -> SimResult {
    let nodes = sites.len();
    let names: Vec<String> = (0..nodes).map(|i| format!("node-{i}")).collect();
    let tick = Duration::from_millis(10);
    let mut pickers: Vec<Picker> = (0..nodes)
        .map(|i| {
            let mut p = Picker::new(
                &names[i],
                1024,
                u64::from(n) * 1024,
                Bitfield::new(n),
                cfg.clone(),
                seed + i as u64,
            );
            for j in 0..nodes {
                if j != i {
                    p.add_peer(j as u32, &names[j], sites[i] == sites[j]);
                }
            }
            p
        })
        .collect();
    // (due tick, node, chunk, source)
    let mut transfers: Vec<(u32, usize, u32, Source, u32)> = Vec::new();
    // (due tick, to, from, chunk, is_have)
    let mut msgs: Vec<(u32, usize, usize, u32, bool)> = Vec::new();
    let mut res = SimResult {
        origin_reads: 0,
        wan_in: HashMap::new(),
        finish_ticks: vec![0; nodes],
    };
    for t in 0..10_000u32 {
        let now = tick * t;
        let (due, rest): (Vec<_>, Vec<_>) = msgs.into_iter().partition(|m| m.0 <= t);
        msgs = rest;
        for (_, to, from, c, is_have) in due {
            if is_have {
                pickers[to].peer_have(from as u32, c, now);
            } else {
                pickers[to].peer_fetching(from as u32, c);
            }
        }
        let (due, rest): (Vec<_>, Vec<_>) = transfers.into_iter().partition(|x| x.0 <= t);
        transfers = rest;
        for (_, node, c, src, started) in due {
            if pickers[node].have().get(c) {
                continue; // cancelled duplicate
            }
            match src {
                Source::Origin => {
                    res.origin_reads += 1;
                    *res.wan_in.entry(sites[node]).or_default() += 1;
                }
                Source::Peer(j) if sites[j as usize] != sites[node] => {
                    *res.wan_in.entry(sites[node]).or_default() += 1;
                }
                Source::Peer(_) => {}
            }
            let cancel = pickers[node].completed(c, src, tick * (t - started), now);
            transfers.retain(|x| {
                !(x.1 == node && x.2 == c && matches!(x.3, Source::Peer(p) if cancel.contains(&p)))
            });
            for j in 0..nodes {
                if j != node {
                    msgs.push((t + 1, j, node, c, true));
                }
            }
            if pickers[node].is_complete() {
                res.finish_ticks[node] = t;
            }
        }
        if pickers.iter().all(|p| p.is_complete()) {
            return res;
        }
        for i in 0..nodes {
            for j in 0..nodes {
                if i == j {
                    continue;
                }
                let lat = if sites[i] == sites[j] { 2 } else { wan_ticks };
                for c in pickers[i].pick_for_peer(j as u32, now) {
                    transfers.push((t + lat, i, c, Source::Peer(j as u32), t));
                    // As the engine does: a fetch from another site is announced as `Fetching`.
                    if sites[i] != sites[j] {
                        for k in 0..nodes {
                            if k != i {
                                msgs.push((t + 1, k, i, c, false));
                            }
                        }
                    }
                }
            }
            for c in pickers[i].pick_for_origin(now) {
                transfers.push((t + 3, i, c, Source::Origin, t));
                for j in 0..nodes {
                    if j != i {
                        msgs.push((t + 1, j, i, c, false));
                    }
                }
            }
        }
    }
    panic!("swarm did not complete");
}

#[test]
fn simulated_swarm_reads_the_origin_once() {
    for (nodes, seed) in [(5usize, 1u64), (8, 2), (10, 3)] {
        let n = 200;
        let r = simulate(&vec![0; nodes], n, seed);
        assert_eq!(
            r.origin_reads,
            n,
            "{nodes} nodes: origin copies {}",
            f64::from(r.origin_reads) / f64::from(n)
        );
        assert!(r.finish_ticks.iter().all(|&t| t > 0));
    }
}

#[test]
fn simulated_sites_pull_about_one_copy_each_across_the_wan() {
    let sites = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2];
    let n = 200;
    for (label, c) in [("single chunks", cfg()), ("runs", runs_cfg())] {
        let r = simulate_with(&sites, n, 9, &c);
        assert_eq!(r.origin_reads, n, "{label}");
        for s in 0..3 {
            let copies = f64::from(r.wan_in[&s]) / f64::from(n);
            assert!(
                copies <= 1.08,
                "{label}: site {s} pulled {copies:.3} copies across the WAN"
            );
            assert!(copies >= 0.99, "{label}: site {s} got everything: {copies:.3}");
        }
    }
}

#[test]
fn simulated_sites_behind_a_slow_wan_pull_about_one_copy_each() {
    // A cross-site transfer takes 20 times a same-site one: endgame must not duplicate across the WAN.
    let sites = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2];
    let n = 200;
    for (label, c) in [("single chunks", cfg()), ("runs", runs_cfg())] {
        let r = simulate_wan(&sites, n, 11, &c, 40);
        for s in 0..3 {
            let copies = f64::from(r.wan_in[&s]) / f64::from(n);
            assert!(
                (0.99..=1.08).contains(&copies),
                "{label}: site {s} pulled {copies:.3} copies across the WAN"
            );
        }
    }
}

#[test]
fn endgame_never_takes_a_second_copy_across_sites() {
    let n = 8;
    let mut p = Picker::new("me", 1024, 8 * 1024, bits(n, &[0, 1, 2, 3, 4, 5, 6]), cfg(), 1);
    p.add_peer(1, "far-1", false);
    p.add_peer(2, "far-2", false);
    p.peer_have_map(1, &Bitfield::full(n), MS);
    p.peer_have_map(2, &Bitfield::full(n), MS);
    let first = [p.pick_for_peer(1, MS), p.pick_for_peer(2, MS)].concat();
    assert_eq!(first, vec![7], "one copy of 7 across the WAN");
    // Endgame: everything missing is in flight; the other far peer gets no duplicate.
    assert!(p.pick_for_peer(2, 2 * MS).is_empty());
    assert!(p.pick_for_peer(1, 2 * MS).is_empty());
    // A same-site peer that holds it may serve a second copy.
    p.add_peer(3, "near", true);
    p.peer_have_map(3, &Bitfield::full(n), 3 * MS);
    assert_eq!(p.pick_for_peer(3, 3 * MS), vec![7]);
    // Stalled (nothing happened for `stall_after`): the WAN duplicate is allowed again.
    let mut q = Picker::new("me", 1024, 8 * 1024, bits(n, &[0, 1, 2, 3, 4, 5, 6]), cfg(), 1);
    q.add_peer(1, "far-1", false);
    q.add_peer(2, "far-2", false);
    q.peer_have_map(1, &Bitfield::full(n), MS);
    q.peer_have_map(2, &Bitfield::full(n), MS);
    let got = [q.pick_for_peer(1, MS), q.pick_for_peer(2, MS)].concat();
    assert_eq!(got, vec![7]);
    let later = MS + cfg().stall_after;
    let dup = [q.pick_for_peer(1, later), q.pick_for_peer(2, later)].concat();
    assert_eq!(dup, vec![7], "stalled: a second source, whatever its site");
}

#[test]
fn simulated_swarm_with_runs_reads_the_origin_once() {
    for (nodes, seed) in [(5usize, 4u64), (10, 5)] {
        let r = simulate_with(&vec![0; nodes], 200, seed, &runs_cfg());
        assert_eq!(r.origin_reads, 200, "{nodes} nodes");
        assert!(r.finish_ticks.iter().all(|&t| t > 0));
    }
}

#[test]
fn runs_from_a_seed_after_the_random_phase() {
    let n = 256;
    let mut heads = std::collections::HashSet::new();
    for seed in 0..10 {
        // Holds 4 chunks, so the random phase is over; the peer holds everything.
        let mut p = Picker::new("me", 1024, 256 * 1024, bits(n, &[0, 1, 2, 3]), runs_cfg(), seed);
        p.add_peer(1, "seed", true);
        p.peer_have_map(1, &Bitfield::full(n), MS);
        let target = p.pipeline_target(1);
        assert_eq!(target, 17, "16 KiB of 1 KiB chunks, plus one");
        let picks = p.pick_for_peer(1, MS);
        assert_eq!(picks.len(), 17, "the whole pipeline");
        let runs = crate::engine::runs(&picks);
        assert!(runs.len() <= 3, "17 chunks in runs of at most 8: {runs:?}");
        assert!(runs.iter().all(|r| r.1 <= 8), "{runs:?}");
        assert!(picks.iter().all(|&c| c >= 4), "only what is missing");
        let distinct: std::collections::HashSet<u32> = picks.iter().copied().collect();
        assert_eq!(distinct.len(), picks.len(), "no chunk twice");
        heads.insert(runs[0].0);
    }
    assert!(heads.len() > 5, "run starts are random: {heads:?}");
}

#[test]
fn runs_stop_at_what_the_peer_lacks_what_is_requested_and_more_common_chunks() {
    let n = 64;
    for seed in 0..10 {
        let mut p = Picker::new(
            "me",
            1024,
            64 * 1024,
            bits(n, &[60, 61, 62, 63]),
            runs_cfg(),
            seed,
        );
        p.add_peer(1, "a", true);
        p.add_peer(2, "b", true);
        p.add_peer(3, "c", true);
        // Peer a holds 0..60 but not 25; b also holds 0..10 and 40..60, so those are more common.
        let a: Vec<u32> = (0..60).filter(|&c| c != 25).collect();
        let b: Vec<u32> = (0..10).chain(40..60).collect();
        p.peer_have_map(1, &bits(n, &a), MS);
        p.peer_have_map(2, &bits(n, &b), MS);
        // c holds only 18, and it is requested from c first.
        p.peer_have_map(3, &bits(n, &[18]), MS);
        assert_eq!(p.pick_for_peer(3, MS), vec![18]);
        // 29 chunks of rarity 1 (10..40 less 18 and 25) and more room than that is not left: the cut-off is 1.
        let picks = p.pick_for_peer(1, MS);
        assert_eq!(picks.len(), 17);
        for &c in &picks {
            assert!(
                (10..40).contains(&c),
                "seed {seed}: {c} is more common than the cut-off"
            );
            assert!(c != 25 && c != 18, "seed {seed}: {c} is missing or requested");
        }
        let runs = crate::engine::runs(&picks);
        assert!(runs.len() < picks.len(), "seed {seed}: some runs: {runs:?}");
    }
}

#[test]
fn no_runs_in_the_random_phase_or_when_turned_off() {
    let n = 256;
    let mut p = Picker::new("me", 1024, 256 * 1024, Bitfield::new(n), runs_cfg(), 1);
    p.add_peer(1, "seed", true);
    p.peer_have_map(1, &Bitfield::full(n), MS);
    let picks = p.pick_for_peer(1, MS);
    assert_eq!(picks.len(), 17);
    let runs = crate::engine::runs(&picks);
    assert!(runs.len() >= 12, "random picks are rarely adjacent: {runs:?}");
    let off = PickerConfig {
        run_bytes: 0,
        ..runs_cfg()
    };
    let mut q = Picker::new("me", 1024, 256 * 1024, bits(n, &[0, 1, 2, 3]), off, 1);
    q.add_peer(1, "seed", true);
    q.peer_have_map(1, &Bitfield::full(n), MS);
    assert!(crate::engine::runs(&q.pick_for_peer(1, MS)).len() >= 12);
}

#[test]
fn a_peer_that_does_not_read_the_origin_owns_nothing_there() {
    let n = 64;
    let mut a = Picker::new("a", 1024, 64 * 1024, Bitfield::new(n), cfg(), 1);
    a.add_peer(1, "b", true);
    let mine = a.pick_for_origin(MS);
    assert!(
        !mine.is_empty() && mine.len() < n as usize,
        "two readers share the chunks: {}",
        mine.len()
    );
    // The peer says it does not read the origin: its share is this node's, at once and not after a stall.
    a.peer_reads_origin(1, false);
    let rest = a.pick_for_origin(2 * MS);
    assert_eq!(mine.len() + rest.len(), n as usize);
    // It still counts in the site rule (who of the site fetches a chunk across the WAN).
    let theirs = (0..n).find(|&c| hrw("b", c) > hrw("a", c)).unwrap();
    assert!(!a.owns(theirs, true));
}

#[test]
fn a_stall_description_names_the_missing_chunks_their_sources_and_holders() {
    // Holds all but chunks 2 and 3; peer "a" holds 3, which is requested from it.
    let mut p = Picker::new("me", 1024, 4 * 1024, bits(4, &[0, 1]), cfg(), 1);
    p.add_peer(1, "a", true);
    p.peer_have_map(1, &bits(4, &[0, 3]), MS);
    assert_eq!(p.pick_for_peer(1, MS), vec![3]);
    let s = p.describe_stall(8);
    assert!(s.contains("peer a inflight 1/2 holds 2"), "{s}");
    assert!(s.contains("chunk 2: requested false from [], held by []"), "{s}");
    assert!(
        s.contains("chunk 3: requested true from [Peer(1)], held by [\"a\"]"),
        "{s}"
    );
    assert!(!s.contains("chunk 0") && !s.contains("chunk 1"), "{s}");
    assert!(!p.describe_stall(1).contains("chunk 3"), "the limit holds");
}
