//! Found blocks on their way to the node: what each answer to `submitblock` means, and a
//! bounded queue that a few submitter threads drain, the candidates that can still win
//! first.
//!
//! Guarantees (issue 15):
//! - A block is only called rejected on a final answer from the node. A lost request, a
//!   lost or late reply, an HTTP error page, or a node still warming up (-28) are retried,
//!   and before each retry the node is asked (`getblockheader`) whether it has the block
//!   already, so a block the node took before its answer was lost is credited, once.
//! - `duplicate` means the node has the block, and `inconclusive` that it kept the block
//!   off its best chain for now: either way the chain is asked, and the block is accepted
//!   if it is on the active chain. (A block the node took before its answer was lost comes
//!   back as `duplicate` and is on the chain; one that lost a race at its height is not.)
//! - A candidate whose previous block is no longer the pool's tip cannot win: it is
//!   recorded as stale without a round trip to the node, unless it may have been submitted
//!   before (recovered after a restart), in which case the node is asked first.
//! - Candidates at the greatest height go first; a flood of candidates from one miner
//!   cannot hold an honest miner's newer block behind it.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::blocks::STALE_CANDIDATE_REASON_PREFIX;
use crate::rpc::{RpcClient, RpcError};

/// Bitcoin Core's RPC_IN_WARMUP: the node is loading and will answer later.
const RPC_IN_WARMUP: i64 = -28;
/// Bitcoin Core's RPC_INVALID_ADDRESS_OR_KEY, which `getblockheader` answers for a block
/// the node does not know.
const RPC_INVALID_ADDRESS_OR_KEY: i64 = -5;

/// Candidates waiting for a submitter. Past this the lowest one (the oldest height, the
/// latest to arrive) is dropped: it is still in the share log, where the block scan finds
/// it again.
pub const BLOCK_CANDIDATES_QUEUED_MAX: usize = 4096;
/// Threads that submit at once, so one slow `submitblock` does not hold the others.
pub const SUBMITTER_THREADS: usize = 4;
/// Seconds a `submitblock` may take before the node is asked whether it has the block.
pub const SUBMIT_READ_TIMEOUT_S: u64 = 10;
/// Back-off between attempts while the node gives no final answer.
const SUBMIT_RETRY_DELAY_MIN_MS: u64 = 200;
const SUBMIT_RETRY_DELAY_MAX_MS: u64 = 5_000;

/// What one answer to `submitblock` means for the block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The node has the block and found it valid.
    Accepted,
    /// A final refusal, with the node's reason.
    Rejected(String),
    /// The node took the block but did not say it is on its best chain: ask the chain.
    AskChain(String),
    /// No answer the block can be judged by: ask whether the node has it, then retry.
    NoAnswer(String),
}

/// Reads one answer to `submitblock` (BIP22 results, Bitcoin Core error codes).
pub fn judge_submit_answer(answer: &Result<Option<String>, RpcError>) -> Verdict {
    match answer {
        Ok(None) => Verdict::Accepted,
        // The node has the block already. Litecoin Core 0.21 (Bitcoin Core 0.21's code)
        // also says `duplicate` for a block it keeps off its best chain, so the chain is
        // asked: on it, the block is ours to credit; beside it, it lost a race.
        Ok(Some(reason))
            if reason == "duplicate"
                || reason == "inconclusive"
                || reason == "duplicate-inconclusive" =>
        {
            Verdict::AskChain(reason.clone())
        }
        Ok(Some(reason)) => Verdict::Rejected(reason.clone()),
        Err(RpcError::Node { code, message, .. }) if *code != RPC_IN_WARMUP => {
            Verdict::Rejected(format!("rpc-error {code}: {message}"))
        }
        Err(error) => Verdict::NoAnswer(error.to_string()),
    }
}

/// Where the node has a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainPlace {
    /// On its active chain.
    Active,
    /// Known, but off the active chain (a side branch, or invalid).
    Aside,
    /// Not known to the node.
    Unknown,
}

