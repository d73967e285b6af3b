//! The exchange across a control-plane failover (issue 20), against a real three-server
//! NATS JetStream cluster: two control planes, each with its ledger and its exchange; only
//! the leader takes exchange commands, every write it makes goes first to the replicated
//! exchange stream, and the standby holds the same book, balances, accounts and API keys.
//! The leader dies between a deposit's ledger write and its exchange command; the standby
//! takes over, fences both streams and gives that deposit exactly once; a write the former
//! leader still had on its way cannot land after the fence; a write of the new leader's
//! that the stream refuses stops the exchange until the next pass has settled what it left
//! pending; and the former leader, restarted, follows the new one.

use std::sync::Mutex;
use std::time::Duration;

use otedama_cluster::leader::LeaderLease;
use otedama_cluster::ledger::{LedgerStream, ReplicatedLog, StreamReplicator};
use otedama_controlplane::dex::{
    build_exchange, follow_leadership, DexError, DexService, MarketConfig, OrderRequest,
    Replication,
};
use otedama_ledger::ledger::{Ledger, Transfer, TransferKind, TransferState, EXCHANGE_ACCOUNT};
use otedama_tests::nats::NatsCluster;
use otedama_tests::wait_until;
use serde_json::{json, Value};

const COIN: u64 = 100_000_000;

fn markets() -> Vec<MarketConfig> {
    vec![MarketConfig {
        symbol: "LTC-BTC".into(),
        lot_size: "0.01".into(),
        tick_size: "0.00000001".into(),
        min_size: 1,
    }]
}

struct ControlPlane {
    lease: Option<LeaderLease>,
    ledger: Mutex<Ledger>,
    ledger_stream: LedgerStream,
    exchange_stream: LedgerStream,
    dex: DexService,
    dir: std::path::PathBuf,
}

impl ControlPlane {
    fn start(urls: &[String], dir: &std::path::Path, name: &str) -> Self {
        Self::start_bounded(urls, dir, name, 32 << 20)
    }

    /// With user commands refused once the exchange stream holds `bytes_max` bytes.
    fn start_bounded(urls: &[String], dir: &std::path::Path, name: &str, bytes_max: u64) -> Self {
        let mut ledger = Ledger::open(&dir.join("ledger")).unwrap();
        let ledger_stream = LedgerStream::start(urls.to_vec(), 3).unwrap();
        let exchange_stream =
            LedgerStream::start_for(ReplicatedLog::exchange(32 << 20), urls.to_vec(), 3).unwrap();
        let lease =
            LeaderLease::start(urls.to_vec(), 3, &dir.join("identity"), name.into()).unwrap();
        ledger.set_replicator(Some(Box::new(StreamReplicator {
            stream: ledger_stream.clone(),
            leading: lease.status(),
        })));
        let dex = DexService::open_replicated(
            &dir.join("dex"),
            build_exchange("LTC", &markets()).unwrap(),
            Replication::new(exchange_stream.clone(), lease.status(), bytes_max),
        )
        .unwrap();
        ControlPlane {
            lease: Some(lease),
            ledger: Mutex::new(ledger),
            ledger_stream,
            exchange_stream,
            dex,
            dir: dir.to_path_buf(),
        }
    }

    fn leads(&self) -> bool {
        self.lease
            .as_ref()
            .is_some_and(|lease| lease.status().held())
    }

