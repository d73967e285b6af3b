//! Host identity in cluster mode (issue 20), against a real three-server NATS JetStream
//! cluster: every data-plane process holds a slot of the cluster by a lease and starts
//! every extranonce1 with it, so two hosts never hand out the same extranonce1; a second
//! machine under a name in use waits; a process that loses its lease closes its miners
//! and refuses new ones until it holds it again; a restart after a crash keeps its slot;
//! a process whose slot another holds gives it up, ends, and starts again on a free one.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use otedama_cluster::host::{
    slot_key, HostLease, HostLeaseConfig, HOST_BUCKET, HOST_LEASE_RENEW_MS, HOST_LEASE_TTL_MS,
    HOST_SLOT_TAKEN_GIVE_UP_MS,
};
use otedama_tests::nats::{cluster_flags, put_key, NatsCluster};
use otedama_tests::{
    closed_by_peer, metric_value, wait_until, StratumTestClient, SyntheticPool,
    SYNTHETIC_PAYOUT_ADDRESS,
};

fn lease_config(
    urls: &[String],
    host: &str,
    identity: &std::path::Path,
    wait_ms: u64,
) -> HostLeaseConfig {
    HostLeaseConfig {
        nats_urls: urls.to_vec(),
        host: host.into(),
        process: 0,
        identity_file: identity.to_path_buf(),
        replicas: 3,
        claim_wait_ms: wait_ms,
    }
}

#[test]
fn a_name_in_use_waits_and_a_cluster_out_of_reach_lapses_the_lease() {
    let mut cluster = NatsCluster::start(3).unwrap();
    let urls = cluster.urls();
    let dir = tempfile::tempdir().unwrap();
    let first_identity = dir.path().join("first");
    let first = HostLease::claim(lease_config(&urls, "dp-x", &first_identity, 60_000)).unwrap();
    let status = first.status();
    assert!(status.held());

    // Another machine (another identity) under the same name is refused while the first
    // holds it.
    let other_identity = dir.path().join("other");
    let refused = HostLease::claim(lease_config(&urls, "dp-x", &other_identity, 3_000));
    let error = format!("{:#}", refused.err().expect("the name is held"));
    assert!(error.contains("name.dp-x.0"), "{error}");
    // Another name gets another slot.
    let second =
        HostLease::claim(lease_config(&urls, "dp-y", &dir.path().join("y"), 60_000)).unwrap();
    assert_ne!(first.slot(), second.slot());

    // No quorum: the renewals fail and the lease lapses by this process's clock, before
    // the bucket could drop it.
    cluster.servers[1].kill_9();
    cluster.servers[2].kill_9();
    wait_until(
        Duration::from_millis(HOST_LEASE_TTL_MS + 5_000),
        "the lease lapsed, and counted",
        || !status.held() && status.lapses.load(Relaxed) >= 1,
    )
    .unwrap();
    cluster.servers[1].restart().unwrap();
    cluster.servers[2].restart().unwrap();
    wait_until(Duration::from_secs(90), "the lease held again", || {
        status.held()
    })
    .unwrap();

    // A clean stop lets its slot go (a restart after a crash keeps it: the other test).
    drop(second);
    let again =
        HostLease::claim(lease_config(&urls, "dp-y", &dir.path().join("y"), 10_000)).unwrap();

    // Let go on a clean stop: the other machine may have the name now, well before the
    // name's time-to-live (`HOST_LEASE_TTL_MS`) could have let it go.
    drop(first);
    let other = HostLease::claim(lease_config(
        &urls,
        "dp-x",
        &other_identity,
        HOST_LEASE_TTL_MS / 2,
    ))
    .unwrap();
    assert!(other.status().held());
    assert_ne!(other.slot(), again.slot());
}

/// A V1 miner's extranonce1, or why the pool would not give one.
fn extranonce1(pool: &SyntheticPool) -> anyhow::Result<Vec<u8>> {
    let mut client = StratumTestClient::connect(&pool.v1)?;
    client.set_read_timeout(Duration::from_secs(5))?;
    client.start(&format!("{SYNTHETIC_PAYOUT_ADDRESS}.slot"))?;
    Ok(client.extranonce1)
}

