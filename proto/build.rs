//! Compiles the operator API's `.proto` files with protox (a pure-Rust protobuf compiler,
//! so no system `protoc` is needed), generates the Rust types with prost-build, and keeps
//! the compiled descriptors: the daemon serves the contract's JSON mapping, its OpenAPI
//! document and its method roles from them.

use std::error::Error;
use std::path::PathBuf;

const PROTOS: &[&str] = &["tern/operator/v1/operator.proto"];

fn main() -> Result<(), Box<dyn Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let mut compiler = protox::Compiler::new(["."])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(PROTOS)?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // Encoded by the compiler itself: custom options (`required_role`) stay in it.
    std::fs::write(
        out.join("operator.fds"),
        compiler.encode_file_descriptor_set(),
    )?;
    let descriptors = compiler.file_descriptor_set();
    prost_build::Config::new()
        // no_std: maps (none yet) must not need std's HashMap.
        .btree_map(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
