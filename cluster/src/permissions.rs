//! What a data-plane host may do on the cluster, as NATS permissions: the subjects it may
//! publish to and subscribe to, and nothing else. A control plane may do everything.
//!
//! A data-plane host faces miners and is the part of a pool most exposed to attack; one
//! taken over must not be able to write the ledger, the block, job or ban records, the
//! leader's key, or another host's shares or name. So it may only:
//! - ship its own logs (`OTEDAMA_SHARES_HOST_PROCESS`: make, read and write them);
//! - claim and renew its host slot (the host bucket's `slot.*` keys, which every host
//!   takes from, and its own `name.HOST.*` keys; not `leader.controlplane`);
//! - talk on its own link sessions (`otedama.link.HOST.*`) and ask for one;
//! - read the job stream, where its block relay finds a block's job (`otedama::block_relay`).
//!
//! The JetStream API is reached by publishing requests to `$JS.API.…`, so reading and
//! writing streams is allowed stream by stream. No consumer may be made: a push
//! consumer's delivery subject is not checked against its maker's permissions, so it
//! could copy the host bucket's messages onto any subject. Replies come under the host's
//! own prefix (`crate::inbox_prefix`), so it reads no one else's. An operator maps each
//! host's TLS certificate (or NATS user) to these lists in the servers' `authorization`
//! block (`nats_user`).
//!
//! Not closed by these lists (see the README's "Permissions per role"): a host makes its
//! own share streams, with a configuration no permission checks; it writes the shared
//! slot keys without a compare the server could enforce; it may make the host bucket if
//! none exists; and a link request names its own host.

use crate::host::HOST_BUCKET;
use crate::shares::LEGACY_SHARE_STREAM;

/// The subjects data-plane host `host`, running `processes` data-plane processes, may
/// publish to. (A NATS wildcard stands for whole tokens only, and a stream's name is one
/// token of a JetStream API subject, so each share-log slot's stream is named: two per
/// process, the second written by a replacement during an upgrade.)
pub fn dataplane_publish(host: &str, processes: u32) -> Vec<String> {
    let bucket = format!("KV_{HOST_BUCKET}");
    let jobs = crate::records::RecordKind::Jobs.stream();
    let mut subjects = vec![
        // Its share logs: batches and clocks, and their streams.
        format!("otedama.shares.{host}.*"),
        format!("otedama.clocks.{host}.*"),
        "$JS.API.INFO".into(),
    ];
    for slot in 0..2 * processes {
        let shares = crate::shares::share_stream_name(host, slot);
        subjects.extend([
            format!("$JS.API.STREAM.CREATE.{shares}"),
            format!("$JS.API.STREAM.UPDATE.{shares}"),
            format!("$JS.API.STREAM.INFO.{shares}"),
            format!("$JS.API.STREAM.MSG.GET.{shares}"),
            format!("$JS.API.DIRECT.GET.{shares}"),
            format!("$JS.API.DIRECT.GET.{shares}.>"),
        ]);
    }
    subjects.extend([
        // Whether the stream of the layout before is still there (`share_stream`).
        format!("$JS.API.STREAM.INFO.{LEGACY_SHARE_STREAM}"),
        // Its slot's lease.
        format!("$JS.API.STREAM.CREATE.{bucket}"),
        format!("$JS.API.STREAM.INFO.{bucket}"),
        format!("$JS.API.STREAM.MSG.GET.{bucket}"),
        format!("$JS.API.DIRECT.GET.{bucket}"),
        format!("$JS.API.DIRECT.GET.{bucket}.>"),
        format!("$KV.{HOST_BUCKET}.slot.*"),
        format!("$KV.{HOST_BUCKET}.name.{host}.*"),
        // Its link to a control plane.
        crate::link::LINK_OPEN_SUBJECT.into(),
        format!("otedama.link.{host}.*.*.up"),
        // The jobs its block relay builds blocks from.
        format!("$JS.API.STREAM.INFO.{jobs}"),
        format!("$JS.API.STREAM.MSG.GET.{jobs}"),
        format!("$JS.API.DIRECT.GET.{jobs}"),
        format!("$JS.API.DIRECT.GET.{jobs}.>"),
    ]);
    subjects
}

/// The subjects data-plane host `host` may subscribe to: replies to its own requests
/// (its inbox prefix, `crate::inbox_prefix`), and its link sessions.
pub fn dataplane_subscribe(host: &str) -> Vec<String> {
    vec![
        format!("{}.>", crate::inbox_prefix(host)),
        format!("otedama.link.{host}.>"),
    ]
}

/// One user of a nats-server `authorization { users = [...] }` block: `user` (with
/// `verify_and_map`, the host's certificate subject, such as `CN=dp-a`) gets the
/// permissions of data-plane host `host` running `processes` processes.
pub fn nats_user(user: &str, host: &str, processes: u32) -> String {
    let list = |subjects: Vec<String>| {
        subjects
            .iter()
            .map(|subject| format!("{subject:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "{{ user: {user:?}, permissions: {{ publish: {{ allow: [{}] }}, subscribe: {{ allow: [{}] }} }} }}",
        list(dataplane_publish(host, processes)),
        list(dataplane_subscribe(host))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing a control plane alone writes is in a host's lists.
    #[test]
    fn a_host_may_write_nothing_of_the_control_planes() {
        let publish = dataplane_publish("dp-a", 2);
        for subject in &publish {
            for forbidden in [
                "otedama.ledger",
                "otedama.blocks",
                "otedama.jobs",
                "otedama.bans",
                "leader",
                "OTEDAMA_LEDGER",
                "otedama.exchange",
                "OTEDAMA_EXCHANGE",
                "STREAM.PURGE",
                "STREAM.DELETE",
                "MSG.DELETE",
                "dp-b",
            ] {
                assert!(!subject.contains(forbidden), "{subject} has {forbidden}");
            }
            assert!(
                !subject.contains('>') || subject.ends_with(".>") && subject.len() > 3,
                "{subject}"
            );
        }
        assert!(publish.contains(&"otedama.shares.dp-a.*".to_string()));
        // Two processes, two slots each.
        assert!(publish.contains(&"$JS.API.STREAM.CREATE.OTEDAMA_SHARES_dp-a_3".to_string()));
        assert!(!publish
            .iter()
            .any(|subject| subject.ends_with("OTEDAMA_SHARES_dp-a_4")));
        assert_eq!(
            dataplane_subscribe("dp-a"),
            ["_INBOX_dp-a.>", "otedama.link.dp-a.>"]
        );
        assert!(!publish.iter().any(|subject| subject.contains("CONSUMER")));
        let user = nats_user("CN=dp-a", "dp-a", 1);
        assert!(user.starts_with("{ user: \"CN=dp-a\", permissions: { publish: { allow: ["));
    }
}
