//! Holds no code: `tests/` checks Otedama's SV2 codec byte for byte against the Stratum V2
//! Reference Implementation's crates (`binary_sv2`, `common_messages_sv2`, `mining_sv2`).
