//! Compliance for the pool's control plane: deny lists (OFAC's SDN list in its XML and CSV
//! forms, or plain address files) that stop an address from mining or being paid.

pub mod deny_list;
