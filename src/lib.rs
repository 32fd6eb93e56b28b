//! The `agora` binary's library half: configuration and the module table,
//! shared by `main` and the end-to-end tests.

pub mod app;
pub mod config;
pub mod probe;
