//! The cluster's connections over TLS (issue 20), against a real NATS server whose client
//! port takes only TLS and verifies client certificates: a pool given the CA, a client
//! certificate and its key (`--nats-tls-*`) claims its slot, ships its shares and credits
//! them; a client without a certificate the server accepts gets nowhere. And against a
//! server that runs NATS accounts (operator mode): a pool given a user's `.creds` file
//! (`--nats-credentials-file`) does the same, where a client without one is refused.
//! And with roles: a data-plane host whose certificate the server maps to the user
//! `otedama nats-user` prints works, and can write nothing of the control planes'.

use std::path::Path;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};

use base64::Engine as _;
use nkeys::KeyPair as NatsKey;
use serde_json::{json, Value};

use otedama_cluster::host::{HostLease, HostLeaseConfig};
use otedama_tests::nats::NatsCluster;
use otedama_tests::{history_shares, mine_for, wait_until, SyntheticPool, EASY_SHARE_FLAGS};

/// A CA, and a server and a client certificate it signs, as PEM files in `dir`:
/// `ca.pem`, `server.pem`/`server.key` (for 127.0.0.1), `client.pem`/`client.key`; and
/// for each of `roles`, `ROLE.pem`/`ROLE.key`, a client certificate whose subject is
/// `CN=otedama-ROLE` and nothing else (as the servers map it to a user).
fn make_certificates(dir: &Path, roles: &[&str]) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "otedama test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    for (name, usage) in [
        ("server", ExtendedKeyUsagePurpose::ServerAuth),
        ("client", ExtendedKeyUsagePurpose::ClientAuth),
    ] {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("otedama test {name}"));
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
    for role in roles {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("otedama-{role}"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
        std::fs::write(dir.join(format!("{role}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{role}.key")), key.serialize_pem()).unwrap();
    }
}

#[test]
fn a_pool_mines_through_a_cluster_that_takes_only_verified_tls_clients() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path(), &[]);
    let file = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let tls = format!(
        "tls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\", verify: true, timeout: 5 }}",
        file("server.pem"),
        file("server.key"),
        file("ca.pem")
    );
    let cluster = NatsCluster::start_with(1, &tls).unwrap();
    let url = format!("tls://127.0.0.1:{}", cluster.servers[0].client_port);

    // A client that trusts the server but has no certificate of its own is refused.
    otedama_cluster::set_security(otedama_cluster::NatsSecurity {
        tls_ca_file: Some(dir.path().join("ca.pem")),
        ..Default::default()
    })
    .unwrap();
    let refused = HostLease::claim(HostLeaseConfig {
        nats_urls: vec![url.clone()],
        host: "no-certificate".into(),
        process: 0,
        identity_file: dir.path().join("identity"),
        replicas: 1,
        claim_wait_ms: 3_000,
    });
    let refused = format!(
        "{:#}",
        refused
            .err()
            .expect("a client without a certificate holds no slot")
    );
    eprintln!("without a client certificate: {refused}");
    assert!(
        refused.contains("no host slot claimed") && refused.contains("Certificate"),
        "refused by the TLS handshake: {refused}"
    );

    // The pool with its certificate: control plane and data plane over TLS.
    let (ca, cert, key) = (file("ca.pem"), file("client.pem"), file("client.key"));
    let flags = [
        "--cluster-host",
        "dp-tls",
        "--nats-url",
        url.as_str(),
        "--nats-tls-ca-file",
        ca.as_str(),
        "--nats-tls-cert-file",
        cert.as_str(),
        "--nats-tls-key-file",
        key.as_str(),
    ];
    mine_and_see_credited(&flags, "tls");
}

