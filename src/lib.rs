//! The meshca daemon: configuration, the certificate cache and its renewal engine, the SDS
//! server, the CLI.
//!
//! The entry point is the `meshca` binary (`src/main.rs` → [`cli`]); [`config::Config`] is what
//! it runs from, [`providers::build`] turns it into a backend, [`issuance::Pipeline`] is the one path
//! every certificate is issued and validated through, and [`cache::CertificateCache`] schedules
//! issuances and renewals through that pipeline.
#![forbid(unsafe_code)]

pub mod admin;
pub mod cache;
pub mod cli;
pub mod config;
pub mod issuance;
pub mod istio;
pub mod jwt_svid;
pub mod kubernetes;
pub mod lifetime;
pub mod providers;
pub mod rotation;
pub mod sds;
pub mod stores;
pub mod time;
pub mod vault_rotation;
pub mod workload_api;
