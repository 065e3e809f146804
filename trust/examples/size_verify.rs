//! Binary-size probe: the chunk index plus the full dual verification (registry fetch, cosign signature
//! checks). Compare with `size_index_only`.

fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let res = rt.block_on(async {
        let trust = pollen_trust::TrustPolicy {
            publisher_keys: vec![pollen_trust::PublicKey::from_file(
                args.get(2).map(String::as_str).unwrap_or("p").as_ref(),
            )?],
            director_key: pollen_trust::PublicKey::from_file(
                args.get(3).map(String::as_str).unwrap_or("d").as_ref(),
            )?,
        };
        let reg = pollen_trust::Registry::new(&pollen_trust::RegistryOptions::default())?;
        let v = pollen_trust::verify::verify(
            &reg,
            args.get(1).map(String::as_str).unwrap_or(""),
            &trust,
            &pollen_trust::VerifyContext::now(),
        )
        .await?;
        let bytes = vec![0u8; v.chunk_len(0) as usize];
        Ok::<_, anyhow::Error>(format!("{} {:?}", *v, v.verify_chunk(0, &bytes)))
    });
    println!("{res:?}");
}