/// `otedama run` with `flags` (one host of a one-server cluster) takes a miner's shares,
/// and its control plane credits them. In cluster mode it credits only what came back from
/// the stream, so both the data plane's and the control plane's connections to the
/// cluster worked.
fn mine_and_see_credited(flags: &[&str], worker: &str) {
    let mut all = EASY_SHARE_FLAGS.to_vec();
    all.extend(["--share-stream-replicas", "1"]);
    all.extend_from_slice(flags);
    let pool = SyntheticPool::start(&all);
    let accepted = mine_for(&format!("stratum+tcp://{}", pool.v1), worker, 5);
    assert!(accepted > 0, "shares taken");
    wait_until(
        Duration::from_secs(60),
        "the shipped shares credited",
        || history_shares(pool.api_port).unwrap_or(0) >= accepted,
    )
    .unwrap();
}

/// A JWT of NATS's decentralized auth: `claims` about `subject`, signed by `issuer`.
fn nats_jwt(issuer: &NatsKey, subject: &str, nats: Value) -> String {
    let encode = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let claims = json!({
        "jti": format!("otedama-test-{}", rand::random::<u64>()),
        "iat": 1_700_000_000u64,
        "iss": issuer.public_key(),
        "name": "otedama-test",
        "sub": subject,
        "nats": nats,
    });
    let signed = format!(
        "{}.{}",
        encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#),
        encode(&serde_json::to_vec(&claims).unwrap())
    );
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", encode(&signature))
}

#[test]
fn a_pool_mines_through_a_cluster_that_takes_only_users_of_its_account() {
    // An operator, its system account, the pool's account (with JetStream) and a user of
    // it, as `nsc` would make them.
    let (operator, system, account, user) = (
        NatsKey::new_operator(),
        NatsKey::new_account(),
        NatsKey::new_account(),
        NatsKey::new_user(),
    );
    let unlimited = json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
    });
    let mut with_jetstream = unlimited.clone();
    for key in ["mem_storage", "disk_storage", "streams", "consumer"] {
        with_jetstream[key] = json!(-1);
    }
    let operator_jwt = nats_jwt(
        &operator,
        &operator.public_key(),
        json!({"type": "operator", "version": 2, "system_account": system.public_key()}),
    );
    let system_jwt = nats_jwt(
        &operator,
        &system.public_key(),
        json!({"type": "account", "version": 2, "limits": unlimited}),
    );
    let account_jwt = nats_jwt(
        &operator,
        &account.public_key(),
        json!({"type": "account", "version": 2, "limits": with_jetstream}),
    );
    let user_jwt = nats_jwt(
        &account,
        &user.public_key(),
        json!({"type": "user", "version": 2, "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}),
    );
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("pool.creds");
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        ),
    )
    .unwrap();
    let accounts = format!(
        "operator: \"{operator_jwt}\"\nsystem_account: {}\nresolver: MEMORY\n\
         resolver_preload: {{\n  {}: \"{system_jwt}\"\n  {}: \"{account_jwt}\"\n}}",
        system.public_key(),
        system.public_key(),
        account.public_key()
    );
    let cluster = NatsCluster::start_with(1, &accounts).unwrap();
    let url = cluster.servers[0].url();

    // Without credentials the server takes no client.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let anonymous = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), async_nats::connect(url.as_str())).await
    });
    match anonymous {
        Ok(Ok(_)) => panic!("a client without credentials is refused"),
        Ok(Err(error)) => eprintln!("without credentials: {error}"),
        Err(_) => eprintln!("without credentials: no connection within 10 s"),
    }

    let creds_path = creds.to_str().unwrap().to_string();
    let flags = [
        "--cluster-host",
        "dp-creds",
        "--nats-url",
        url.as_str(),
        "--nats-credentials-file",
        creds_path.as_str(),
    ];
    mine_and_see_credited(&flags, "creds");
}