/// Asks the node where block `hash` (display hex) is. `Err` when it did not answer.
pub fn chain_place(rpc: &RpcClient, hash: &str) -> Result<ChainPlace, RpcError> {
    match rpc.call("getblockheader", serde_json::json!([hash])) {
        Ok(header) if header["confirmations"].as_i64().unwrap_or(-1) >= 1 => Ok(ChainPlace::Active),
        Ok(_) => Ok(ChainPlace::Aside),
        Err(RpcError::Node { code, .. }) if code == RPC_INVALID_ADDRESS_OR_KEY => {
            Ok(ChainPlace::Unknown)
        }
        Err(error) => Err(error),
    }
}

/// Times `chain_place_when_answered` asks before it gives up, so that a node that keeps
/// refusing `getblockheader` cannot hold a submitter for ever (about half a minute with
/// the back-off).
pub const CHAIN_ASKS_MAX: u32 = 10;

/// `chain_place`, asked again (with back-off) until the node answers, at most
/// `CHAIN_ASKS_MAX` times; the last error if it never did.
pub fn chain_place_when_answered(rpc: &RpcClient, hash: &str) -> Result<ChainPlace, RpcError> {
    ask_with_retries(
        CHAIN_ASKS_MAX,
        |delay_ms| std::thread::sleep(Duration::from_millis(delay_ms)),
        |error: &RpcError, retry_in_ms| {
            tracing::warn!(%hash, %error, retry_in_ms, "cannot ask the node about a block; retrying");
        },
        || chain_place(rpc, hash),
    )
}

/// The pauses between attempts while the node gives no final answer: doubling from
/// `SUBMIT_RETRY_DELAY_MIN_MS`, then `SUBMIT_RETRY_DELAY_MAX_MS` for ever.
fn retry_delays_ms() -> impl Iterator<Item = u64> {
    std::iter::successors(Some(SUBMIT_RETRY_DELAY_MIN_MS), |delay_ms| {
        Some((delay_ms * 2).min(SUBMIT_RETRY_DELAY_MAX_MS))
    })
}

/// `ask` until it succeeds, at most `asks_max` times, pausing by `retry_delays_ms` in
/// between; the last error if it never did.
fn ask_with_retries<T, E>(
    asks_max: u32,
    mut pause: impl FnMut(u64),
    mut note_retry: impl FnMut(&E, u64),
    mut ask: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let mut delays_ms = retry_delays_ms();
    let mut asked = 1;
    loop {
        match ask() {
            Ok(answer) => return Ok(answer),
            Err(error) if asked >= asks_max => return Err(error),
            Err(error) => {
                let delay_ms = delays_ms.next().expect("the delays never end");
                note_retry(&error, delay_ms);
                pause(delay_ms);
                asked += 1;
            }
        }
    }
}

/// Submits a block until the node gives an answer it can be judged by. Returns `None`
/// when the block is on the node (accepted), or the reason it is not. `can_still_win`
/// says whether the block's previous block is still the pool's tip; once the node has
/// said it does not know the block and it can no longer win, it is recorded stale.
pub fn submit_until_settled(
    rpc: &RpcClient,
    block_hex: &str,
    hash: &str,
    can_still_win: &dyn Fn() -> bool,
) -> Option<String> {
    settle_block(
        hash,
        || judge_submit_answer(&rpc.submit_block(block_hex)),
        || chain_place(rpc, hash),
        can_still_win,
        |delay_ms| std::thread::sleep(Duration::from_millis(delay_ms)),
    )
}

