//! Compiles the contracts with `protox` (pure Rust, no system `protoc`),
//! generates tonic/prost code, and writes the encoded descriptor set that the
//! services register for reflection and the edge reads its routes from.

use std::{env, fs, path::PathBuf};

const PROTOS: &[&str] = &[
    "agora/analytics/v1/analytics.proto",
    "agora/api/v1/access.proto",
    "agora/catalog/v1/catalog.proto",
    "agora/chat/v1/chat.proto",
    "agora/events/v1/events.proto",
    "agora/users/v1/users.proto",
    "google/api/annotations.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let out = PathBuf::from(env::var("OUT_DIR")?);

    let mut compiler = protox::Compiler::new([&root])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(PROTOS)?;

    // The encoded set keeps custom options (google.api.http, agora.api.v1.access)
    // that the prost_types form would drop; the edge needs them.
    fs::write(
        out.join("agora_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Without the `connect` constructors: chat's `Connect` RPC would
        // clash with them; clients are built over a channel with `new`.
        .build_transport(false)
        // Small starting buffers: open streams keep theirs while idle.
        .codec_path("crate::codec::Codec")
        // `prost::Name` on every message: the codec finds a request's
        // descriptor, and so its rules, by name.
        .compile_fds_with_config(compiler.file_descriptor_set(), {
            let mut config = tonic_prost_build::Config::new();
            config.enable_type_names();
            config
        })?;

    for dir in ["agora", "google"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    Ok(())
}
