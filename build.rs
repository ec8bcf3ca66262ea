// Embedded migrations (sqlx::migrate!) are read at compile time: rebuild when a file is added.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
