//! Rebuilds when a file in `migrations/` changes: `refinery::embed_migrations!`
//! reads that directory at compile time, and cargo does not otherwise know a
//! new migration file is an input, so it would ship a binary without it.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
