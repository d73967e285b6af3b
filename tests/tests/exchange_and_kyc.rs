//! The exchange and the KYC holds end to end, on litecoind regtest: three miners earn
//! through `otedama run`; two create exchange API keys by signing a challenge with their
//! payout address's key (Litecoin Core's `signmessage` for a P2PKH address, a BIP137
//! signature for a P2WPKH one); one moves LTC from its pool balance into the exchange and
//! sells it to the other, who withdraws what it bought back to its pool balance. The API
//! refuses bad keys and bad orders; the book and the trade reach the WebSocket feed. Then
//! every payout is held for KYC (a threshold of one litoshi): the provider's webhook hears
//! of each hold, one miner is verified by the operator and one by a signed provider
//! callback, and only those two are paid, each exactly once. Exports of the payments and
//! the audit log follow, and a denied address is refused an exchange key.

#[path = "common/payout_scenario.rs"]
mod payout_scenario;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine;
use bitcoin::secp256k1::{Message, Secp256k1};
use serde_json::{json, Value};

use otedama_chain::signed_message::{message_digest, message_magic};
use otedama_compliance::kyc;
use payout_scenario::{start_with_addresses, Scenario, ADMIN_TOKEN, MINERS_WALLET};

const KYC_SECRET: &str = "kyc-provider-shared-secret-0123456789abcdef";
const MARKET: &str = "LTC-BTC";
/// Rounds of two blocks each at most, until every miner has earned.
const MINING_ROUNDS_MAX: usize = 8;
/// Litoshis per LTC, satoshis per BTC.
const COIN: u64 = 100_000_000;

/// The KYC provider's end: every request posted to it, as (signature header, body).
fn provider_listener() -> anyhow::Result<(u16, mpsc::Receiver<(String, String)>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let (posts, received) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            if let Ok(post) = read_post(stream) {
                if posts.send(post).is_err() {
                    return;
                }
            }
        }
    });
    Ok((port, received))
}

fn read_post(stream: TcpStream) -> anyhow::Result<(String, String)> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let (mut signature, mut length) = (String::new(), 0usize);
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse()?,
                kyc::SIGNATURE_HEADER => signature = value.trim().to_string(),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    (&stream).write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")?;
    Ok((signature, String::from_utf8(body)?))
}

/// What the provider checks on each post: the pool signed this body within the window.
fn pool_signed(signature: &str, body: &str) -> bool {
    let timestamp_s = signature
        .split(',')
        .find_map(|part| part.strip_prefix("t="))
        .and_then(|t| t.parse::<u64>().ok());
    timestamp_s.is_some_and(|t| kyc::sign(KYC_SECRET.as_bytes(), t, body.as_bytes()) == signature)
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Exchange<'a> {
    scenario: &'a Scenario,
}

impl Exchange<'_> {
    fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        self.scenario
            .pool
            .json_call(method, path, key, body.as_ref())
    }

    fn challenge(&self, address: &str) -> anyhow::Result<String> {
        let (status, answer) = self.call(
            "POST",
            "/api/v1/dex/keys/challenge",
            None,
            Some(json!({"address": address})),
        )?;
        assert_eq!(status, 200, "{answer}");
        Ok(answer["message"].as_str().unwrap().to_string())
    }

    fn create_key(
        &self,
        address: &str,
        message: &str,
        signature: &str,
    ) -> anyhow::Result<(u16, Value)> {
        self.call(
            "POST",
            "/api/v1/dex/keys",
            None,
            Some(json!({"address": address, "message": message, "signature": signature})),
        )
    }

    fn order(&self, key: &str, order: Value) -> anyhow::Result<(u16, Value)> {
        self.call("POST", "/api/v1/dex/orders", Some(key), Some(order))
    }

    fn account(&self, key: &str) -> anyhow::Result<Value> {
        let (status, account) = self.call("GET", "/api/v1/dex/account", Some(key), None)?;
        assert_eq!(status, 200, "{account}");
        Ok(account)
    }
}

