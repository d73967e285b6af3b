//! The HTTP API of a running pool on litecoind regtest, over real sockets:
//! - admin auth, with the path written every way a proxy or an attacker might write it;
//! - bans, which must reach the data plane: refused at authorize and at accept, and
//!   closing connections that a new ban covers;
//! - `/metrics`, which must pass `promtool check metrics`;
//! - the dashboard, rendered by headless Chromium, which must show the API's numbers,
//!   after a real payout so that the miner lookup has a payment to show.

use std::io::{BufRead, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};

use otedama_tests::{wait_until, PoolSetup, RegtestPair, StratumTestClient};

const START_DIFFICULTY: f64 = 0.01;
const ADMIN_TOKEN: &str = "api-test-admin-token-0123456789abcdef012345";
const COINBASE_MATURITY: u64 = 100;

/// One HTTP/1.1 request written byte for byte as given (no client library rewrites the
/// path); returns the status and the body.
fn http(port: u16, method: &str, path: &str, headers: &[&str], body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("API reachable");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    if !body.is_empty() {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

/// A TCP connection to `target` from the loopback source address `source`.
fn connect_from(source: Ipv4Addr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let to_sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let SocketAddr::V4(target) = target else {
        panic!("IPv4 only")
    };
    let length = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns until it is wrapped.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let local = to_sockaddr(source, 0);
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), length) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let remote = to_sockaddr(*target.ip(), target.port());
        if libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), length) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// Whether the pool closes `stream` (end of stream or reset) within a few seconds, with
/// nothing else arriving first but Stratum notifications.
fn closed_by_pool(stream: &TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = std::io::BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) => {
                return matches!(
                    error.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                )
            }
        }
    }
}

fn admin_paths_written_every_way() -> Vec<&'static str> {
    vec![
        "/api/v1/admin/miners",
        "/api/v1/admin/miners/",
        "/api/v1//admin/miners",
        "//api/v1/admin//miners",
        "/api/v1/./admin/miners",
        "/api/v1/x/../admin/miners",
        "/api/v1/stats/../admin/miners",
        "/api/v1/%61dmin/miners",
        "/api/v1/admin%2fminers",
        "/api/v1/admin%2Fminers",
        "/api/v1/admin\\miners",
        "/api/v1/admin/miners?x=1",
        "/api/v1/admin/miners;x",
    ]
}

fn element_text<'a>(dom: &'a str, id: &str) -> &'a str {
    let marker = format!("id=\"{id}\"");
    let start = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no #{id} in the page"));
    let after = &dom[start..];
    let open_end = after.find('>').unwrap() + 1;
    let close = after[open_end..].find("</").unwrap();
    &after[open_end..open_end + close]
}

/// Coins as the dashboard prints them: the integer amount with 8 decimals.
fn coins(units: u64) -> String {
    otedama_ledger::Amount::from_units(units).to_string()
}

/// The value of attribute `name` of the element with id `id`.
fn element_attribute<'a>(dom: &'a str, id: &str, name: &str) -> Option<&'a str> {
    let start = dom.find(&format!("id=\"{id}\""))?;
    let tag_start = dom[..start].rfind('<')?;
    let tag = &dom[tag_start..start + dom[start..].find('>')?];
    let value_start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    Some(&tag[value_start..value_start + tag[value_start..].find('"')?])
}

/// A screenshot of `url` as a 1280-pixel-wide browser shows it, after its scripts ran.
fn chromium_screenshot(url: &str, file: &std::path::Path) -> anyhow::Result<()> {
    let status = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1280,1800",
            "--virtual-time-budget=15000",
        ])
        .arg(format!("--screenshot={}", file.display()))
        .arg(url)
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .context("running chromium")?;
    anyhow::ensure!(status.success(), "chromium failed: {status:?}");
    Ok(())
}

fn chromium_dom(url: &str) -> anyhow::Result<String> {
    let output = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=15000",
            "--dump-dom",
            url,
        ])
        .stderr(Stdio::null())
        .output()
        .context("running chromium (Debian: apt-get install -y chromium; `cargo xtask test` installs it)")?;
    anyhow::ensure!(
        output.status.success(),
        "chromium failed: {:?}",
        output.status
    );
    Ok(String::from_utf8(output.stdout)?)
}