/// The submission loop of every coin: `submit` once and judge the answer, ask the chain
/// (`place`) whenever the answer alone does not settle it, and `pause` by
/// `retry_delays_ms` before trying again. `None` once the block is on the active chain,
/// else the final reason it is not. Invariant: a block is never called lost on an answer
/// that could be a lost reply; only the node's final refusal, the chain not holding it
/// on its active chain after the node took it, or the node not knowing it once it can no
/// longer win end the loop.
pub fn settle_block<E: std::fmt::Display>(
    name: &str,
    mut submit: impl FnMut() -> Verdict,
    mut place: impl FnMut() -> Result<ChainPlace, E>,
    can_still_win: &dyn Fn() -> bool,
    mut pause: impl FnMut(u64),
) -> Option<String> {
    let mut delays_ms = retry_delays_ms();
    loop {
        let why = match submit() {
            Verdict::Accepted => return None,
            Verdict::Rejected(reason) => return Some(reason),
            Verdict::AskChain(reason) => match place() {
                Ok(ChainPlace::Active) => return None,
                Ok(_) => return Some(reason),
                Err(error) => format!("{reason}, then asking the chain: {error}"),
            },
            Verdict::NoAnswer(why) => match place() {
                Ok(ChainPlace::Active) => return None,
                Ok(ChainPlace::Unknown) if !can_still_win() => {
                    return Some(format!("{STALE_CANDIDATE_REASON_PREFIX} (after: {why})"))
                }
                _ => why,
            },
        };
        let delay_ms = delays_ms.next().expect("the delays never end");
        tracing::warn!(block = %name, reason = %why, retry_in_ms = delay_ms, "block not settled on the node; retrying");
        pause(delay_ms);
    }
}

/// Where a candidate came from, which decides whether it may have been submitted before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CandidateSource {
    /// Straight from a data plane, in this process's life: never submitted before.
    Live,
    /// Found again in a share log (after a restart, or a lost message): a process before
    /// this one may have submitted it.
    Recovered,
}

/// A place in the queue: greater heights first, then earlier arrivals first. The map's
/// last key is served next and its first key is the one dropped when the queue is full.
type QueueKey = (u64, std::cmp::Reverse<u64>);

struct QueueState<T> {
    queued: BTreeMap<QueueKey, ([u8; 32], T)>,
    /// Hashes queued or being submitted: a candidate seen twice (live and recovered) is
    /// submitted once.
    pending: HashSet<[u8; 32]>,
    arrivals: u64,
}

/// The submitters' queue: bounded, greatest height first, each block hash once.
pub struct CandidateQueue<T> {
    state: Mutex<QueueState<T>>,
    ready: Condvar,
}

impl<T> Default for CandidateQueue<T> {
    fn default() -> Self {
        CandidateQueue {
            state: Mutex::new(QueueState {
                queued: BTreeMap::new(),
                pending: HashSet::new(),
                arrivals: 0,
            }),
            ready: Condvar::new(),
        }
    }
}

/// What `CandidateQueue::push` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The same block is queued or being submitted already.
    AlreadyPending,
    /// Queued, and the lowest candidate (this block hash) was dropped to stay in bounds.
    QueuedDropping([u8; 32]),
}

impl<T> CandidateQueue<T> {
    pub fn push(&self, hash: [u8; 32], height: u64, item: T) -> Pushed {
        let mut state = self.state.lock().expect("queue lock");
        if !state.pending.insert(hash) {
            return Pushed::AlreadyPending;
        }
        state.arrivals += 1;
        let key = (height, std::cmp::Reverse(state.arrivals));
        state.queued.insert(key, (hash, item));
        let mut pushed = Pushed::Queued;
        if state.queued.len() > BLOCK_CANDIDATES_QUEUED_MAX {
            let (_, (lowest, _)) = state.queued.pop_first().expect("the queue is not empty");
            state.pending.remove(&lowest);
            pushed = Pushed::QueuedDropping(lowest);
        }
        drop(state);
        self.ready.notify_one();
        pushed
    }

    /// The best candidate, waiting for one; it stays pending until `done`.
    pub fn pop(&self) -> ([u8; 32], T) {
        let mut state = self.state.lock().expect("queue lock");
        loop {
            if let Some((_, item)) = state.queued.pop_last() {
                return item;
            }
            state = self.ready.wait(state).expect("queue lock");
        }
    }

    /// The candidate `hash` is recorded (or given up): it may be queued again.
    pub fn done(&self, hash: &[u8; 32]) {
        self.state.lock().expect("queue lock").pending.remove(hash);
    }

    pub fn is_pending(&self, hash: &[u8; 32]) -> bool {
        self.state
            .lock()
            .expect("queue lock")
            .pending
            .contains(hash)
    }

