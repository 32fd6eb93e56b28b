//! What the edge's integration tests share.

use std::path::Path;

use prost_reflect::DescriptorPool;

/// A test-only contract under tests/protos, compiled at run time with its
/// imports.
pub fn compile(file: &str) -> DescriptorPool {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut compiler = protox::Compiler::new([root.join("tests/protos"), root.join("../proto")])
        .expect("include paths");
    compiler.include_imports(true);
    compiler.open_files([file]).expect("test proto compiles");
    DescriptorPool::decode(compiler.encode_file_descriptor_set().as_slice()).expect("decodes")
}

/// The contract that uses every supported `google.api.http` feature.
pub fn test_pool() -> DescriptorPool {
    compile("agora/testing/v1/transcode.proto")
}