/// Roles (issue 20): the server maps each client certificate to a user
/// (`verify_and_map`); the control plane's may do anything, the data-plane host's only
/// what `otedama_cluster::permissions` lists for it. With those permissions the host
/// claims its slot, ships its shares, takes jobs over its link, and the control plane
/// credits the shares; with its certificate, nothing a control plane alone writes can be
/// written: not the ledger stream, the leader's key, the job or the block records.
#[test]
fn a_data_plane_host_works_with_its_role_permissions_and_can_write_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path(), &["cp", "dp"]);
    let file = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let host = "dp-perm";
    // The user as the operator gets it: `otedama nats-user`.
    let printed = std::process::Command::new(otedama_tests::otedama_binary())
        .args(["nats-user", "--host", host, "--processes", "1"])
        .args(["--user", "CN=otedama-dp"])
        .output()
        .unwrap();
    assert!(printed.status.success(), "{printed:?}");
    let dataplane_user = String::from_utf8(printed.stdout).unwrap();
    let config = format!(
        "tls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\", verify_and_map: true, timeout: 5 }}\n\
         authorization {{ users = [\n\
           {{ user: \"CN=otedama-cp\", permissions: {{ publish: \">\", subscribe: \">\" }} }}\n\
           {}\n\
         ] }}",
        file("server.pem"),
        file("server.key"),
        file("ca.pem"),
        dataplane_user
    );
    let cluster = NatsCluster::start_with(1, &config).unwrap();
    let url = format!("tls://127.0.0.1:{}", cluster.servers[0].client_port);
    let ca = file("ca.pem");
    let role_flags = |role: &str, name: &'static str| -> Vec<String> {
        let mut flags: Vec<String> = EASY_SHARE_FLAGS.iter().map(|f| f.to_string()).collect();
        flags.extend(
            [
                "--cluster-host",
                name,
                "--nats-url",
                url.as_str(),
                "--nats-tls-ca-file",
                ca.as_str(),
                "--share-stream-replicas",
                "1",
            ]
            .map(String::from),
        );
        flags.extend([
            "--nats-tls-cert-file".to_string(),
            file(&format!("{role}.pem")),
            "--nats-tls-key-file".to_string(),
            file(&format!("{role}.key")),
        ]);
        flags
    };
    let cp_flags = role_flags("cp", "cp-perm");
    let dp_flags = role_flags("dp", "dp-perm");
    fn as_str(flags: &[String]) -> Vec<&str> {
        flags.iter().map(String::as_str).collect()
    }
    let (cp_dir, dp_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_controlplane, api_port) =
        otedama_tests::spawn_synthetic_controlplane(cp_dir.path(), &as_str(&cp_flags));
    let (_dataplane, v1) =
        otedama_tests::spawn_synthetic_dataplane(dp_dir.path(), &as_str(&dp_flags));
    let accepted = mine_for(&format!("stratum+tcp://{v1}"), "perm", 5);
    assert!(
        accepted > 0,
        "the host took shares: it holds its slot and a job"
    );
    wait_until(
        Duration::from_secs(60),
        "the host's shipped shares credited",
        || history_shares(api_port).unwrap_or(0) >= accepted,
    )
    .unwrap();

    // With the host's certificate, a client writes nothing of the control planes'.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = async_nats::ConnectOptions::new()
            .require_tls(true)
            .add_root_certificates(dir.path().join("ca.pem"))
            .add_client_certificate(dir.path().join("dp.pem"), dir.path().join("dp.key"))
            // Replies come only under the host's own prefix.
            .custom_inbox_prefix(otedama_cluster::inbox_prefix(host))
            .connect(url.as_str())
            .await
            .unwrap();
        let mut context = async_nats::jetstream::new(client);
        context.set_timeout(Duration::from_secs(3));
        for subject in [
            "otedama.ledger".to_string(),
            format!(
                "$KV.{}.leader.controlplane",
                otedama_cluster::host::HOST_BUCKET
            ),
            // Streams the control plane made: each publish below would be taken with
            // looser permissions.
            "otedama.jobs.1.0".to_string(),
            "otedama.blocks.00.0".to_string(),
        ] {
            let taken = match context.publish(subject.clone(), "forged".into()).await {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            };
            assert!(!taken, "a data-plane host's certificate wrote {subject}");
        }
        let purge = context
            .get_stream(otedama_cluster::share_stream_name(host, 0))
            .await
            .unwrap()
            .purge()
            .await;
        assert!(purge.is_err(), "a host cannot purge even its own stream");
    });
}