    /// What the payout thread does at each pass (`PayoutRunner::follow_cluster`): the
    /// ledger read to the stream's end, then the exchange followed or taken over. Tried
    /// again while a pass fails, as the next pass would.
    fn pass(&mut self) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let leads = self.leads();
            let result =
                otedama_cluster::ledger::catch_up_shared(&self.ledger_stream, &self.ledger)
                    .and_then(|_| follow_leadership(&mut self.dex, &self.ledger, leads, false));
            match result {
                Ok(took_over) => return took_over,
                Err(error) => {
                    assert!(std::time::Instant::now() < deadline, "{error:#}");
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }

    fn order(
        &mut self,
        address: &str,
        side: &str,
        price: &str,
        quantity: &str,
    ) -> Result<(), DexError> {
        let request: OrderRequest = serde_json::from_value(json!({
            "market": "LTC-BTC",
            "side": side,
            "price": price,
            "quantity": quantity,
        }))
        .unwrap();
        self.dex.place(address, &request).map(|_| ())
    }

    /// Everything a miner sees of the exchange: the book, and each address's balances and
    /// orders.
    fn view(&self) -> Value {
        let accounts: Vec<Value> = ["miner-1", "miner-2", "miner-3"]
            .iter()
            .map(|address| self.dex.account_json(address).unwrap())
            .collect();
        json!({
            "book": self.dex.book_json("LTC-BTC").unwrap(),
            "trades": self.dex.trades_json("LTC-BTC").unwrap(),
            "accounts": accounts,
            "applied": self.dex.exchange().applied(),
            "exchange_account": self.ledger.lock().unwrap().balances(EXCHANGE_ACCOUNT).unwrap().mature,
        })
    }
}

#[test]
fn the_standby_runs_the_leaders_exchange_after_a_failover_without_a_deposit_lost_or_doubled() {
    let cluster = NatsCluster::start(3).unwrap();
    let urls = cluster.urls();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = ControlPlane::start(&urls, dir_a.path(), "cp-a");
    wait_until(Duration::from_secs(60), "cp-a leads", || a.leads()).unwrap();
    assert!(a.pass(), "the leader takes the exchange over");
    let mut b = ControlPlane::start(&urls, dir_b.path(), "cp-b");
    std::thread::sleep(Duration::from_secs(2));
    assert!(!b.leads(), "one leader");
    assert!(!b.pass());

    // Mined coins, mature, in the leader's ledger (the standby's follows).
    {
        let credits = [
            ("miner-1".to_string(), 5 * COIN),
            ("miner-2".to_string(), 5 * COIN),
        ]
        .into_iter()
        .collect();
        let mut ledger = a.ledger.lock().unwrap();
        ledger.credit_block("blk-1", &credits).unwrap();
        ledger.mature_block("blk-1").unwrap();
    }
    // Miners trade through the leader.
    {
        let mut ledger = a.ledger.lock().unwrap();
        a.dex
            .transfer(&mut ledger, "miner-1", 2 * COIN, 1, TransferKind::Deposit)
            .unwrap();
    }
    a.dex.credit_external("miner-2", "BTC", COIN).unwrap();
    let key = a
        .dex
        .create_key("miner-1", 1, 2)
        .unwrap()
        .expect("a new key");
    a.order("miner-1", "sell", "0.01000000", "1").unwrap();
    a.order("miner-2", "buy", "0.01000000", "0.5").unwrap();
    a.order("miner-2", "buy", "0.00900000", "0.25").unwrap();

    // The standby holds the same exchange, and takes no command.
    b.pass();
    assert_eq!(
        b.view(),
        a.view(),
        "the standby holds the leader's exchange"
    );
    assert_eq!(b.dex.authenticate(&key).as_deref(), Some("miner-1"));
    let refused = b.order("miner-2", "buy", "0.00800000", "0.01");
    assert!(
        matches!(refused, Err(DexError::Unavailable(_))),
        "{refused:?}"
    );
    let refused = b.dex.credit_external("miner-3", "BTC", COIN);
    assert!(
        matches!(refused, Err(DexError::Unavailable(_))),
        "{refused:?}"
    );

    // The leader dies between a deposit's ledger write and its exchange command.
    let pending = Transfer {
        id: a.ledger.lock().unwrap().next_transfer_id().unwrap(),
        kind: TransferKind::Deposit,
        account: "miner-2".into(),
        amount: COIN,
        exchange_sequence: a.dex.exchange().applied() + 1,
        state: TransferState::Pending,
        created_at_ms: 3,
    };
    a.ledger.lock().unwrap().begin_transfer(&pending).unwrap();
    let a_position = a.dex.replica_position().unwrap();
    let a_start = a.dex.start_count();
    let before = a.view();
    drop(a.lease.take());

    // The standby takes over: the deposit is given once, and the books balance.
    wait_until(Duration::from_secs(30), "cp-b leads", || b.leads()).unwrap();
    assert!(b.pass(), "the new leader takes the exchange over");
    assert!(
        b.dex.start_count() > a_start,
        "key challenge serials keep rising"
    );
    let after = b.view();
    for side in ["asks", "bids"] {
        assert_eq!(after["book"][side], before["book"][side], "the same {side}");
    }
    let miner_2_ltc = |view: &Value| view["accounts"][1]["balances"]["LTC"]["available"].clone();
    assert_ne!(
        miner_2_ltc(&after),
        miner_2_ltc(&before),
        "the deposit is given"
    );
    let pool_coin_in_exchange: u64 = b.dex.totals()["LTC"].try_into().unwrap();
    assert_eq!(
        after["exchange_account"].as_u64().unwrap(),
        pool_coin_in_exchange,
        "the ledger's exchange account is what the exchange holds of the pool's coin"
    );
    assert_eq!(
        pool_coin_in_exchange,
        3 * COIN,
        "2 LTC deposited, then 1 more, once"
    );
    assert!(!b.pass(), "taken over once");

    // A write the former leader still had on its way cannot land after the fence.
    let mut late = vec![b'a'];
    late.extend_from_slice(rocksdb::WriteBatch::default().data());
    let landed = a.exchange_stream.append(&late, a_position);
    assert!(landed.is_err(), "a stale exchange write landed: {landed:?}");

    // The new leader takes commands: a new account gets a new id, orders match.
    b.dex.credit_external("miner-3", "BTC", COIN).unwrap();
    b.order("miner-3", "buy", "0.01000000", "0.5").unwrap();
    let trades = b.dex.trades_json("LTC-BTC").unwrap();
    assert_eq!(trades.as_array().unwrap().len(), 2, "{trades}");

    // A write of the new leader's that the stream refuses (another write took its place)
    // leaves a deposit pending in the ledger: the exchange answers nothing more until the
    // next pass has read the stream and settled the deposit, once.
    let position = b.dex.replica_position().unwrap();
    b.exchange_stream.append(&late, position).unwrap();
    let failed = {
        let mut ledger = b.ledger.lock().unwrap();
        b.dex
            .transfer(&mut ledger, "miner-1", COIN / 2, 4, TransferKind::Deposit)
    };
    assert!(matches!(failed, Err(DexError::Internal(_))), "{failed:?}");
    let refused = b.order("miner-3", "buy", "0.00800000", "0.01");
    assert!(
        matches!(refused, Err(DexError::Unavailable(_))),
        "{refused:?}"
    );
    assert!(b.pass(), "taken over again");
    let pool_coin_in_exchange: u64 = b.dex.totals()["LTC"].try_into().unwrap();
    assert_eq!(
        pool_coin_in_exchange,
        3 * COIN + COIN / 2,
        "the deposit, given once"
    );
    assert_eq!(
        b.view()["exchange_account"].as_u64().unwrap(),
        pool_coin_in_exchange
    );
    b.order("miner-3", "buy", "0.00800000", "0.01").unwrap();

    // The former leader, restarted, follows the new one.
    let dir = a.dir.clone();
    drop(a);
    let mut a = ControlPlane::start(&urls, &dir, "cp-a");
    assert!(!a.pass());
    assert_eq!(a.view(), b.view(), "the former leader follows the new one");
    assert_eq!(a.dex.authenticate(&key).as_deref(), Some("miner-1"));
}

/// A full exchange stream refuses users' commands, not the writes that settle: a leader
/// still takes the exchange over (its fence goes into the stream's reserve) and keeps it.
#[test]
fn a_full_exchange_stream_refuses_commands_but_not_the_take_over() {
    let cluster = NatsCluster::start(3).unwrap();
    let urls = cluster.urls();
    let dir = tempfile::tempdir().unwrap();
    // Full once it holds a byte: the take-over's fence fills it.
    let mut a = ControlPlane::start_bounded(&urls, dir.path(), "cp-a", 1);
    wait_until(Duration::from_secs(60), "cp-a leads", || a.leads()).unwrap();
    assert!(a.pass(), "the take-over writes into the reserve");
    let refused = a.dex.credit_external("miner-1", "BTC", COIN);
    match refused {
        Err(DexError::Unavailable(why)) => assert!(why.contains("full"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(
        a.dex.leads(),
        "a full stream does not cost the leader its take-over"
    );
    assert!(!a.pass(), "nothing to take over again");
}
