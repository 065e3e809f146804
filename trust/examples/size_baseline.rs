//! Binary-size probe: the chunk index plus what an edge node links anyway for the origin (tokio, reqwest
//! over rustls with aws-lc-rs), without signature or registry code. `size_verify` minus this is the cost
//! of the signature and registry code on top of an edge node's own dependencies.

fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let res = rt.block_on(async {
        let body = reqwest::get(args.get(1).map(String::as_str).unwrap_or("http://127.0.0.1:1/"))
            .await?
            .bytes()
            .await?;
        let index = pollen_trust::ChunkIndex::decode(&body)?;
        Ok::<_, anyhow::Error>(format!("{index} {:?}", index.verify_chunk(0, &body)))
    });
    println!("{res:?}");
}
