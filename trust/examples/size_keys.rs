//! Binary-size probe: `size_baseline` plus cosign signature checking alone (sigstore's crypto module,
//! PEM public key, ECDSA verify), without the registry client. Between `size_baseline` and `size_verify`.

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
        let key = pollen_trust::PublicKey::from_pem(args.get(2).map(String::as_bytes).unwrap_or_default())?;
        let index = pollen_trust::ChunkIndex::decode(&body)?;
        Ok::<_, anyhow::Error>(format!(
            "{index} {:?} {}",
            index.verify_chunk(0, &body),
            key.verify(&body, &body)
        ))
    });
    println!("{res:?}");
}
