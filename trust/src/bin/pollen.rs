//! The `pollen` command line (placeholder).
fn main() {
    eprintln!("pollen: not yet implemented");
    std::process::exit(2);
}
