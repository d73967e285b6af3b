//! Pool-wide counters the cores bump without locks (relaxed atomics); the IPC thread reads
//! them once a second and sends them up.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use otedama_shared::ipc::DataplaneCounters;
use otedama_shared::sv1::ErrorCode;

const REJECT_CODES: [ErrorCode; 6] = [
    ErrorCode::Other,
    ErrorCode::JobNotFound,
    ErrorCode::Duplicate,
    ErrorCode::LowDifficulty,
    ErrorCode::UnauthorizedWorker,
    ErrorCode::NotSubscribed,
];

#[derive(Default)]
pub struct Counters {
    pub connections: AtomicU64,
    pub shares_accepted: AtomicU64,
    /// Accepted difficulty, in millionths, so it can be summed atomically as an integer.
    pub accepted_difficulty_micro: AtomicU64,
    pub block_candidates: AtomicU64,
    rejected: [AtomicU64; 6],
}

impl Counters {
    pub fn rejected(&self, code: ErrorCode) {
        let index = REJECT_CODES
            .iter()
            .position(|c| *c == code)
            .expect("every code is listed");
        self.rejected[index].fetch_add(1, Relaxed);
    }

    pub fn accepted(&self, difficulty: f64) {
        self.shares_accepted.fetch_add(1, Relaxed);
        self.accepted_difficulty_micro
            .fetch_add((difficulty * 1e6) as u64, Relaxed);
    }

    pub fn snapshot(&self) -> DataplaneCounters {
        let by_code: Vec<(i32, u64)> = REJECT_CODES
            .iter()
            .zip(&self.rejected)
            .map(|(c, n)| (*c as i32, n.load(Relaxed)))
            .collect();
        DataplaneCounters {
            connections: self.connections.load(Relaxed),
            shares_accepted: self.shares_accepted.load(Relaxed),
            shares_rejected: by_code.iter().map(|(_, n)| n).sum(),
            shares_rejected_by_code: by_code,
            accepted_difficulty_sum: self.accepted_difficulty_micro.load(Relaxed) as f64 / 1e6,
            block_candidates: self.block_candidates.load(Relaxed),
        }
    }
}
