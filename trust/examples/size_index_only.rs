//! Binary-size probe: what an edge node links for the chunk index alone (decode + per-chunk verify),
//! without any signature or registry code. Compare with `size_verify`.

fn main() {
    let bytes = std::fs::read(std::env::args().nth(1).unwrap_or_default()).unwrap_or_default();
    match pollen_trust::ChunkIndex::decode(&bytes) {
        Ok(index) => {
            let ok = (0..index.chunk_count()).all(|i| {
                index
                    .verify_chunk(i, &bytes[..index.chunk_len(i) as usize])
                    .is_ok()
            });
            println!("{index} {ok}");
        }
        Err(e) => println!("{e}"),
    }
}
