//! Control-plane failover's ledger (issue 20), against a real three-server NATS JetStream
//! cluster: two control planes stand for leader; only the one holding the lease writes
//! its ledger, each write first made durable in the replicated ledger stream; the standby
//! applies the same writes and holds the same ledger; when the leader lets go, the
//! standby leads and writes on from the stream's last write, and the former leader can
//! no longer write. One NATS server is killed on the way. A write far over one NATS
//! message goes in chunks and is applied whole.

use std::collections::BTreeMap;
use std::time::Duration;

use otedama_cluster::leader::LeaderLease;
use otedama_cluster::ledger::{catch_up, LedgerStream, StreamReplicator};
use otedama_ledger::ledger::{Ledger, LedgerError};
use otedama_tests::nats::NatsCluster;
use otedama_tests::wait_until;

struct ControlPlane {
    lease: Option<LeaderLease>,
    ledger: Ledger,
    stream: LedgerStream,
    _dir: tempfile::TempDir,
}

impl ControlPlane {
    fn start(urls: &[String], name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(&dir.path().join("ledger")).unwrap();
        let stream = LedgerStream::start(urls.to_vec(), 3).unwrap();
        let lease = LeaderLease::start(urls.to_vec(), 3, &dir.path().join("identity"), name.into())
            .unwrap();
        ledger.set_replicator(Some(Box::new(StreamReplicator {
            stream: stream.clone(),
            leading: lease.status(),
        })));
        ControlPlane {
            lease: Some(lease),
            ledger,
            stream,
            _dir: dir,
        }
    }

    fn leads(&self) -> bool {
        self.lease
            .as_ref()
            .is_some_and(|lease| lease.status().held())
    }

    /// Applies the stream's new writes, trying again while a server's loss is being
    /// recovered from (a request to the killed server times out), as every pass does.
    fn catch_up(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while let Err(error) = catch_up(&self.stream, &mut self.ledger) {
            assert!(std::time::Instant::now() < deadline, "{error:#}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// A block credited, after catching up with the stream as every pass does.
    fn try_credit(&mut self, block: &str, account: &str, amount: u64) -> Result<(), LedgerError> {
        self.catch_up();
        let credits = BTreeMap::from([(account.to_string(), amount)]);
        self.ledger
            .credit_block_round(block, &credits, None)
            .map(|_| ())
    }

    /// `try_credit` until it is made, as the payout thread's passes do: a write whose
    /// outcome was unknown is found in the stream by the next catch-up, and the credit,
    /// keyed by its block, is then not made twice.
    fn credit(&mut self, block: &str, account: &str, amount: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while let Err(error) = self.try_credit(block, account, amount) {
            assert!(std::time::Instant::now() < deadline, "{error:#}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn state(
        &self,
    ) -> (
        BTreeMap<String, otedama_ledger::ledger::Balances>,
        usize,
        u64,
    ) {
        (
            self.ledger.all_balances().unwrap(),
            self.ledger.entries().unwrap().len(),
            self.ledger.replica_position().unwrap(),
        )
    }
}

#[test]
fn the_standby_holds_the_leaders_ledger_and_takes_over_without_a_write_lost_or_doubled() {
    let mut cluster = NatsCluster::start(3).unwrap();
    let urls = cluster.urls();
    let mut a = ControlPlane::start(&urls, "cp-a");
    wait_until(Duration::from_secs(60), "cp-a leads", || a.leads()).unwrap();
    let mut b = ControlPlane::start(&urls, "cp-b");
    std::thread::sleep(Duration::from_secs(2));
    assert!(!b.leads(), "one leader");

    for index in 0..20 {
        a.credit(&format!("blk-{index}"), "miner-1", 100 + index);
        if index == 8 {
            // A quorum remains.
            cluster.servers[2].kill_9();
        }
    }
    let refused = b.try_credit("blk-b", "miner-2", 7);
    assert!(
        matches!(refused, Err(LedgerError::Replication(_))),
        "{refused:?}"
    );
    b.catch_up();
    assert_eq!(
        b.state(),
        a.state(),
        "the standby holds the leader's ledger"
    );
    assert_eq!(a.state().2, 20, "one stream write per ledger write");

    // The leader stops cleanly: its lease goes at once and the standby leads.
    drop(a.lease.take());
    wait_until(Duration::from_secs(30), "cp-b leads", || b.leads()).unwrap();
    for index in 20..25 {
        b.credit(&format!("blk-{index}"), "miner-2", index);
    }
    let fenced = a.try_credit("blk-late", "miner-1", 1);
    assert!(
        matches!(fenced, Err(LedgerError::Replication(_))),
        "{fenced:?}"
    );
    a.catch_up();
    assert_eq!(a.state(), b.state(), "the former leader follows");
    let balances = b.ledger.all_balances().unwrap();
    let total: u64 = balances.values().map(|b| b.immature).sum();
    assert_eq!(
        total,
        (100..120).sum::<u64>() + (20..25).sum::<u64>(),
        "each credit once"
    );

    // A write far over one NATS message (a block credited to 40,000 accounts) goes in
    // chunks at consecutive positions, and the follower applies it whole.
    let credits: BTreeMap<String, u64> = (0..40_000u64)
        .map(|index| (format!("miner-{index:05}"), 1 + index))
        .collect();
    b.catch_up();
    let before = b.state().2;
    b.ledger
        .credit_block_round("blk-big", &credits, None)
        .unwrap();
    let after = b.state().2;
    eprintln!(
        "a credit to 40,000 accounts took stream positions {} to {after}",
        before + 1
    );
    assert!(
        after > before + 1,
        "the write went in chunks: positions {before} to {after}"
    );
    a.catch_up();
    assert_eq!(a.state(), b.state(), "the follower holds the chunked write");
    let total: u64 = a
        .ledger
        .all_balances()
        .unwrap()
        .values()
        .map(|balances| balances.immature)
        .sum();
    assert_eq!(
        total,
        (100..120).sum::<u64>() + (20..25).sum::<u64>() + (1..=40_000).sum::<u64>(),
        "the chunked credit once, whole"
    );

    // A writer killed between two chunks of a write (injected: only the first 2 of its 4
    // chunks reach the stream) leaves it unfinished. Neither control plane applies any
    // of it (its bytes are not even a write batch); the leader's next write voids it and
    // goes on; the follower voids it too and holds the same ledger.
    b.catch_up();
    let position = b.state().2;
    let _ = b
        .stream
        .append_cut_short(&vec![0xEE; 4 * 512 * 1024], position, 2);
    a.catch_up();
    assert_eq!(
        a.state().2,
        position,
        "an unfinished write is neither applied nor stepped over"
    );
    b.credit("blk-after-cut", "miner-2", 9);
    a.catch_up();
    assert_eq!(a.state(), b.state(), "both voided the unfinished write");
    assert_eq!(
        b.state().2,
        position + 4,
        "past the two chunks, the void marker and the next write"
    );
    assert_eq!(
        b.ledger.all_balances().unwrap()["miner-2"].immature,
        (20..25).sum::<u64>() + 9
    );
}
