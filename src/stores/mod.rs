//! CA stores beyond the directory one built into `meshca-tresor`: implementations of
//! [`meshca_tresor::CaStore`] that need dependencies the provider crate does not carry.

pub mod kubernetes;

pub use kubernetes::KubernetesSecretStore;
