//! Compiles proto/ with protox (pure Rust, no system protoc) and generates prost messages and
//! tonic services, plus the descriptor set that tonic-reflection serves.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "konnect/state/v1/state.proto",
        "konnect/peer/v1/peer.proto",
        "konnect/admin/v1/admin.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("konnect_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        // Ordered maps: encoding is then deterministic, so every replica writes identical bytes.
        .btree_map(".")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