#[test]
fn two_hosts_never_share_an_extranonce1_and_a_host_without_its_lease_takes_no_miner() {
    let mut cluster = NatsCluster::start(3).unwrap();
    let urls = cluster.urls();
    let flags = |host: &'static str| cluster_flags(&urls, host);
    let a = SyntheticPool::start(&flags("dp-a"));
    let b = SyntheticPool::start(&flags("dp-b"));
    let (mut from_a, mut from_b) = (Vec::new(), Vec::new());
    for _ in 0..8 {
        from_a.push(extranonce1(&a).unwrap());
        from_b.push(extranonce1(&b).unwrap());
    }
    let (slot_a, slot_b) = (from_a[0][0], from_b[0][0]);
    assert_ne!(slot_a, slot_b, "each host its own slot");
    assert!(from_a
        .iter()
        .all(|value| value.len() == 4 && value[0] == slot_a));
    assert!(from_b
        .iter()
        .all(|value| value.len() == 4 && value[0] == slot_b));

    // Killed and started again on its data directory: the same slot, at once.
    let SyntheticPool {
        mut process,
        data_dir,
        ..
    } = a;
    process.kill_9();
    let a = SyntheticPool::start_in(data_dir, &flags("dp-a"));
    assert_eq!(extranonce1(&a).unwrap()[0], slot_a);

    // No quorum: once its lease lapses, a host closes its miners and refuses new ones.
    let mut held = StratumTestClient::connect(&b.v1).unwrap();
    held.start(&format!("{SYNTHETIC_PAYOUT_ADDRESS}.held"))
        .unwrap();
    held.set_read_timeout(Duration::from_millis(HOST_LEASE_TTL_MS + 10_000))
        .unwrap();
    cluster.servers[1].kill_9();
    cluster.servers[2].kill_9();
    let closed = loop {
        match held.read_message() {
            Ok(_) => continue,
            Err(error) => break error,
        }
    };
    assert!(closed_by_peer(&closed), "closed by the pool: {closed:#}");
    assert!(extranonce1(&b).is_err(), "a new miner is refused");
    cluster.servers[1].restart().unwrap();
    cluster.servers[2].restart().unwrap();
    wait_until(Duration::from_secs(90), "miners taken again", || {
        extranonce1(&b).is_ok_and(|value| value[0] == slot_b)
    })
    .unwrap();
    // Counted by the data plane meanwhile; its counters reach a control plane once the
    // cluster (and so the link over it, and the control plane's lease) is back: the one
    // that leads, which serves both hosts' data planes.
    wait_until(Duration::from_secs(60), "the refusals counted", || {
        [&a, &b].iter().any(|pool| {
            pool.metrics().is_ok_and(|metrics| {
                metric_value(
                    &metrics,
                    "otedama_dataplane_refusals_total{reason=\"cluster_lease_lost\"}",
                )
                .is_some_and(|count| count >= 2.0)
            })
        })
    })
    .unwrap();
}

/// Another process takes this host's slot (as a second cluster sharing the bucket could,
/// or a process whose lease the bucket dropped while it was cut off): the host closes its
/// miners, asks for the slot back for `HOST_SLOT_TAKEN_GIVE_UP_MS`, then ends, and `otedama
/// run` starts it again on a free slot, where it serves miners once more.
#[test]
fn a_host_whose_slot_another_holds_ends_and_starts_again_on_a_free_one() {
    let cluster = NatsCluster::start(3).unwrap();
    let urls = cluster.urls();
    let pool = SyntheticPool::start(&cluster_flags(&urls, "dp-t"));
    let slot = extranonce1(&pool).unwrap()[0];
    let mut held = StratumTestClient::connect(&pool.v1).unwrap();
    held.start(&format!("{SYNTHETIC_PAYOUT_ADDRESS}.held"))
        .unwrap();
    held.set_read_timeout(Duration::from_millis(
        HOST_LEASE_RENEW_MS + HOST_SLOT_TAKEN_GIVE_UP_MS,
    ))
    .unwrap();

    // The intruder writes the slot as a holder does, renewing it until the test ends.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let intruder = {
        let (urls, stop) = (urls.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Relaxed) {
                put_key(
                    &urls,
                    HOST_BUCKET,
                    &slot_key(slot),
                    "intruder.0.00000000000000ff",
                )
                .unwrap();
                std::thread::sleep(Duration::from_secs(2));
            }
        })
    };
    let closed = loop {
        match held.read_message() {
            Ok(_) => continue,
            Err(error) => break error,
        }
    };
    assert!(closed_by_peer(&closed), "closed by the pool: {closed:#}");

    // Started again by `otedama run`, the data plane claims another slot and takes miners.
    wait_until(
        Duration::from_secs(60),
        "miners taken on another slot",
        || extranonce1(&pool).is_ok_and(|value| value[0] != slot),
    )
    .unwrap();
    // The cores of one process all begin their values with the slot it claimed at start,
    // so another slot means the data plane ended and was started again.
    stop.store(true, Relaxed);
    intruder.join().unwrap();
}
