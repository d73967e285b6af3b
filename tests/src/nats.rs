//! A NATS cluster with JetStream on loopback, from Debian's `nats-server`: each server
//! with its own store directory, client port and route port, all routed to each other.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::{free_port, Process};

/// One server of the cluster.
pub struct NatsServer {
    pub process: Option<Process>,
    pub name: String,
    pub client_port: u16,
    pub route_port: u16,
    config: PathBuf,
}

impl NatsServer {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    /// SIGKILL, as a crashed host.
    pub fn kill_9(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill_9();
        }
    }

    /// Starts it again on the same ports and store.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill_9();
        self.process = Some(spawn(&self.name, &self.config)?);
        wait_listening(self.client_port)
    }
}

pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `size` servers with JetStream, routed to each other, and waits until each
    /// takes connections. (JetStream elects its meta leader a moment later; clients retry.)
    pub fn start(size: usize) -> anyhow::Result<Self> {
        Self::start_with(size, "")
    }

    /// The same, with `more` appended to each server's configuration (a `tls { … }` block
    /// for its client port, say).
    pub fn start_with(size: usize, more: &str) -> anyhow::Result<Self> {
        // A missing server fails here, with what to install.
        which_nats_server()?;
        let dir = tempfile::tempdir()?;
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let mut servers = Vec::new();
        for (index, (client_port, route_port)) in ports.iter().copied().enumerate() {
            let name = format!("n{index}");
            let store = dir.path().join(&name);
            std::fs::create_dir_all(&store)?;
            let routes: Vec<String> = ports
                .iter()
                .filter(|(_, other)| *other != route_port)
                .map(|(_, other)| format!("\"nats-route://127.0.0.1:{other}\""))
                .collect();
            let config = dir.path().join(format!("{name}.conf"));
            // One server alone runs JetStream without a cluster block.
            let cluster = if size > 1 {
                format!(
                    "cluster {{ name: otedama, listen: 127.0.0.1:{route_port}, routes: [{}] }}\n",
                    routes.join(", ")
                )
            } else {
                String::new()
            };
            std::fs::write(
                &config,
                format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{client_port}\n\
                     jetstream {{ store_dir: \"{}\", max_memory_store: 64MB, max_file_store: 1GB }}\n\
                     {cluster}{more}\n",
                    store.display(),
                ),
            )?;
            servers.push(NatsServer {
                process: Some(spawn(&name, &config)?),
                name,
                client_port,
                route_port,
                config,
            });
        }
        for server in &servers {
            wait_listening(server.client_port)?;
        }
        Ok(NatsCluster { servers, _dir: dir })
    }

    /// Every server's client URL.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(NatsServer::url).collect()
    }
}

/// `EASY_SHARE_FLAGS`, then the flags that put an `otedama` process in the cluster at
/// `urls` as `name` (`--cluster-host`, `--nats-url` for each server).
pub fn cluster_flags<'a>(urls: &'a [String], name: &'a str) -> Vec<&'a str> {
    let mut flags = crate::EASY_SHARE_FLAGS.to_vec();
    flags.extend(["--cluster-host", name]);
    for url in urls {
        flags.extend(["--nats-url", url.as_str()]);
    }
    flags
}

fn which_nats_server() -> anyhow::Result<PathBuf> {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin"] {
        let path = Path::new(dir).join("nats-server");
        if path.exists() {
            return Ok(path);
        }
    }
    anyhow::bail!(
        "nats-server not found: `cargo xtask test` installs it (Debian package nats-server)"
    )
}

fn spawn(name: &str, config: &Path) -> anyhow::Result<Process> {
    let child = Command::new(which_nats_server()?)
        .arg("-c")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nats-server")?;
    Ok(Process {
        child,
        name: format!("nats-server {name}"),
    })
}

