//! The journal rebuilds the exact exchange: a seeded stream of 1,000,000 commands goes
//! through `Dex` (journal first, then apply), and the state is rebuilt twice, from the
//! journal alone and from a snapshot plus the journal's tail, with the same state hash.

use otedama_dex::exchange::Command;
use otedama_dex::journal::{decode, encode, Dex, Journal, JournalError};
use otedama_dex::sim::{ltc_btc, Workload};

const COMMANDS: usize = 1_000_000;
const SNAPSHOT_AT: usize = 700_000;

#[test]
fn a_million_commands_replay_to_the_same_state_from_scratch_and_from_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dex");
    let commands = Workload::new(42, 1_000)
        .with_replaces(20)
        .record(&mut ltc_btc(), COMMANDS);

    let live_hash = {
        let mut dex = Dex::open(&path, false, ltc_btc()).unwrap();
        let mut events = Vec::new();
        for (i, command) in commands.iter().enumerate() {
            events.clear();
            dex.submit(command, &mut events)
                .unwrap()
                .unwrap_or_else(|reject| panic!("command {i} refused: {reject}"));
            if i + 1 == SNAPSHOT_AT {
                dex.journal.save_snapshot(&dex.exchange).unwrap();
            }
        }
        assert_eq!(dex.exchange.applied(), COMMANDS as u64);
        dex.exchange.state_hash()
    };

    let journal = Journal::open(&path, false).unwrap();
    let mut from_scratch = ltc_btc();
    assert_eq!(
        journal.replay_into(&mut from_scratch).unwrap(),
        COMMANDS as u64
    );
    let snapshot = journal.latest_snapshot().unwrap().expect("a snapshot");
    assert_eq!(snapshot.applied, SNAPSHOT_AT as u64);
    let from_snapshot = journal.recover(ltc_btc()).unwrap();
    assert_eq!(from_scratch.state_hash(), live_hash);
    assert_eq!(from_snapshot.state_hash(), live_hash);
    assert_eq!(from_snapshot.state(), from_scratch.state());
    assert!(from_scratch.order_count(0) > 0, "a trivial book");
}

#[test]
fn a_restart_carries_on_where_the_journal_ends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dex");
    let commands = Workload::new(7, 50).record(&mut ltc_btc(), 20_000);
    let mut events = Vec::new();
    {
        let mut dex = Dex::open(&path, false, ltc_btc()).unwrap();
        for command in &commands[..12_345] {
            dex.submit(command, &mut events).unwrap().unwrap();
        }
        // Dropped without a snapshot: what a kill -9 leaves.
    }
    let mut dex = Dex::open(&path, false, ltc_btc()).unwrap();
    assert_eq!(dex.exchange.applied(), 12_345);
    for command in &commands[12_345..] {
        dex.submit(command, &mut events).unwrap().unwrap();
    }
    let mut straight = ltc_btc();
    for command in &commands {
        straight.handle(command, &mut events).unwrap();
    }
    assert_eq!(dex.exchange.state_hash(), straight.state_hash());
}

#[test]
fn commands_round_trip_and_bad_bytes_are_refused() {
    let commands = Workload::new(3, 10)
        .with_replaces(50)
        .record(&mut ltc_btc(), 5_000);
    let mut bytes = Vec::new();
    let mut widest = 0;
    for command in &commands {
        bytes.clear();
        encode(command, &mut bytes);
        widest = widest.max(bytes.len());
        assert_eq!(decode(&bytes), Some(*command));
        // Every kind fits the journal's encode buffer (`COMMAND_BYTES_MAX`) without growing
        // it; the encoding has a fixed length per kind, so the workload's kinds cover it.
        assert!(
            bytes.len() <= otedama_dex::journal::COMMAND_BYTES_MAX,
            "{command:?} takes {} bytes",
            bytes.len()
        );
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None, "truncated");
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer), None, "trailing byte");
    }
    // The bound is the widest command exactly: a new field that makes a command longer
    // must move it, and a bound larger than any command would hide that.
    assert_eq!(widest, otedama_dex::journal::COMMAND_BYTES_MAX);
    assert_eq!(decode(&[]), None);
    assert_eq!(decode(&[9]), None);
    let mut place = Vec::new();
    encode(
        commands
            .iter()
            .find(|c| matches!(c, Command::Place { .. }))
            .unwrap(),
        &mut place,
    );
    // An unknown side.
    place[11] = 7;
    assert_eq!(decode(&place), None);
}

#[test]
fn a_corrupt_entry_stops_recovery_with_its_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dex");
    let commands = Workload::new(9, 5).record(&mut ltc_btc(), 100);
    {
        let mut dex = Dex::open(&path, false, ltc_btc()).unwrap();
        let mut events = Vec::new();
        for command in &commands {
            dex.submit(command, &mut events).unwrap().unwrap();
        }
    }
    {
        let db = rocksdb::DB::open_default(&path).unwrap();
        let mut key = vec![b'j'];
        key.extend_from_slice(&50u64.to_be_bytes());
        db.put(key, [0xFF]).unwrap();
    }
    match Dex::open(&path, false, ltc_btc()) {
        Err(JournalError::Corrupt(50)) => {}
        other => panic!("expected entry 50 to be corrupt, got {:?}", other.err()),
    }
}
