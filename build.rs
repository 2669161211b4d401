//! Build script: `sqlx::migrate!()` embeds `migrations/{sqlite,postgres}/*.sql` at compile time, so cargo must
//! rebuild the crate when a migration is added or edited (INFRA.md §5).

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
