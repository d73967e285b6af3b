//! Named limits of the Stratum front end. Every limit carries its unit last and has a test
//! at its edge in the module that enforces it.

/// Longest JSON-RPC line a miner may send, newline included. `mining.submit` with version
/// rolling is under 250 bytes; 4 KiB leaves room for long worker names and passwords.
pub const STRATUM_LINE_BYTES_MAX: usize = 4096;

/// Outbox capacity a connection keeps between sends, V1 or V2: share replies and
/// acknowledgements fit, a job (about 1.3 KB as a V1 notify with a 12-level branch, over a
/// kilobyte of V2 frames for an extended channel) is given back after sending.
pub const OUTBOX_KEEP_BYTES_MAX: usize = 256;

/// Empties a session's outbox once its bytes are sent, keeping at most
/// `OUTBOX_KEEP_BYTES_MAX` of capacity: an idle connection holds no job-sized buffer.
pub(crate) fn empty_outbox(outbox: &mut Vec<u8>) {
    if outbox.capacity() > OUTBOX_KEEP_BYTES_MAX {
        *outbox = Vec::new();
    } else {
        outbox.clear();
    }
}

/// Longest worker name accepted by `mining.authorize`.
pub const WORKER_NAME_BYTES_MAX: usize = 128;

/// Distinct workers one connection may authorize (proxies multiplex many workers).
pub const WORKERS_PER_CONNECTION_MAX: usize = 64;

/// Jobs a connection remembers the difficulty of; older job ids are reported stale.
pub const JOBS_REMEMBERED_MAX: usize = 16;

/// Ids of replaced jobs a core remembers, so a late share for one is told "stale" (code
/// 21) rather than "unknown"; older ids read as unknown. Four generations of live jobs:
/// a miner that lags by more than that is refused either way.
pub const STALE_JOB_IDS_REMEMBERED_MAX: usize = JOBS_REMEMBERED_MAX * 4;

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

/// The lowest network difficulty a miner's difficulty is capped at
/// (`WorkState::network_cap`). Above it, a miner is never held above the network's
/// difficulty, or it would not send the blocks whose hashes fall between. Below it is a
/// test chain such as regtest, where one hash in two is a block: capping there would make
/// every share a block and flood the node, so a miner may be held up to difficulty 1 (2^32
/// SHA256d hashes, 65,536 scrypt hashes). The main chains this pool mines, and their
/// testnets' minimum difficulties (1 for Bitcoin's, 16 in scrypt's units for Litecoin's),
/// are at or above it.
pub const NETWORK_DIFFICULTY_CAP_MIN: f64 = 1.0;

/// How many times more a share at the default floor costs the miner than it costs the pool.
///
/// The rule behind the default `difficulty_min`: every share costs the pool one hash of
/// its algorithm to validate, plus a fixed cost to parse, check, log durably and
/// acknowledge it, whatever its difficulty. A share at difficulty D costs the miner
/// `D × hashes_per_difficulty_one` hashes on average. At the floor that must be at least
/// `SHARE_COST_MARGIN` times the pool's cost, so a flood of shares at the floor always costs
/// the flooder more than the pool (and vardiff then raises it within seconds).
pub const SHARE_COST_MARGIN: f64 = 16.0;

/// What one share costs the pool, in hashes of `algorithm`. Measured on the development
/// machine (BENCHMARKS.md): the fixed cost is about 16 µs of CPU per durable share (124k
/// acked shares/s on two cores, generator included); one SHA256d header hash takes about
/// 0.13 µs (three SHA-NI compressions of 52 ns, less with the midstate), one scrypt hash
/// about 70 µs (14k/s on eight AVX2 lanes). So about 128 SHA256d hashes, and under 2
/// scrypt hashes.
pub fn pool_cost_per_share_hashes(algorithm: otedama_kernels::Algorithm) -> f64 {
    match algorithm {
        otedama_kernels::Algorithm::Sha256d => 128.0,
        otedama_kernels::Algorithm::Scrypt => 2.0,
    }
}

/// The default difficulty floor of `algorithm` (see `SHARE_COST_MARGIN`): about 4.8e-7
/// for SHA256d (2,048 hashes a share) and 4.9e-4 for Scrypt (32 hashes a share). An
/// operator may set a lower `difficulty_min` (load tests do, to need no mining), down to
/// `DIFFICULTY_MIN`, and the pool then says so in its log.
pub fn difficulty_floor(algorithm: otedama_kernels::Algorithm) -> f64 {
    SHARE_COST_MARGIN * pool_cost_per_share_hashes(algorithm)
        / algorithm.hashes_per_difficulty_one()
}

/// How often a miner may move its difficulty below what the pool measured for it
/// (`mining.suggest_difficulty` under vardiff's value), per
/// `DIFFICULTY_LOWERING_INTERVAL_S`. A miner that starts high and asks once for what
/// suits it is served; one that asks again and again to undo vardiff is held at vardiff's
/// value. A suggestion at or above the measured difficulty is always taken.
pub const DIFFICULTY_LOWERINGS_PER_INTERVAL_MAX: u32 = 1;
/// See `DIFFICULTY_LOWERINGS_PER_INTERVAL_MAX`.
pub const DIFFICULTY_LOWERING_INTERVAL_S: u64 = 300;

const _: () =
    assert!(EXTRANONCE1_BYTES + EXTRANONCE2_BYTES + 8 + 40 <= COINBASE_SCRIPT_SIG_BYTES_MAX);

/// Data-plane processes on one host. Each process takes `cores` slices of the one-byte
/// extranonce1 partition space, so processes × cores must also stay within 256.
pub const DATAPLANE_PROCESSES_MAX: usize = 64;

/// Largest Stratum V2 frame payload the pool accepts from a miner. The largest message a
/// miner sends is SetupConnection, under 1.3 KB with every string at its 255-byte limit;
/// anything longer is refused as soon as its header is decrypted.
pub const SV2_PAYLOAD_BYTES_MAX: usize = 4096;

/// Largest Stratum V2 frame payload a mining device (the CPU miner, the load generator)
/// accepts from a pool. What a pool sends a standard channel (NewMiningJob,
/// SetNewPrevHash, acknowledgements) is under 100 bytes a message; the margin lets a pool
/// with extension messages through, while a broken one cannot make a device buffer
/// without bound.
pub const SV2_DEVICE_PAYLOAD_BYTES_MAX: usize = SV2_PAYLOAD_BYTES_MAX * 16;
