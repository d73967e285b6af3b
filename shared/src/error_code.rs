//! The Stratum share error codes 20–25, as the common pools and miners use them. Stratum
//! V1 sends them on the wire; the data plane also counts every protocol's refused shares by
//! them, so they belong to no one protocol.

/// A refused request's code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum ErrorCode {
    Other = 20,
    JobNotFound = 21,
    Duplicate = 22,
    LowDifficulty = 23,
    UnauthorizedWorker = 24,
    NotSubscribed = 25,
}