/// A BIP137 signature (P2WPKH header) of `message` by the wallet key behind `address`.
fn bip137_signature(scenario: &Scenario, address: &str, message: &str) -> anyhow::Result<String> {
    let wif = scenario
        .nodes
        .miner
        .call_wallet(MINERS_WALLET, "dumpprivkey", json!([address]))?;
    let key = bitcoin::PrivateKey::from_wif(wif.as_str().unwrap())?;
    let digest = message_digest(&message_magic("Litecoin"), message);
    let signature =
        Secp256k1::signing_only().sign_ecdsa_recoverable(&Message::from_digest(digest), &key.inner);
    let (recovery_id, compact) = signature.serialize_compact();
    let mut bytes = vec![39 + recovery_id.to_i32() as u8];
    bytes.extend_from_slice(&compact);
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// The next feed message of `kind` within a minute.
fn next_feed_message(
    feed: &mut tungstenite::WebSocket<TcpStream>,
    kind: &str,
) -> anyhow::Result<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if let tungstenite::Message::Text(text) = feed.read()? {
            let message: Value = serde_json::from_str(&text)?;
            if message["type"] == kind {
                return Ok(message);
            }
        }
    }
    anyhow::bail!("no {kind} message on the feed within a minute")
}

#[test]
fn miners_trade_on_the_exchange_and_kyc_holds_payouts_until_verified() -> anyhow::Result<()> {
    let (provider_port, provider_posts) = provider_listener()?;
    let secrets = tempfile::tempdir()?;
    let secret_file = secrets.path().join("kyc-secret");
    std::fs::write(&secret_file, format!("{KYC_SECRET}\n"))?;
    let deny_file = secrets.path().join("deny.txt");
    std::fs::write(&deny_file, "# nobody yet\n")?;
    let webhook = format!("http://127.0.0.1:{provider_port}/kyc");
    let (scenario, _run) = start_with_addresses(
        "pplns",
        &[
            "--dex-enabled",
            "true",
            "--kyc-threshold",
            "LTC=0.00000001",
            "--kyc-webhook-url",
            &webhook,
            "--kyc-webhook-secret-file",
            secret_file.to_str().unwrap(),
            "--deny-list-file",
            deny_file.to_str().unwrap(),
            "--deny-list-reload-s",
            "1",
        ],
        ["legacy", "bech32", "bech32"],
    )?;
    scenario.mine_until_each_earned(10 * COIN, MINING_ROUNDS_MAX)?;
    scenario.mature()?;
    let (seller, buyer, bystander) = (
        scenario.miners[0].clone(),
        scenario.miners[1].clone(),
        scenario.miners[2].clone(),
    );
    let owed = scenario.owed()?;
    let stats: Vec<Value> = scenario
        .miners
        .iter()
        .map(|m| scenario.pool.get_json(&format!("/api/v1/miners/{m}")))
        .collect::<anyhow::Result<_>>()?;
    assert!(owed.values().all(|v| *v > 10 * COIN), "{owed:?} {stats:?}");
    let exchange = Exchange {
        scenario: &scenario,
    };

    // Keys: Litecoin Core's signmessage for the P2PKH address, BIP137 for the P2WPKH one.
    let message = exchange.challenge(&seller)?;
    let wrong = scenario.nodes.miner.call_wallet(
        MINERS_WALLET,
        "signmessage",
        json!([seller, "some other message"]),
    )?;
    let (status, answer) = exchange.create_key(&seller, &message, wrong.as_str().unwrap())?;
    assert_eq!(status, 401, "a signature of another message: {answer}");
    let signature =
        scenario
            .nodes
            .miner
            .call_wallet(MINERS_WALLET, "signmessage", json!([seller, message]))?;
    let signature = signature.as_str().unwrap();
    let (status, answer) = exchange.create_key(&buyer, &message, signature)?;
    assert_eq!(
        status, 401,
        "the seller's signature does not prove the buyer's address: {answer}"
    );
    let (status, answer) = exchange.create_key(&seller, &message, signature)?;
    assert_eq!(status, 200, "{answer}");
    let seller_key = answer["api_key"].as_str().unwrap().to_string();
    let (status, answer) = exchange.create_key(&seller, &message, signature)?;
    assert_eq!(status, 401, "a challenge is answered once: {answer}");
    let message = exchange.challenge(&buyer)?;
    let signature = bip137_signature(&scenario, &buyer, &message)?;
    let (status, answer) = exchange.create_key(&buyer, &message, &signature)?;
    assert_eq!(status, 200, "{answer}");
    let buyer_key = answer["api_key"].as_str().unwrap().to_string();

    for key in [None, Some("otd_0000"), Some(ADMIN_TOKEN)] {
        let (status, answer) = exchange.call("GET", "/api/v1/dex/account", key, None)?;
        assert_eq!(status, 401, "{key:?}: {answer}");
    }
    let (status, answer) = exchange.call(
        "POST",
        "/api/v1/dex/orders",
        None,
        Some(json!({"market": MARKET, "side": "buy", "price": "0.01", "quantity": "1"})),
    )?;
    assert_eq!(status, 401, "{answer}");

    // LTC enters the exchange from the seller's mature pool balance; BTC from the operator.
    let (status, answer) = exchange.call(
        "POST",
        "/api/v1/dex/deposits",
        Some(&seller_key),
        Some(json!({"amount": "10"})),
    )?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["state"], "done", "{answer}");
    let (status, answer) = exchange.call(
        "POST",
        "/api/v1/dex/deposits",
        Some(&seller_key),
        Some(json!({"amount": "100000"})),
    )?;
    assert_eq!(status, 400, "more than the mature balance: {answer}");
    let (status, answer) = scenario.pool.json_call(
        "POST",
        "/api/v1/admin/dex/credits",
        Some(ADMIN_TOKEN),
        Some(&json!({"address": buyer, "asset": "BTC", "amount": "1"})),
    )?;
    assert_eq!(status, 200, "{answer}");

    // Input validation.
    let sell = |price: &str, quantity: &str| json!({"market": MARKET, "side": "sell", "type": "limit", "price": price, "quantity": quantity});
    for (order, status_expected, why) in [
        (sell("0.0125", "0"), 400, "zero quantity"),
        (sell("0.0125", "-1"), 400, "negative quantity"),
        (sell("-0.0125", "1"), 400, "negative price"),
        (sell("0.0125", "0.015"), 400, "quantity off the lot size"),
        (sell("0.0000015", "1"), 400, "price off the tick"),
        (
            json!({"market": "LTC-DOGE", "side": "sell", "price": "1", "quantity": "1"}),
            404,
            "unknown market",
        ),
        (
            json!({"market": MARKET, "side": "sell", "price": 0.0125, "quantity": "1"}),
            400,
            "a JSON number, not a decimal string",
        ),
        (sell("0.0125", "11"), 422, "more than the seller holds"),
    ] {
        let (status, answer) = exchange.order(&seller_key, order)?;
        assert_eq!(status, status_expected, "{why}: {answer}");
    }

    let (mut feed, _) = tungstenite::client(
        format!("ws://127.0.0.1:{}/ws", scenario.pool.api_port),
        TcpStream::connect(("127.0.0.1", scenario.pool.api_port))?,
    )?;
    feed.get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)))?;
    let (status, answer) = exchange.order(&seller_key, sell("0.0125", "5"))?;
    assert_eq!(status, 201, "{answer}");
    let resting_id = answer["order_id"].as_u64().unwrap();
    let book = next_feed_message(&mut feed, "dex.book")?;
    assert_eq!(
        book["book"]["asks"],
        json!([["0.01250000", "5.00000000"]]),
        "{book}"
    );
    let (status, answer) = exchange.call(
        "DELETE",
        &format!("/api/v1/dex/orders/{resting_id}"),
        Some(&buyer_key),
        None,
    )?;
    assert_eq!(status, 404, "another miner's order: {answer}");
    let (status, answer) = exchange.call(
        "PUT",
        &format!("/api/v1/dex/orders/{resting_id}"),
        Some(&buyer_key),
        Some(json!({"price": "0.0125", "quantity": "4"})),
    )?;
    assert_eq!(
        status, 404,
        "another miner's order cannot be replaced: {answer}"
    );
    // The same price and fewer lots keeps the order's id and place in the queue.
    let (status, answer) = exchange.call(
        "PUT",
        &format!("/api/v1/dex/orders/{resting_id}"),
        Some(&seller_key),
        Some(json!({"price": "0.0125", "quantity": "4"})),
    )?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["order_id"].as_u64(), Some(resting_id), "{answer}");
    assert_eq!(answer["events"][0]["type"], "reduced", "{answer}");

    let (status, answer) = exchange.order(
        &buyer_key,
        json!({"market": MARKET, "side": "buy", "price": "0.013", "quantity": "2", "time_in_force": "ioc"}),
    )?;
    assert_eq!(status, 201, "{answer}");
    let trade = next_feed_message(&mut feed, "dex.trade")?;
    assert_eq!(
        trade["trade"]["price"], "0.01250000",
        "the maker's price: {trade}"
    );
    assert_eq!(trade["trade"]["quantity"], "2.00000000", "{trade}");
    let (_, book) = exchange.call(
        "GET",
        &format!("/api/v1/dex/orderbook/{MARKET}"),
        None,
        None,
    )?;
    assert_eq!(
        book["asks"],
        json!([["0.01250000", "2.00000000"]]),
        "{book}"
    );
    assert_eq!(
        book["bids"],
        json!([]),
        "the IOC remainder does not rest: {book}"
    );
    let (_, trades) = exchange.call("GET", &format!("/api/v1/dex/trades/{MARKET}"), None, None)?;
    assert_eq!(trades.as_array().unwrap().len(), 1, "{trades}");
    let (_, markets) = exchange.call("GET", "/api/v1/dex/markets", None, None)?;
    assert_eq!(markets[0]["symbol"], MARKET, "{markets}");

    let (status, answer) = exchange.call(
        "DELETE",
        &format!("/api/v1/dex/orders/{resting_id}"),
        Some(&seller_key),
        None,
    )?;
    assert_eq!(status, 200, "{answer}");
    let (status, _) = exchange.call(
        "DELETE",
        &format!("/api/v1/dex/orders/{resting_id}"),
        Some(&seller_key),
        None,
    )?;
    assert_eq!(status, 404, "a canceled order is gone");
    let (status, _) = exchange.call("DELETE", "/api/v1/dex/orders/x", Some(&seller_key), None)?;
    assert_eq!(status, 400);

    // 2 LTC at 0.0125 BTC: 0.025 BTC. Nothing is reserved once nothing rests.
    let seller_account = exchange.account(&seller_key)?;
    assert_eq!(
        seller_account["balances"]["LTC"],
        json!({"available": "8.00000000", "reserved": "0.00000000"})
    );
    assert_eq!(seller_account["balances"]["BTC"]["available"], "0.02500000");
    let buyer_account = exchange.account(&buyer_key)?;
    assert_eq!(buyer_account["balances"]["LTC"]["available"], "2.00000000");
    assert_eq!(buyer_account["balances"]["BTC"]["available"], "0.97500000");

    // What the buyer bought goes back to its pool balance; the seller keeps 8 LTC inside.
    let (status, answer) = exchange.call(
        "POST",
        "/api/v1/dex/withdrawals",
        Some(&buyer_key),
        Some(json!({"amount": "2"})),
    )?;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = exchange.call(
        "POST",
        "/api/v1/dex/withdrawals",
        Some(&buyer_key),
        Some(json!({"amount": "0.00000001"})),
    )?;
    assert_eq!(status, 422, "nothing left to withdraw: {answer}");
    let owed_now = scenario.owed()?;
    assert_eq!(owed_now[&seller], owed[&seller] - 10 * COIN);
    assert_eq!(owed_now[&buyer], owed[&buyer] + 2 * COIN);
    assert_eq!(owed_now[&bystander], owed[&bystander]);
    let exchange_account = scenario.pool.get_json("/api/v1/miners/@exchange");
    assert!(
        exchange_account.is_err(),
        "the exchange account is not an address"
    );
    // The ledger's exchange account holds exactly the LTC inside the exchange.
    let accounts = otedama_tests::admin_get(&scenario.pool, "/api/v1/admin/miners", ADMIN_TOKEN)?;
    let inside = accounts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["address"] == "@exchange")
        .map(|a| a["balance_mature"].as_u64());
    assert_eq!(inside, Some(Some(8 * COIN)), "{accounts}");
    let metrics = scenario.pool.get_text("/metrics")?;
    assert!(
        metrics.contains(&format!(
            "otedama_exchange_holdings{{asset=\"LTC\"}} {}",
            8 * COIN
        )),
        "{metrics}"
    );
    scenario.check_conservation()?;
    // An order resting when the hold starts (below) must not stay on the book, or another
    // address could buy the held LTC and be paid for it.
    let (status, answer) = exchange.call(
        "POST",
        "/api/v1/dex/orders",
        Some(&seller_key),
        Some(json!({"market": MARKET, "side": "sell", "price": "0.02", "quantity": "1"})),
    )?;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(
        exchange.account(&seller_key)?["open_orders"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // KYC: a one-litoshi threshold holds every payout, and the provider hears of each.
    let (status, body) = scenario.run_payout()?;
    assert_eq!(status, 200, "{body}");
    assert!(body["batch"].is_null(), "everything is held: {body}");
    let mut notified = BTreeMap::new();
    while notified.len() < 3 {
        let (signature, body) = provider_posts.recv_timeout(Duration::from_secs(60))?;
        assert!(pool_signed(&signature, &body), "{signature} {body}");
        let notice: Value = serde_json::from_str(&body)?;
        assert_eq!(notice["event"], "kyc.required", "{notice}");
        notified.insert(notice["address"].as_str().unwrap().to_string(), notice);
    }
    assert_eq!(
        notified.keys().collect::<Vec<_>>(),
        {
            let mut all = vec![&seller, &buyer, &bystander];
            all.sort();
            all
        },
        "{notified:?}"
    );
    let kyc_list = otedama_tests::admin_get(&scenario.pool, "/api/v1/admin/kyc", ADMIN_TOKEN)?;
    assert_eq!(
        kyc_list["pending"].as_array().unwrap().len(),
        3,
        "{kyc_list}"
    );

    // A held address cannot move value through the exchange (issue 15, point 8): its
    // resting order was cancelled as the hold began, and it may not deposit or place an
    // order, or its balance could be sold to another address.
    let seller_account = exchange.account(&seller_key)?;
    assert_eq!(seller_account["open_orders"], json!([]), "{seller_account}");
    assert_eq!(
        seller_account["balances"]["LTC"],
        json!({"available": "8.00000000", "reserved": "0.00000000"})
    );
    let (status, answer) = exchange.call(
        "POST",
        "/api/v1/dex/deposits",
        Some(&seller_key),
        Some(json!({"amount": "0.01"})),
    )?;
    assert_eq!(status, 403, "{answer}");
    let (status, answer) = exchange.call(
        "POST",
        "/api/v1/dex/orders",
        Some(&seller_key),
        Some(json!({"market": MARKET, "side": "sell", "price": "0.01", "quantity": "1"})),
    )?;
    assert_eq!(status, 403, "{answer}");

    // The operator verifies the seller; the provider, the buyer.
    let (status, answer) = scenario.pool.json_call(
        "PUT",
        &format!("/api/v1/admin/kyc/{seller}"),
        Some(ADMIN_TOKEN),
        Some(&json!({"state": "verified", "reference": "passport checked"})),
    )?;
    assert_eq!(status, 200, "{answer}");
    let callback =
        json!({"id": "verdict-42", "address": buyer, "state": "verified", "reference": "case-42"})
            .to_string();
    let callback_call = |signature: &str, body: &str| {
        scenario.pool.http(
            "POST",
            "/api/v1/kyc/callback",
            &[(kyc::SIGNATURE_HEADER, signature)],
            Some(body),
        )
    };
    let stale = kyc::sign(KYC_SECRET.as_bytes(), now_s() - 3600, callback.as_bytes());
    assert_eq!(
        callback_call(&stale, &callback)?.0,
        401,
        "a replayed callback"
    );
    let forged = kyc::sign(
        b"not-the-shared-secret-at-all-000000",
        now_s(),
        callback.as_bytes(),
    );
    assert_eq!(
        callback_call(&forged, &callback)?.0,
        401,
        "a forged callback"
    );
    let signed = kyc::sign(KYC_SECRET.as_bytes(), now_s(), callback.as_bytes());
    let tampered = callback.replace(&buyer, &bystander);
    assert_eq!(callback_call(&signed, &tampered)?.0, 401, "an edited body");
    let (status, answer) = callback_call(&signed, &callback)?;
    assert_eq!(status, 200, "{answer}");
    // The same verdict again, freshly signed (a replay inside the clock window): refused.
    let resigned = kyc::sign(KYC_SECRET.as_bytes(), now_s(), callback.as_bytes());
    assert_eq!(
        callback_call(&resigned, &callback)?.0,
        409,
        "a replayed callback id"
    );

    let expected: BTreeMap<String, u64> = [
        (seller.clone(), owed_now[&seller]),
        (buyer.clone(), owed_now[&buyer]),
    ]
    .into_iter()
    .collect();
    let (status, body) = scenario.run_payout()?;
    assert_eq!(status, 200, "{body}");
    scenario.wait_paid(&expected)?;
    assert_eq!(scenario.received(&bystander)?, 0, "still held");
    let (status, body) = scenario.run_payout()?;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["batch"].is_null(),
        "paid once, and the bystander still waits: {body}"
    );
    let kyc_list = otedama_tests::admin_get(&scenario.pool, "/api/v1/admin/kyc", ADMIN_TOKEN)?;
    let pending: Vec<&Value> = kyc_list["pending"].as_array().unwrap().iter().collect();
    assert_eq!(pending.len(), 1, "{kyc_list}");
    assert_eq!(pending[0]["address"], bystander.as_str());
    assert_eq!(pending[0]["held"].as_u64(), Some(owed_now[&bystander]));

    // Every KYC change is in the audit chain, with who made it.
    let audit = otedama_tests::admin_get(&scenario.pool, "/api/v1/admin/audit", ADMIN_TOKEN)?;
    let kyc_changes: Vec<(String, String, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "kyc.state")
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_string(),
                e["detail"]["address"].as_str().unwrap().to_string(),
                e["detail"]["to"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for change in [
        ("admin".to_string(), seller.clone(), "verified".to_string()),
        (
            "provider".to_string(),
            buyer.clone(),
            "verified".to_string(),
        ),
        (
            "system".to_string(),
            bystander.clone(),
            "pending".to_string(),
        ),
    ] {
        assert!(
            kyc_changes.contains(&change),
            "{change:?} in {kyc_changes:?}"
        );
    }

    // Exports for a tax office or a regulator.
    let path = format!("/api/v1/admin/exports/payments?address={seller}&format=json");
    let payments = otedama_tests::admin_get(&scenario.pool, &path, ADMIN_TOKEN)?;
    let rows = payments["payments"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{payments}");
    assert_eq!(rows[0]["amount_units"].as_u64(), Some(owed_now[&seller]));
    assert_eq!(rows[0]["state"], "sent");
    let authorization = format!("Bearer {ADMIN_TOKEN}");
    let (status, csv) = scenario.pool.http(
        "GET",
        &format!("/api/v1/admin/exports/payments?address={seller}&format=csv"),
        &[("Authorization", &authorization)],
        None,
    )?;
    assert_eq!(status, 200, "{csv}");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "batch_id,txid,amount,amount_units,state,created_at_ms,sent_at_ms"
    );
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(
        lines[1].contains(&format!(",{},sent,", owed_now[&seller])),
        "{csv}"
    );
    let exported = otedama_tests::admin_get(
        &scenario.pool,
        "/api/v1/admin/exports/audit?from_ms=0",
        ADMIN_TOKEN,
    )?;
    let entries = exported["entries"].as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["action"] == "kyc.state"),
        "{exported}"
    );
    // The exported part links up: each entry names the hash of the one before.
    for pair in entries.windows(2) {
        assert_eq!(pair[1]["previous_hash"], pair[0]["hash"]);
    }
    let (status, csv) = scenario.pool.http(
        "GET",
        "/api/v1/admin/exports/audit?from_ms=0&format=csv",
        &[("Authorization", &authorization)],
        None,
    )?;
    assert_eq!(status, 200);
    assert_eq!(
        csv.lines().next(),
        Some("sequence,at_ms,actor,action,detail,previous_hash,hash")
    );
    // The header, the entries above, and the JSON export's own audit entry.
    assert_eq!(csv.lines().count(), entries.len() + 2, "{csv}");
    let (status, _) =
        scenario
            .pool
            .http("GET", "/api/v1/admin/exports/audit?from_ms=0", &[], None)?;
    assert_eq!(status, 401, "exports are admin only");

    // A denied address cannot get an exchange key, whatever it signs.
    std::fs::write(&deny_file, format!("{bystander}\n"))?;
    otedama_tests::wait_until(Duration::from_secs(30), "the deny list hit", || {
        otedama_tests::admin_get(&scenario.pool, "/api/v1/admin/audit", ADMIN_TOKEN).is_ok_and(
            |audit| {
                audit.as_array().unwrap().iter().any(|e| {
                    e["action"] == "deny_list.hit" && e["detail"]["address"] == bystander.as_str()
                })
            },
        )
    })?;
    let message = exchange.challenge(&bystander)?;
    let signature = bip137_signature(&scenario, &bystander, &message)?;
    let (status, answer) = exchange.create_key(&bystander, &message, &signature)?;
    assert_eq!(status, 403, "{answer}");
    scenario.check_conservation()?;
    Ok(())
}
