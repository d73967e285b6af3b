//! The HTTP API: `GET /api/v1/stats` (JSON), `GET /api/v1/blocks`, `GET /health`, and
//! `GET /metrics` in the Prometheus text exposition format.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::blocks::BlockStore;
use crate::stats::PoolState;

#[derive(Clone)]
struct ApiState {
    pool: Arc<PoolState>,
    blocks: Arc<BlockStore>,
}

pub async fn serve(
    address: SocketAddr,
    pool: Arc<PoolState>,
    blocks: Arc<BlockStore>,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/blocks", get(blocks_list))
        .route("/health", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .with_state(ApiState { pool, blocks });
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the API on {address}"))?;
    tracing::info!(%address, "API listening");
    axum::serve(listener, app).await.context("serving the API")
}

async fn stats(State(state): State<ApiState>) -> impl IntoResponse {
    let totals = state.pool.totals();
    Json(json!({
        "shares_accepted": totals.shares_accepted,
        "shares_rejected": totals.shares_rejected,
        "shares_rejected_by_code": totals.shares_rejected_by_code,
        "blocks_found": state.pool.blocks_found.load(Relaxed),
        "blocks_rejected": state.pool.blocks_rejected.load(Relaxed),
        "block_candidates": totals.block_candidates,
        "connections": totals.connections,
        "height": state.pool.height.load(Relaxed),
        "accepted_difficulty_sum": totals.accepted_difficulty_sum,
        "uptime_s": state.pool.started_at.elapsed().as_secs(),
    }))
}

async fn blocks_list(State(state): State<ApiState>) -> impl IntoResponse {
    Json(state.blocks.all())
}

async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    let totals = state.pool.totals();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "otedama_shares_accepted_total",
        "counter",
        "Shares acknowledged after being stored durably.",
        totals.shares_accepted.to_string(),
    );
    metric(
        "otedama_accepted_difficulty_total",
        "counter",
        "Sum of the difficulty of accepted shares.",
        totals.accepted_difficulty_sum.to_string(),
    );
    metric(
        "otedama_blocks_found_total",
        "counter",
        "Blocks the node accepted.",
        state.pool.blocks_found.load(Relaxed).to_string(),
    );
    metric(
        "otedama_blocks_rejected_total",
        "counter",
        "Block candidates the node refused.",
        state.pool.blocks_rejected.load(Relaxed).to_string(),
    );
    metric(
        "otedama_connections",
        "gauge",
        "Open miner connections.",
        totals.connections.to_string(),
    );
    metric(
        "otedama_chain_height",
        "gauge",
        "Height of the node's best block.",
        state.pool.height.load(Relaxed).to_string(),
    );
    let _ = writeln!(
        out,
        "# HELP otedama_shares_rejected_total Shares refused, by Stratum error code."
    );
    let _ = writeln!(out, "# TYPE otedama_shares_rejected_total counter");
    for code in 20..=25 {
        let count = totals
            .shares_rejected_by_code
            .get(&code)
            .copied()
            .unwrap_or(0);
        let _ = writeln!(
            out,
            "otedama_shares_rejected_total{{code=\"{code}\"}} {count}"
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}
