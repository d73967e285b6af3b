//! Named limits of the Stratum front end. Every limit carries its unit last and has a test
//! at its edge in the module that enforces it.

/// Longest JSON-RPC line a miner may send, newline included. `mining.submit` with version
/// rolling is under 250 bytes; 4 KiB leaves room for long worker names and passwords.
pub const STRATUM_LINE_BYTES_MAX: usize = 4096;

/// Longest worker name accepted by `mining.authorize`.
pub const WORKER_NAME_BYTES_MAX: usize = 128;

/// Distinct workers one connection may authorize (proxies multiplex many workers).
pub const WORKERS_PER_CONNECTION_MAX: usize = 64;

/// Jobs a connection remembers the difficulty of; older job ids are reported stale.
pub const JOBS_REMEMBERED_MAX: usize = 16;

/// Seconds a job re-sent at a new difficulty (V1 `mining.set_difficulty` with the job
/// again, V2 `SetTarget`) still takes shares meeting the difficulty it had before, credited
/// at that difficulty: they were in flight when the miner heard of the change. The pool's
/// clock has whole seconds, so the grace lasts between this less one and this. Short, since
/// a miner that raised its difficulty and moved at once is credited at the old, easier one
/// meanwhile.
pub const DIFFICULTY_CHANGE_GRACE_S: u64 = 2;

/// Seconds a share's ntime may run ahead of the pool's clock (Bitcoin's own future limit).
pub const NTIME_FUTURE_SECONDS_MAX: u64 = 7200;

/// Size in bytes of the extranonce1 the pool assigns to each connection.
pub const EXTRANONCE1_BYTES: usize = 4;

/// Size in bytes of the extranonce2 a miner rolls.
pub const EXTRANONCE2_BYTES: usize = 4;

/// Largest coinbase scriptSig consensus allows.
pub const COINBASE_SCRIPT_SIG_BYTES_MAX: usize = 100;

/// Lowest difficulty an operator may configure as the pool's floor (`difficulty_min`).
/// Below about 2^-32 every SHA256d hash meets the share target, so nothing lower means
/// anything; load tests run there so that a generator needs no mining.
pub const DIFFICULTY_MIN: f64 = 1e-10;
/// Highest difficulty a miner may be given.
pub const DIFFICULTY_MAX: f64 = 1e15;

const _: () =
    assert!(EXTRANONCE1_BYTES + EXTRANONCE2_BYTES + 8 + 40 <= COINBASE_SCRIPT_SIG_BYTES_MAX);

/// Data-plane processes on one host. Each process takes `cores` slices of the one-byte
/// extranonce1 partition space, so processes × cores must also stay within 256.
pub const DATAPLANE_PROCESSES_MAX: usize = 64;

/// Largest Stratum V2 frame payload the pool accepts from a miner. The largest message a
/// miner sends is SetupConnection, under 1.3 KB with every string at its 255-byte limit;
/// anything longer is refused as soon as its header is decrypted.
pub const SV2_PAYLOAD_BYTES_MAX: usize = 4096;