#[test]
fn api_auth_bans_metrics_and_dashboard_against_a_running_pool() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let nodes = RegtestPair::start(root.path(), 101)?;
    nodes.miner.call("createwallet", json!(["miners"]))?;
    let new_address = || -> anyhow::Result<String> {
        Ok(nodes
            .miner
            .call_wallet("miners", "getnewaddress", json!(["", "bech32"]))?
            .as_str()
            .context("address")?
            .to_string())
    };
    let (alice, bob) = (new_address()?, new_address()?);
    let token_file = root.path().join("admin-token");
    std::fs::write(&token_file, ADMIN_TOKEN)?;
    let mut pool = PoolSetup::new(&nodes, &root.path().join("pool"), START_DIFFICULTY);
    pool.extra_args = vec![
        "--payout-scheme".into(),
        "solo".into(),
        "--coinbase-maturity".into(),
        COINBASE_MATURITY.to_string(),
        "--payout-interval-s".into(),
        "86400".into(),
        "--node-wallet".into(),
        "otedama".into(),
        "--admin-token-file".into(),
        token_file.display().to_string(),
        // Charts get points within the test: the pool every 10 s, each miner every 100 s.
        "--hashrate-sample-interval-s".into(),
        "10".into(),
    ];
    // Everything the pool logs at info level goes to a file the test reads at the end.
    let log_path = root.path().join("pool.log");
    pool.log_file = Some(log_path.clone());
    pool.env = vec![("RUST_LOG".into(), "info".into())];
    let _run = pool.spawn("run")?;
    pool.wait_ready(Duration::from_secs(60))?;
    let port = pool.api_port;

    // Admin auth: however the path is written, no token means no admin handler.
    for path in admin_paths_written_every_way() {
        let (status, body) = http(port, "GET", path, &[], "");
        assert!(
            matches!(status, 400 | 401 | 404),
            "{path} without a token answered {status}: {body}"
        );
        assert!(!body.contains("balance_mature"), "{path} leaked: {body}");
        let (status, _) = http(port, "GET", path, &[&bearer("wrong-token")], "");
        assert!(
            matches!(status, 400 | 401 | 404),
            "{path} with a wrong token answered {status}"
        );
    }
    for path in [
        "/api/v1/admin/miners",
        "/api/v1//admin/miners",
        "/api/v1/x/../admin/miners",
        "/api/v1/%61dmin/miners",
        "/api/v1/admin%2Fminers",
    ] {
        let (status, body) = http(port, "GET", path, &[&bearer(ADMIN_TOKEN)], "");
        assert_eq!(status, 200, "{path} with the token: {body}");
    }
    for header in [
        format!("Authorization: Basic {ADMIN_TOKEN}"),
        format!("Authorization: bearer{ADMIN_TOKEN}"),
        format!("Authorization: Bearer {ADMIN_TOKEN}x"),
        format!("X-Authorization: Bearer {ADMIN_TOKEN}"),
    ] {
        let (status, _) = http(port, "GET", "/api/v1/admin/audit", &[&header], "");
        assert_eq!(status, 401, "{header}");
    }
    let (status, _) = http(port, "GET", "/../api/v1/admin/miners", &[], "");
    assert_eq!(status, 400, "a path above the root is refused");
    let (status, _) = http(port, "POST", "/api/v1/admin/payouts/run", &[], "");
    assert_eq!(status, 401);
    let (status, _) = http(port, "POST", "/api/v1/admin//payouts/./run", &[], "");
    assert_eq!(status, 401);
    let (_, audit) = http(
        port,
        "GET",
        "/api/v1/admin/audit",
        &[&bearer(ADMIN_TOKEN)],
        "",
    );
    assert!(
        !audit.contains("payouts.run"),
        "refused requests must not have run: {audit}"
    );
    let (status, body) = http(port, "GET", "/api/v1/miners/not-an-address", &[], "");
    assert_eq!(status, 400, "{body}");

    // Mining for alice, so there are blocks, shares and a balance to show.
    let mut miner = pool.spawn_miner_as(&format!("{alice}.rig1"), 1)?;
    wait_until(Duration::from_secs(240), "two blocks", || {
        pool.stats()
            .is_ok_and(|s| s["blocks_found"].as_u64().unwrap_or(0) >= 2)
    })?;
    miner.terminate();

    // Bans reach the data plane.
    let ban = |path: &str, body: Value| {
        http(
            port,
            "POST",
            path,
            &[&bearer(ADMIN_TOKEN)],
            &body.to_string(),
        )
    };
    let (status, body) = ban("/api/v1/admin/bans/add", json!({"addresses": ["garbage"]}));
    assert_eq!(
        status, 400,
        "an address the pool could never pay is not a ban: {body}"
    );
    let (status, _) = ban(
        "/api/v1/admin/bans/add",
        json!({"networks": ["10.0.0.0/33"]}),
    );
    assert_eq!(status, 400);
    let (status, _) = http(
        port,
        "POST",
        "/api/v1/admin/bans/add",
        &[],
        &json!({"addresses": [bob]}).to_string(),
    );
    assert_eq!(status, 401);

    let mut connected_bob = StratumTestClient::connect(&pool.stratum_address())?;
    connected_bob.start(&format!("{bob}.rig1"))?;
    let (status, body) = ban("/api/v1/admin/bans/add", json!({"addresses": [bob]}));
    assert_eq!(status, 200, "{body}");
    let (bob_stream, _) = connected_bob.into_raw();
    assert!(
        closed_by_pool(&bob_stream),
        "a new ban closes the miner's connection"
    );
    wait_until(
        Duration::from_secs(10),
        "the ban to be refused at authorize",
        || {
            let Ok(mut client) = StratumTestClient::connect(&pool.stratum_address()) else {
                return false;
            };
            let _ = client.request("mining.subscribe", json!([]));
            client
                .request("mining.authorize", json!([format!("{bob}.rig2"), "x"]))
                .is_ok_and(|reply| reply["error"][0] == 24)
        },
    )?;
    // The list holds banned addresses and the miners the payout thread has seen shares
    // from (it reads the share logs every half second).
    wait_until(
        Duration::from_secs(10),
        "the admin list to show both",
        || {
            let Ok(miners) = otedama_tests::admin_get(&pool, "/api/v1/admin/miners", ADMIN_TOKEN)
            else {
                return false;
            };
            let banned = |address: &str| {
                miners
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|m| m["address"] == address)
                    .map(|m| m["banned"].clone())
            };
            banned(&bob) == Some(json!(true)) && banned(&alice) == Some(json!(false))
        },
    )?;
    let (status, _) = ban("/api/v1/admin/bans/remove", json!({"addresses": [bob]}));
    assert_eq!(status, 200);
    wait_until(Duration::from_secs(10), "bob to be welcome again", || {
        StratumTestClient::connect(&pool.stratum_address())
            .and_then(|mut c| c.start(&format!("{bob}.rig3")))
            .is_ok()
    })?;

    let stratum: SocketAddr = pool.stratum_address().parse()?;
    let banned_source = Ipv4Addr::new(127, 0, 0, 77);
    let from_banned = connect_from(banned_source, stratum)?;
    let (status, body) = ban(
        "/api/v1/admin/bans/add",
        json!({"networks": ["127.0.0.77/32"]}),
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        closed_by_pool(&from_banned),
        "a network ban closes open connections"
    );
    let refused = connect_from(banned_source, stratum)?;
    assert!(closed_by_pool(&refused), "and refuses new ones");
    // Each counted by reason: bob's connection and the network's, closed, and the one
    // refused at accept.
    let banned_sample = r#"otedama_dataplane_refusals_total{reason="banned"}"#;
    wait_until(Duration::from_secs(10), banned_sample, || {
        pool.get_text("/metrics").is_ok_and(|metrics| {
            otedama_tests::metric_value(&metrics, banned_sample).is_some_and(|count| count >= 3.0)
        })
    })?;
    // Exactly those: the network ban, applied after bob's, does not count bob's closed
    // connection again.
    let metrics = pool.get_text("/metrics")?;
    assert_eq!(
        otedama_tests::metric_value(&metrics, banned_sample),
        Some(3.0),
        "{metrics}"
    );
    let mut elsewhere = StratumTestClient::connect(&pool.stratum_address())?;
    elsewhere.start(&format!("{alice}.rig2"))?;
    let (status, _) = ban(
        "/api/v1/admin/bans/remove",
        json!({"networks": ["127.0.0.77"]}),
    );
    assert_eq!(status, 200);
    let (_, audit) = http(
        port,
        "GET",
        "/api/v1/admin/audit",
        &[&bearer(ADMIN_TOKEN)],
        "",
    );
    for action in ["bans.add", "bans.remove"] {
        assert!(audit.contains(action), "{action} is audited: {audit}");
    }

    // The metrics count what happened (data planes report once a second) and pass promtool.
    let accepted_shares = |metrics: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with("otedama_shares_total{result=\"accepted\""))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Each of the acknowledgement's stages is measured.
    let stages_counted = |metrics: &str| {
        otedama_shared::ipc::ACK_STAGES[..otedama_shared::ipc::ACK_STAGES_ALWAYS]
            .iter()
            .all(|stage| {
                let prefix = format!("otedama_share_ack_stage_seconds_count{{stage=\"{stage}\"}} ");
                metrics.lines().any(|l| {
                    l.strip_prefix(&prefix)
                        .and_then(|n| n.parse::<u64>().ok())
                        .is_some_and(|n| n > 0)
                })
            })
    };
    wait_until(
        Duration::from_secs(10),
        "accepted shares, their acknowledgement latency and its stages in the metrics",
        || {
            pool.get_text("/metrics").is_ok_and(|m| {
                accepted_shares(&m) > 0
                    && !m.contains("otedama_share_ack_latency_seconds_count 0\n")
                    && stages_counted(&m)
            })
        },
    )?;
    let metrics = pool.get_text("/metrics")?;
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running promtool (Debian: apt-get install -y prometheus; `cargo xtask test` installs it)")?;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())?;
    let checked = promtool.wait_with_output()?;
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    // Every metric the shipped alert rules and dashboard name is one this pool exports
    // (`monitoring/`), so neither watches a name that no longer exists.
    let families: std::collections::BTreeSet<&str> = metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.split(' ').next())
        .collect();
    // Exported in cluster mode only; `cluster_acceptance` runs that mode.
    const CLUSTER_ONLY: &[&str] = &["otedama_cluster_leading"];
    for name in otedama_tests::monitoring::metric_names_used() {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| families.contains(base))
            })
            .unwrap_or(&name);
        assert!(
            families.contains(family) || CLUSTER_ONLY.contains(&family),
            "monitoring/ uses {name}, which /metrics does not export"
        );
    }

    // Mature alice's blocks and pay her, so the dashboard has a payment to show.
    nodes
        .miner
        .generate_to(&nodes.funding_address, COINBASE_MATURITY)?;
    wait_until(Duration::from_secs(90), "alice's balance to mature", || {
        pool.get_json(&format!("/api/v1/miners/{alice}"))
            .is_ok_and(|m| m["balance_immature"] == 0 && m["balance_mature"].as_u64() > Some(0))
    })?;
    // The feed: stats first, then the payment as it happens.
    let feed_stream = TcpStream::connect(("127.0.0.1", port))?;
    feed_stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let (mut feed, _) = tungstenite::client(format!("ws://127.0.0.1:{port}/ws"), feed_stream)
        .map_err(|e| anyhow::anyhow!("WebSocket handshake: {e}"))?;
    let mut next_event = || -> anyhow::Result<Value> {
        let message = feed.read()?;
        Ok(serde_json::from_str(message.to_text()?)?)
    };
    let first = next_event()?;
    assert_eq!(first["type"], "stats", "{first}");
    assert_eq!(
        first["stats"]["blocks_found"],
        pool.stats()?["blocks_found"]
    );

    // Runtime settings: the fee changes, and the change is audited.
    let (status, body) = http(
        port,
        "PUT",
        "/api/v1/admin/config",
        &[&bearer(ADMIN_TOKEN)],
        &json!({"pool_fee_percent": 2.5}).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let config = otedama_tests::admin_get(&pool, "/api/v1/admin/config", ADMIN_TOKEN)?;
    assert_eq!(config["pool_fee_percent"], 2.5, "{config}");
    let (status, _) = http(
        port,
        "PUT",
        "/api/v1/admin/config",
        &[&bearer(ADMIN_TOKEN)],
        &json!({"pool_fee_percent": 100.5}).to_string(),
    );
    assert_eq!(status, 400, "a fee above 100 % is refused");

    let (status, body) = pool.post_admin("/api/v1/admin/payouts/run", ADMIN_TOKEN)?;
    assert_eq!(status, 200, "{body}");
    let txid = body["batch"]["txid"]
        .as_str()
        .context("a batch was paid")?
        .to_string();
    let payment = loop {
        let event = next_event()?;
        if event["type"] == "payment" {
            break event;
        }
    };
    assert_eq!(payment["payment"]["txid"], txid.as_str());
    wait_until(Duration::from_secs(30), "the payment to be sent", || {
        pool.get_json(&format!("/api/v1/miners/{alice}"))
            .is_ok_and(|m| m["paid"].as_u64() > Some(0))
    })?;

    // The web page shows the numbers the API gives, on the miner's own page
    // (/miner/ADDRESS, bookmarkable) and on the pool's.
    wait_until(
        Duration::from_secs(150),
        "a hash-rate sample of alice and the pool",
        || {
            let sampled = |path: &str| {
                pool.get_json(path).is_ok_and(|chart| {
                    chart["points"]
                        .as_array()
                        .is_some_and(|points| points.iter().any(|p| p[1].as_f64() > Some(0.0)))
                })
            };
            sampled(&format!("/api/v1/miners/{alice}/hashrate?span=1h"))
                && sampled("/api/v1/hashrate?span=1h")
        },
    )?;
    for span in ["24h", "7d"] {
        let chart = pool.get_json(&format!("/api/v1/hashrate?span={span}"))?;
        assert_eq!(chart["span"], span);
        assert!(chart["points"].as_array().is_some_and(|p| !p.is_empty()));
    }
    let (status, _) = http(port, "GET", "/api/v1/hashrate?span=2h", &[], "");
    assert_eq!(status, 400, "only the offered spans");
    let stats = pool.stats()?;
    let alice_now = pool.get_json(&format!("/api/v1/miners/{alice}"))?;
    let blocks = pool.get_json("/api/v1/blocks")?;
    let url = format!("http://127.0.0.1:{port}/miner/{alice}");
    let dom = chromium_dom(&url)?;
    assert_eq!(element_text(&dom, "miner-title"), alice);
    let workers_start = dom.find("id=\"miner-workers\"").unwrap();
    let workers_table =
        &dom[workers_start..workers_start + dom[workers_start..].find("</tbody>").unwrap()];
    let workers = alice_now["workers"].as_object().unwrap();
    assert_eq!(
        workers_table.matches("<tr>").count(),
        workers.len(),
        "{workers_table}"
    );
    assert!(
        workers_table.contains(&format!("{alice}.rig1")),
        "{workers_table}"
    );
    for (name, worker) in workers {
        assert_eq!(worker["protocol"], "v1", "{name}: {worker}");
    }
    assert_eq!(
        workers_table.matches("<td>Stratum V1</td>").count(),
        workers.len(),
        "each worker's protocol is shown: {workers_table}"
    );
    for chart in ["pool-chart", "miner-chart"] {
        let points: usize = element_attribute(&dom, chart, "data-points")
            .unwrap_or_else(|| panic!("{chart} drew no line"))
            .parse()?;
        assert!(points >= 1, "{chart}");
    }
    let connect = element_text(&dom, "connect");
    assert!(
        dom.contains(&format!("stratum+tcp://127.0.0.1:{}", pool.stratum_port)),
        "how to connect lists the Stratum URL: {connect}"
    );
    let legacy = chromium_dom(&format!("http://127.0.0.1:{port}/#miner={alice}"))?;
    assert_eq!(
        element_text(&legacy, "miner-title"),
        alice,
        "old links still open the miner's view"
    );
    let screenshots = std::env::var_os("OTEDAMA_SCREENSHOT_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.path().join("screenshots"));
    std::fs::create_dir_all(&screenshots)?;
    for (name, page) in [
        ("pool", format!("http://127.0.0.1:{port}/")),
        ("miner", url.clone()),
    ] {
        let file = screenshots.join(format!("{name}.png"));
        chromium_screenshot(&page, &file)?;
        let bytes = std::fs::metadata(&file)?.len();
        assert!(
            bytes > 20_000,
            "{name}.png is a page, not a blank: {bytes} bytes"
        );
    }
    assert_eq!(
        element_text(&dom, "blocks-found"),
        stats["blocks_found"].to_string()
    );
    assert_eq!(element_text(&dom, "height"), stats["height"].to_string());
    assert_eq!(
        element_text(&dom, "error"),
        "",
        "the page reported an error"
    );
    assert_eq!(
        element_text(&dom, "miner-balance-mature"),
        coins(alice_now["balance_mature"].as_u64().unwrap())
    );
    assert_eq!(
        element_text(&dom, "miner-balance-immature"),
        coins(alice_now["balance_immature"].as_u64().unwrap())
    );
    assert_eq!(
        element_text(&dom, "miner-paid"),
        coins(alice_now["paid"].as_u64().unwrap())
    );
    assert!(element_text(&dom, "hashrate").ends_with("H/s"));
    let payments_start = dom.find("id=\"miner-payments\"").unwrap();
    assert!(
        dom[payments_start..].contains(&txid),
        "the payment's txid is listed"
    );
    let accepted_blocks = blocks
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["rejected_reason"].is_null())
        .count();
    let table_start = dom.find("id=\"blocks\"").unwrap();
    let table = &dom[table_start..table_start + dom[table_start..].find("</tbody>").unwrap()];
    assert_eq!(
        table.matches("<tr>").count(),
        accepted_blocks.min(20),
        "{table}"
    );
    assert!(table.contains("confirmed"));
    // Each block after the first has its round's effort, in the API and on the page.
    let efforts: Vec<f64> = blocks
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["effort"].as_f64())
        .collect();
    assert!(
        efforts.len() + 1 >= accepted_blocks.min(20) && efforts.iter().all(|e| *e > 0.0),
        "{efforts:?}"
    );
    assert_eq!(table.matches(" %</td>").count(), efforts.len(), "{table}");

    // Every admin action and the batch are in the audit trail; no secret is in any
    // response or log line.
    let (_, audit) = http(
        port,
        "GET",
        "/api/v1/admin/audit",
        &[&bearer(ADMIN_TOKEN)],
        "",
    );
    for action in ["config.set", "payouts.run", "payouts.batch_written"] {
        assert!(audit.contains(action), "{action} is audited: {audit}");
    }
    let rpc_password = "otedama-regtest";
    let log = std::fs::read_to_string(&log_path)?;
    assert!(log.contains("payout intent written"), "the log is captured");
    for (what, text) in [
        ("the log", log),
        ("the audit trail", audit),
        ("the config", config.to_string()),
        ("the stats", pool.stats()?.to_string()),
        (
            "the OpenAPI document",
            pool.get_text("/api/v1/openapi.json")?,
        ),
        ("the metrics", pool.get_text("/metrics")?),
    ] {
        assert!(!text.contains(ADMIN_TOKEN), "the admin token is in {what}");
        assert!(
            !text.contains(rpc_password),
            "the RPC password is in {what}"
        );
    }
    Ok(())
}