fn wait_listening(port: u16) -> anyhow::Result<()> {
    crate::wait_until(Duration::from_secs(30), "nats-server listening", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
}

/// A share record stamped `accepted_at_ms`, encoded as a share log holds it: the
/// records of the tests that write share batches to the streams themselves.
pub fn encoded_share(accepted_at_ms: u64) -> Vec<u8> {
    otedama_shared::ShareRecord {
        accepted_at_ms,
        job_id: 1,
        height: 100,
        worker: "ltc1qminer.rig".into(),
        difficulty: 1.0,
        achieved_difficulty: 1.0,
        is_block: false,
        header: [0; 80],
        extranonce1: vec![0; 4],
        extranonce2: vec![0; 4],
        protocol: None,
    }
    .encode()
}

/// Every share record in the cluster's share streams (`OTEDAMA_SHARES_HOST_PROCESS`, one
/// per log), log by log in the order of the streams' names and in stream order within
/// each, with the subject of its batch (`otedama.shares.HOST.PROCESS`) and its number in
/// that log; only the subject `subject` when given. Empty while no stream exists yet. A
/// message that is not a share batch (one test puts one there) is passed over.
pub fn shipped_records(
    urls: &[String],
    subject: Option<&str>,
) -> Vec<(String, u64, otedama_shared::ShareRecord)> {
    use futures_lite::StreamExt;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let client = async_nats::connect(
            otedama_cluster::server_addresses(urls).expect("NATS server addresses"),
        )
        .await
        .expect("connecting to the NATS cluster");
        let context = async_nats::jetstream::new(client);
        let mut names = Vec::new();
        let mut listed = context.stream_names();
        while let Some(name) = listed.next().await {
            let name = name.expect("the stream names");
            if otedama_cluster::parse_share_stream_name(&name).is_some() {
                names.push(name);
            }
        }
        names.sort();
        let mut out = Vec::new();
        for name in names {
            let Ok(mut stream) = context.get_stream(&name).await else {
                continue;
            };
            let last = stream
                .info()
                .await
                .expect("the share stream's state")
                .state
                .last_sequence;
            for sequence in 1..=last {
                let Ok(message) = stream.get_raw_message(sequence).await else {
                    continue;
                };
                let on = message.subject.as_str();
                if otedama_cluster::shares::parse_share_subject(on).is_none()
                    || subject.is_some_and(|wanted| wanted != on)
                {
                    continue;
                }
                for (number, record) in
                    otedama_cluster::decode_batch(&message.payload).unwrap_or_default()
                {
                    out.push((on.to_string(), number, record));
                }
            }
        }
        out
    })
}

/// Runs `ask` against the cluster's JetStream on a runtime of its own; `None` if the
/// cluster cannot be reached or `ask` finds nothing.
fn with_jetstream<T, F, Fut>(urls: &[String], ask: F) -> Option<T>
where
    F: FnOnce(async_nats::jetstream::Context) -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let client = async_nats::connect(otedama_cluster::server_addresses(urls).ok()?)
            .await
            .ok()?;
        ask(async_nats::jetstream::new(client)).await
    })
}

/// The name of the server that leads `stream` (its RAFT group's leader), if the cluster
/// has elected one, and how many of its other replicas are current (caught up with it).
pub fn stream_leader(urls: &[String], stream: &str) -> Option<(String, usize)> {
    with_jetstream(urls, |context| async move {
        let mut stream = context.get_stream(stream).await.ok()?;
        let info = stream.info().await.ok()?;
        let cluster = info.cluster.as_ref()?;
        let current = cluster
            .replicas
            .iter()
            .filter(|peer| peer.current && !peer.offline)
            .count();
        Some((cluster.leader.clone()?, current))
    })
}

/// The replicated streams of the cluster (key-value buckets included) whose replicas are
/// not all current, or `None` if the cluster cannot be asked. A server killed while
/// another has not caught up on some stream leaves that stream without a quorum, so a
/// test that kills servers one at a time waits for this to be empty first.
pub fn streams_not_current(urls: &[String]) -> Option<Vec<String>> {
    with_jetstream(urls, |context| async move {
        use futures_lite::StreamExt;
        let mut names = context.stream_names();
        let mut lagging = Vec::new();
        while let Some(name) = names.next().await {
            let name = name.ok()?;
            let mut stream = context.get_stream(&name).await.ok()?;
            let info = stream.info().await.ok()?;
            let wanted = info.config.num_replicas.saturating_sub(1);
            let current = info.cluster.as_ref().map_or(0, |cluster| {
                cluster
                    .replicas
                    .iter()
                    .filter(|peer| peer.current && !peer.offline)
                    .count()
            });
            let led = info.cluster.as_ref().is_some_and(|c| c.leader.is_some());
            if current < wanted || !led {
                lagging.push(name);
            }
        }
        Some(lagging)
    })
}

/// Writes `value` under `key` in the key-value bucket `bucket`, as another process of the
/// cluster would (a test takes a slot this way).
pub fn put_key(urls: &[String], bucket: &str, key: &str, value: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = async_nats::connect(otedama_cluster::server_addresses(urls)?).await?;
        let store = async_nats::jetstream::new(client)
            .get_key_value(bucket)
            .await
            .map_err(|error| anyhow::anyhow!("the bucket {bucket}: {error}"))?;
        store
            .put(key, value.to_string().into())
            .await
            .map_err(|error| anyhow::anyhow!("writing {key}: {error}"))?;
        Ok(())
    })
}
