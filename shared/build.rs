//! `sqlx::migrate!` embeds `migrations/` at build time; without this, a new
//! migration file would not rebuild the crate and binaries would run an
//! older schema than the code expects.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
