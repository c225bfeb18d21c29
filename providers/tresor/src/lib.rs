//! Tresor: meshca's built-in certificate authority. (in progress)
#![forbid(unsafe_code)]