    pub fn len(&self) -> usize {
        self.state.lock().expect("queue lock").queued.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A seeded walk through what a node can answer: `settle_block` ends only on an
    /// answer that settles the block, and says accepted only when the node took it or the
    /// chain holds it; a stale verdict needs the node not to know the block and the block
    /// to be unable to win. 2,000 walks of up to 12 answers each.
    #[test]
    fn a_block_is_settled_only_by_an_answer_that_settles_it() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |below: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % below
        };
        for _ in 0..2_000 {
            let can_win = next(2) == 0;
            let answers: Vec<(u64, u64)> = (0..12).map(|_| (next(4), next(4))).collect();
            let (mut submits, mut places, mut pauses) = (0usize, 0usize, 0usize);
            let mut last = (None, None);
            let outcome = settle_block(
                "b",
                || {
                    // The last answer of a walk always settles it, so every walk ends.
                    let verdict = match answers.get(submits).map(|a| a.0).unwrap_or(2) {
                        0 => Verdict::NoAnswer("lost".into()),
                        1 => Verdict::AskChain("duplicate".into()),
                        2 => Verdict::Rejected("bad".into()),
                        _ => Verdict::Accepted,
                    };
                    submits += 1;
                    last.0 = Some(verdict.clone());
                    verdict
                },
                || {
                    let place = match answers.get(places).map(|a| a.1).unwrap_or(0) {
                        0 => Err("down"),
                        1 => Ok(ChainPlace::Active),
                        2 => Ok(ChainPlace::Aside),
                        _ => Ok(ChainPlace::Unknown),
                    };
                    places += 1;
                    last.1 = Some(place);
                    place
                },
                &|| can_win,
                |_| pauses += 1,
            );
            assert_eq!(pauses + 1, submits, "one pause between attempts");
            let (verdict, place) = last;
            let asked_after_last_submit = places == submits
                && !matches!(verdict, Some(Verdict::Accepted | Verdict::Rejected(_)));
            let place = place.filter(|_| asked_after_last_submit);
            match outcome {
                None => assert!(
                    verdict == Some(Verdict::Accepted) || place == Some(Ok(ChainPlace::Active)),
                    "{verdict:?} {place:?}"
                ),
                Some(reason) if reason.starts_with(STALE_CANDIDATE_REASON_PREFIX) => {
                    assert!(!can_win);
                    assert_eq!(verdict, Some(Verdict::NoAnswer("lost".into())));
                    assert_eq!(place, Some(Ok(ChainPlace::Unknown)));
                }
                Some(reason) => match verdict {
                    Some(Verdict::Rejected(_)) => assert_eq!(reason, "bad"),
                    Some(Verdict::AskChain(_)) => {
                        assert!(matches!(
                            place,
                            Some(Ok(ChainPlace::Aside | ChainPlace::Unknown))
                        ))
                    }
                    other => panic!("settled as {reason:?} on {other:?} then {place:?}"),
                },
            }
        }
    }

    /// The node is asked exactly `CHAIN_ASKS_MAX` times, with pauses doubling up to
    /// `SUBMIT_RETRY_DELAY_MAX_MS` and never past it; an answer at the last ask is taken.
    #[test]
    fn chain_asks_stop_at_their_limit_and_pauses_at_theirs() {
        let mut asks = 0;
        let mut pauses = Vec::new();
        let outcome: Result<(), u32> = ask_with_retries(
            CHAIN_ASKS_MAX,
            |delay_ms| pauses.push(delay_ms),
            |_, _| {},
            || {
                asks += 1;
                Err(asks)
            },
        );
        assert_eq!(outcome, Err(CHAIN_ASKS_MAX));
        assert_eq!(asks, CHAIN_ASKS_MAX);
        assert_eq!(
            pauses,
            [200, 400, 800, 1_600, 3_200, 5_000, 5_000, 5_000, 5_000]
        );
        assert_eq!(SUBMIT_RETRY_DELAY_MAX_MS, 5_000);
        let mut asks = 0;
        let outcome: Result<u32, ()> = ask_with_retries(
            CHAIN_ASKS_MAX,
            |_| {},
            |_, _| {},
            || {
                asks += 1;
                if asks == CHAIN_ASKS_MAX {
                    Ok(asks)
                } else {
                    Err(())
                }
            },
        );
        assert_eq!(outcome, Ok(CHAIN_ASKS_MAX));
    }

    #[test]
    fn answers_are_judged_as_bip22_and_bitcoin_core_give_them() {
        let node = |code: i64| {
            Err(RpcError::Node {
                method: "submitblock".into(),
                code,
                message: "m".into(),
            })
        };
        assert_eq!(judge_submit_answer(&Ok(None)), Verdict::Accepted);
        assert_eq!(
            judge_submit_answer(&Ok(Some("duplicate".into()))),
            Verdict::AskChain("duplicate".into())
        );
        assert_eq!(
            judge_submit_answer(&Ok(Some("inconclusive".into()))),
            Verdict::AskChain("inconclusive".into())
        );
        assert_eq!(
            judge_submit_answer(&Ok(Some("high-hash".into()))),
            Verdict::Rejected("high-hash".into())
        );
        assert!(matches!(
            judge_submit_answer(&node(-28)),
            Verdict::NoAnswer(_)
        ));
        assert_eq!(
            judge_submit_answer(&node(-22)),
            Verdict::Rejected("rpc-error -22: m".into())
        );
        let lost = Err(RpcError::Unreachable {
            url: "u".into(),
            detail: "timed out reading response".into(),
        });
        assert!(matches!(judge_submit_answer(&lost), Verdict::NoAnswer(_)));
        let error_page = Err(RpcError::Malformed {
            method: "submitblock".into(),
            detail: "503".into(),
        });
        assert!(matches!(
            judge_submit_answer(&error_page),
            Verdict::NoAnswer(_)
        ));
    }

    #[test]
    fn the_queue_serves_the_greatest_height_first_and_each_hash_once() {
        let queue = CandidateQueue::default();
        assert_eq!(queue.push([1; 32], 10, "a"), Pushed::Queued);
        assert_eq!(queue.push([2; 32], 12, "b"), Pushed::Queued);
        assert_eq!(queue.push([3; 32], 12, "c"), Pushed::Queued);
        assert_eq!(queue.push([2; 32], 12, "b again"), Pushed::AlreadyPending);
        assert_eq!(queue.pop(), ([2; 32], "b"));
        assert_eq!(queue.pop(), ([3; 32], "c"));
        // Popped but not done: still pending.
        assert_eq!(queue.push([2; 32], 12, "b"), Pushed::AlreadyPending);
        queue.done(&[2; 32]);
        assert_eq!(queue.push([2; 32], 12, "b"), Pushed::Queued);
        assert_eq!(queue.pop(), ([2; 32], "b"));
        assert_eq!(queue.pop(), ([1; 32], "a"));
    }

    #[test]
    fn a_full_queue_drops_its_lowest_candidate() {
        let queue = CandidateQueue::default();
        for index in 0..BLOCK_CANDIDATES_QUEUED_MAX as u64 {
            let mut hash = [0u8; 32];
            hash[..8].copy_from_slice(&index.to_le_bytes());
            assert_eq!(queue.push(hash, 100 + index, ()), Pushed::Queued);
        }
        assert_eq!(queue.len(), BLOCK_CANDIDATES_QUEUED_MAX);
        let lowest = [0u8; 32];
        assert_eq!(
            queue.push([0xff; 32], 5, ()),
            Pushed::QueuedDropping([0xff; 32])
        );
        assert!(queue.is_pending(&lowest));
        assert_eq!(
            queue.push([0xee; 32], 10_000, ()),
            Pushed::QueuedDropping(lowest)
        );
        assert_eq!(queue.len(), BLOCK_CANDIDATES_QUEUED_MAX);
        assert!(!queue.is_pending(&lowest));
        assert_eq!(queue.pop().0, [0xee; 32]);
    }
}
