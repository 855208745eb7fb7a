//! Compiles the operator API's `.proto` files with protox (a pure-Rust protobuf compiler,
//! so no system `protoc` is needed) and generates the Rust types with prost-build.

use std::error::Error;

const PROTOS: &[&str] = &["tern/operator/v1/operator.proto"];

fn main() -> Result<(), Box<dyn Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["."])?;
    prost_build::Config::new()
        // no_std: maps (none yet) must not need std's HashMap.
        .btree_map(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
