//! The contracts' field rules (protovalidate, field_behavior), shared with
//! the services: see [`agora_proto::rules`].

pub use agora_proto::rules::*;
