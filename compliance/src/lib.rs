//! Compliance for the pool's control plane: deny lists (OFAC's SDN list in its XML and CSV
//! forms, or plain address files) that stop an address from mining or being paid, and KYC
//! holds (the rule, the records and the signed messages to and from a provider).

pub mod deny_list;
pub mod kyc;
