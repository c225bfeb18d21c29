//! The meshca daemon: configuration, the certificate cache and its renewal engine, the CLI.
#![forbid(unsafe_code)]

pub mod sds;
