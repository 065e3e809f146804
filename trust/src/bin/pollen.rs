//! The `pollen` command line: key generation, publishing, indexing, verification, and a small fleet PKI
//! for development and the lab (`pollen pki`). All logic lives in the `pollen_trust` library; this file
//! parses flags and prints.

use pollen_crds::duration::parse as parse_duration;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use pollen_trust::index::TargetSpec;
use pollen_trust::keys::{self, PublicKey, SigningKey};
use pollen_trust::publish::{self, IndexRequest, PublishOptions};
use pollen_trust::registry::{Registry, RegistryArgs, parse_reference};
use pollen_trust::verify::{self, TrustPolicy, VerifyContext};

#[derive(Parser)]
#[command(
    name = "pollen",
    version,
    about = "Pollen: signed, peer-to-peer software updates for edge fleets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The registry flags, and the client they make.
trait RegistryFlags {
    fn registry(&self) -> Result<Registry>;
}

impl RegistryFlags for RegistryArgs {
    fn registry(&self) -> Result<Registry> {
        Ok(Registry::new(&self.options())?)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Write a cosign-format key pair: PREFIX.key (encrypted with $COSIGN_PASSWORD) and PREFIX.pub.
    Keygen {
        /// File name prefix.
        #[arg(long, default_value = "cosign")]
        output_prefix: String,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Push FILE as a signed OCI artifact, claiming a version, and print its pinned reference.
    Publish {
        /// The payload file.
        file: PathBuf,
        /// Destination, REGISTRY/REPO:TAG.
        #[arg(long)]
        to: String,
        /// The publisher's cosign private key.
        #[arg(long)]
        key: PathBuf,
        /// Layer media type (default application/octet-stream).
        #[arg(long)]
        media_type: Option<String>,
        /// The version the signature claims (`pollen.dev/version`, a semantic version such as 1.4.2).
        /// Default: the tag, when it is a semantic version; otherwise this flag is required. The
        /// operator refuses to deliver a lower version than it delivered before to the same target.
        #[arg(long, value_name = "SEMVER")]
        version: Option<semver::Version>,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Build, push and sign the chunk index of a published payload; print the index reference.
    Index {
        /// The payload, REGISTRY/REPO@sha256:… (or :TAG).
        #[arg(long)]
        payload: String,
        /// The director's cosign private key.
        #[arg(long)]
        key: PathBuf,
        /// Rollout identity, NAMESPACE/NAME.
        #[arg(long)]
        rollout: String,
        /// Sequence number (at least 1, increasing per target).
        #[arg(long)]
        sequence: u64,
        /// Install path under the node's install root.
        #[arg(long)]
        target_path: String,
        /// Previous versions nodes keep.
        #[arg(long, default_value_t = 2)]
        keep_versions: u32,
        /// Chunk size in bytes (default: chosen from the payload size).
        #[arg(long)]
        chunk_size: Option<u32>,
        /// Allow nodes to install this over a higher sequence.
        #[arg(long)]
        downgrade: bool,
        /// Expiry, unix seconds.
        #[arg(long)]
        expires_at: Option<u64>,
        /// Node authorised to fetch the index (repeatable; none means any fleet member).
        #[arg(long = "peer")]
        peers: Vec<String>,
        /// Check the payload's publisher signature with this key first (repeatable).
        #[arg(long)]
        publisher_key: Vec<PathBuf>,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Print the director's peer grant (base64) that lets NODE trade chunks of the index although the
    /// index's peer list does not name it; give it to the node's `--peer-grant`. (In a cluster the
    /// operator writes grants into the assignments.)
    Grant {
        /// The index, pinned: REGISTRY/REPO@sha256:….
        #[arg(long)]
        index: String,
        /// The node name (as in its certificate).
        #[arg(long)]
        node: String,
        /// The director's cosign private key.
        #[arg(long)]
        key: PathBuf,
    },
    /// A fleet CA, node certificates and revocation lists for development, the lab and standalone mode.
    /// In a cluster the operator signs node certificates through the Kubernetes CSR API instead.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Verify a chunk index and its payload against the publisher and director keys.
    Verify {
        /// The index, REGISTRY/REPO@sha256:… (or :TAG).
        #[arg(long)]
        index: String,
        /// A trusted publisher public key (repeatable).
        #[arg(long, required = true)]
        publisher_key: Vec<PathBuf>,
        /// The director public key.
        #[arg(long)]
        director_key: PathBuf,
        /// The last sequence installed for the index's target (rollback check).
        #[arg(long)]
        last_sequence: Option<u64>,
        #[command(flatten)]
        registry: RegistryArgs,
    },
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Create a fleet CA: DIR/ca.crt and DIR/ca.key (mode 0600).
    Init {
        /// Output directory (created if missing).
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "Pollen fleet CA")]
        name: String,
        /// CA lifetime, for example 3650d.
        #[arg(long, default_value = "3650d", value_parser = parse_duration)]
        lifetime: std::time::Duration,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a node certificate with a fresh key: DIR/NODE.crt and DIR/NODE.key (mode 0600).
    Issue {
        /// The node name (a DNS subdomain; the peer identity in logs, metrics and bans).
        node: String,
        /// Directory holding ca.crt and ca.key; the certificate and key are written here too.
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        /// Certificate lifetime, for example 24h or 30d.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        lifetime: std::time::Duration,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Write a revocation list (X.509 CRL signed by the CA) revoking the given certificates: DIR/revoked.crl.
    Revoke {
        /// Certificate files (PEM) or serials (lowercase hex) to revoke.
        #[arg(required = true)]
        certificates: Vec<String>,
        /// Directory holding ca.crt and ca.key.
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        /// The CRL number; must be higher than the number of any list the nodes already hold.
        #[arg(long)]
        number: u64,
        /// Validity of the list.
        #[arg(long, default_value = "7d", value_parser = parse_duration)]
        validity: std::time::Duration,
    },
}

fn load_ca(dir: &Path) -> Result<pollen_trust::pki::FleetCa> {
    let read = |f: &str| {
        let p = dir.join(f);
        std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    };
    Ok(pollen_trust::pki::FleetCa::from_pem(
        &read("ca.crt")?,
        &read("ca.key")?,
    )?)
}

fn pki(command: PkiCommand) -> Result<()> {
    use pollen_trust::pki::{self, FleetCa, Revoked};
    use std::time::SystemTime;
    match command {
        PkiCommand::Init {
            dir,
            name,
            lifetime,
            force,
        } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let ca = FleetCa::generate(&name, lifetime)?;
            write_new(&dir.join("ca.key"), ca.key_pem().as_bytes(), force, 0o600)?;
            write_new(&dir.join("ca.crt"), ca.cert_pem().as_bytes(), force, 0o644)?;
            println!(
                "CA written to {} and {}",
                dir.join("ca.crt").display(),
                dir.join("ca.key").display()
            );
        }
        PkiCommand::Issue {
            node,
            dir,
            lifetime,
            force,
        } => {
            let ca = load_ca(&dir)?;
            let kp = ca.issue(&node, SystemTime::now(), lifetime)?;
            let crt = dir.join(format!("{node}.crt"));
            let key = dir.join(format!("{node}.key"));
            write_new(&key, kp.key_pem.as_bytes(), force, 0o600)?;
            write_new(&crt, kp.cert.cert_pem.as_bytes(), force, 0o644)?;
            println!(
                "{} serial {} valid until {}",
                crt.display(),
                kp.cert.facts.serial,
                humantime(kp.cert.facts.not_after)
            );
        }
        PkiCommand::Revoke {
            certificates,
            dir,
            number,
            validity,
        } => {
            let ca = load_ca(&dir)?;
            let mut revoked = Vec::new();
            for c in &certificates {
                let serial = if Path::new(c).is_file() {
                    let pem = std::fs::read_to_string(c).with_context(|| format!("reading {c}"))?;
                    pki::cert_facts(&pem)?.serial
                } else if !c.is_empty()
                    && c.bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                {
                    c.clone()
                } else {
                    bail!("{c:?} is neither a certificate file nor a lowercase hex serial");
                };
                revoked.push(Revoked {
                    serial,
                    revoked_at: SystemTime::now(),
                });
            }
            let crl = ca.revocation_list(number, &revoked, validity)?;
            let out = dir.join("revoked.crl");
            write_new(&out, crl.as_bytes(), true, 0o644)?;
            println!("{} (number {number}, {} serials)", out.display(), revoked.len());
        }
    }
    Ok(())
}

fn humantime(t: std::time::SystemTime) -> String {
    jiff::Timestamp::try_from(t).map_or_else(|_| format!("{t:?}"), |ts| ts.to_string())
}

/// Writes `contents` to `path` with `mode`. Without `force` an existing file (or link) is an error;
/// with `force` the file is written beside it and renamed over it, so the mode is always `mode`, a
/// link at `path` is replaced rather than followed, and a crash leaves the old or the new file.
fn write_new(path: &Path, contents: &[u8], force: bool, mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let write = |p: &Path| -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(p)
            .with_context(|| format!("writing {}", p.display()))?;
        f.write_all(contents)?;
        f.sync_all()?;
        Ok(())
    };
    if !force {
        return write(path);
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    write(&tmp)?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

fn load_signing_key(path: &Path) -> Result<SigningKey> {
    Ok(SigningKey::from_file(path, &keys::password(None))?)
}

fn progress_bar(label: &'static str) -> impl Fn(u64, u64) + Send + Sync + 'static {
    move |done, total| {
        let pct = (done * 100).checked_div(total).unwrap_or(100);
        eprint!(
            "\r{label} {:>6.1} / {:.1} MiB ({pct}%)",
            done as f64 / 1048576.0,
            total as f64 / 1048576.0
        );
        if done >= total {
            eprintln!();
        }
    }
}

fn main() -> std::process::ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pollen: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pollen: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Keygen { output_prefix, force } => {
            let key = SigningKey::generate()?;
            let password = keys::password(None);
            let private = key.to_encrypted_pem(&password)?;
            let public = key.public_key()?;
            let key_path = PathBuf::from(format!("{output_prefix}.key"));
            let pub_path = PathBuf::from(format!("{output_prefix}.pub"));
            write_new(&key_path, private.as_bytes(), force, 0o600)?;
            write_new(&pub_path, public.pem().as_bytes(), force, 0o644)?;
            println!("Private key written to {}", key_path.display());
            println!("Public key written to {}", pub_path.display());
        }
        Command::Publish {
            file,
            to,
            key,
            media_type,
            version,
            registry,
        } => {
            let target = parse_reference(&to)?;
            if target.tag().is_none() && target.digest().is_none() {
                bail!("--to needs a tag: REGISTRY/REPO:TAG");
            }
            let opts = PublishOptions {
                media_type,
                title: None,
                version,
            };
            // Refuse before reading the key when there is no version to claim.
            let claimed = publish::claimed_version(&target, &opts)?;
            let key = load_signing_key(&key)?;
            let reg = registry.registry()?;
            let p =
                publish::publish_file(&reg, &target, &file, &key, &opts, progress_bar("uploading")).await?;
            eprintln!("signed as version {claimed}");
            println!("{}", p.reference);
        }
        Command::Grant { index, node, key } => {
            let director = load_signing_key(&key)?;
            println!("{}", pollen_trust::grant::sign(&director, &index, &node)?);
        }
        Command::Index {
            payload,
            key,
            rollout,
            sequence,
            target_path,
            keep_versions,
            chunk_size,
            downgrade,
            expires_at,
            peers,
            publisher_key,
            registry,
        } => {
            let director = load_signing_key(&key)?;
            let publishers = publisher_key
                .iter()
                .map(|p| PublicKey::from_file(p))
                .collect::<Result<Vec<_>, _>>()?;
            let reg = registry.registry()?;
            let req = IndexRequest {
                rollout,
                sequence,
                target: TargetSpec {
                    path: target_path,
                    keep_versions,
                },
                downgrade,
                expires_at,
                peers,
                chunk_size,
            };
            let bar = progress_bar("indexing");
            let idx = publish::create_index(&reg, &payload, &req, &director, &publishers, bar).await?;
            eprintln!("{}", idx.index);
            println!("{}", idx.reference);
        }
        Command::Pki { command } => pki(command)?,
        Command::Verify {
            index,
            publisher_key,
            director_key,
            last_sequence,
            registry,
        } => {
            let trust = TrustPolicy {
                publisher_keys: publisher_key
                    .iter()
                    .map(|p| PublicKey::from_file(p))
                    .collect::<Result<Vec<_>, _>>()?,
                director_key: PublicKey::from_file(&director_key)?,
            };
            let reg = registry.registry()?;
            let mut ctx = VerifyContext::now();
            let ev = verify::fetch_evidence(&reg, &index, &trust).await?;
            if let Some(last) = last_sequence {
                let idx = pollen_trust::ChunkIndex::decode(&ev.index_blob)?;
                ctx.last_sequence.insert(idx.target.path, last);
            }
            let v = verify::verify_evidence(&ev, &trust, &ctx)?;
            println!("verified: {}", v.index_reference());
            println!(
                "  rollout    {} (sequence {}{})",
                v.rollout,
                v.sequence,
                if v.downgrade { ", downgrade" } else { "" }
            );
            println!("  payload    {}", v.payload_location().reference());
            match &v.payload_location().version {
                Some(version) => println!("  version    {version} (signed by the publisher)"),
                None => println!("  version    none claimed"),
            }
            println!(
                "  blob       {} ({} bytes)",
                v.payload_location().blob_digest,
                v.payload.size
            );
            println!(
                "  chunks     {} x {} bytes (BLAKE3)",
                v.chunk_count(),
                v.chunk_size
            );
            println!("  target     {} (keep {})", v.target.path, v.target.keep_versions);
            match v.expires_at {
                Some(t) => println!("  expires    {t}"),
                None => println!("  expires    never"),
            }
            if v.peers.is_empty() {
                println!("  peers      any fleet member");
            } else {
                println!("  peers      {}", v.peers.join(", "));
            }
            println!("  index id   {}", hex::encode(v.id()));
        }
    }
    Ok(())
}
