//! Envoy harness (see tests/sds_envoy.rs).
