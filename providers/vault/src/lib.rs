//! Vault / OpenBao PKI backend. (in progress)
#![forbid(unsafe_code)]
