//! Compiles the hand-written subset of etcd's v3 API in proto/ with protox (pure Rust, no system
//! protoc), the same way konnect-proto does; only the client side is generated.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["etcdserverpb/rpc.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed=proto/{f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
