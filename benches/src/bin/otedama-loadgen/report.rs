//! What one load-generator process measured, how the parent merges the processes, and the
//! summary it prints (human lines, then one JSON line with fixed keys for scripts).

use std::time::Duration;

use anyhow::Context;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::Args;

/// Highest latency the histograms hold, in microseconds (60 s); larger values are counted
/// at it (`saturating_record`), never dropped.
pub const LATENCY_US_MAX: u64 = 60_000_000;

pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("constant bounds are valid")
}

/// Counts one process kept, plus its histograms in HdrHistogram's V2 encoding (hex).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WorkerReport {
    pub connections_attempted: u64,
    /// Connections that subscribed, authorized, got work and were still open at the end.
    pub connections_held: u64,
    pub connect_errors: u64,
    pub authorize_errors: u64,
    pub disconnects: u64,
    /// Times the pool asked a connection to reconnect (`client.reconnect`, a pool handing
    /// its miners to a replacement) and it did: not errors.
    #[serde(default)]
    pub reconnects: u64,
    pub shares_sent: u64,
    pub shares_acked: u64,
    /// Shares the pool called stale (code 21): in flight across a new block, not a fault.
    pub shares_stale: u64,
    pub shares_rejected: u64,
    /// Submissions skipped because the connection had `inflight_max` unacknowledged.
    pub throttled: u64,
    /// Whether job receipt times were measured from the pool's publish stamp (synthetic
    /// chain) rather than from the first receipt in this process.
    pub broadcast_stamped: bool,
    pub ack_us: String,
    pub broadcast_us: String,
    /// Bytes on the wire during the measured run, both directions, headers included
    /// (see `connection::TCP_HEADER_BYTES` and `v2::UDP_HEADER_BYTES`).
    #[serde(default)]
    pub wire_bytes: u64,
}

pub fn encode_histogram(histogram: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    V2Serializer::new()
        .serialize(histogram, &mut bytes)
        .expect("serializing into memory cannot fail");
    hex::encode(bytes)
}

fn decode_histogram(text: &str) -> anyhow::Result<Histogram<u64>> {
    let bytes = hex::decode(text).context("histogram hex")?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("histogram encoding: {e:?}"))
}

/// Every process's report, added up.
pub struct Summary {
    pub total: WorkerReport,
    pub ack_us: Histogram<u64>,
    pub broadcast_us: Histogram<u64>,
    pub duration: Duration,
}

impl Summary {
    pub fn merge(reports: &[WorkerReport], duration: Duration) -> anyhow::Result<Self> {
        let mut total = WorkerReport {
            broadcast_stamped: !reports.is_empty(),
            ..Default::default()
        };
        let mut ack_us = latency_histogram();
        let mut broadcast_us = latency_histogram();
        for report in reports {
            total.connections_attempted += report.connections_attempted;
            total.connections_held += report.connections_held;
            total.connect_errors += report.connect_errors;
            total.authorize_errors += report.authorize_errors;
            total.disconnects += report.disconnects;
            total.reconnects += report.reconnects;
            total.shares_sent += report.shares_sent;
            total.shares_acked += report.shares_acked;
            total.shares_stale += report.shares_stale;
            total.shares_rejected += report.shares_rejected;
            total.throttled += report.throttled;
            total.wire_bytes += report.wire_bytes;
            total.broadcast_stamped &= report.broadcast_stamped;
            ack_us.add(decode_histogram(&report.ack_us)?)?;
            broadcast_us.add(decode_histogram(&report.broadcast_us)?)?;
        }
        Ok(Summary {
            total,
            ack_us,
            broadcast_us,
            duration,
        })
    }

    fn errors(&self) -> u64 {
        let t = &self.total;
        t.connect_errors + t.authorize_errors + t.disconnects + t.shares_rejected
    }

    fn wire_bytes_per_share(&self) -> f64 {
        self.total.wire_bytes as f64 / (self.total.shares_acked.max(1)) as f64
    }

    fn shares_per_s(&self) -> f64 {
        self.total.shares_acked as f64 / self.duration.as_secs_f64().max(1e-9)
    }

    /// Shares the pool answered, accepted or not, per second: what a pool validated and
    /// replied to, comparable between pools that judge the same shares differently (one
    /// whose lowest difficulty is above the load's refuses them all, after the same work).
    fn answered_per_s(&self) -> f64 {
        let t = &self.total;
        (t.shares_acked + t.shares_stale + t.shares_rejected) as f64
            / self.duration.as_secs_f64().max(1e-9)
    }

    /// `stages`: the pool's own histograms over the measured run (`--pool-metrics`).
    pub fn print(&self, args: &Args, stages: Option<&crate::pool_metrics::Histograms>) {
        let t = &self.total;
        let quantile_us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q);
        println!(
            "target {}  protocol {}  connections {}  rate {}/s  duration {} s  processes {}",
            args.target,
            args.protocol.name(),
            args.connections,
            args.rate,
            args.duration,
            args.processes
        );
        println!(
            "connections held     {} of {} (connect errors {}, authorize errors {}, disconnects {})",
            t.connections_held,
            t.connections_attempted,
            t.connect_errors,
            t.authorize_errors,
            t.disconnects
        );
        if t.reconnects > 0 {
            println!("reconnects           {} (asked by the pool)", t.reconnects);
        }
        println!(
            "shares               sent {}  acked {}  stale {}  rejected {}  throttled {}",
            t.shares_sent, t.shares_acked, t.shares_stale, t.shares_rejected, t.throttled
        );
        println!("shares acked/s       {:.0}", self.shares_per_s());
        println!("shares answered/s    {:.0}", self.answered_per_s());
        println!(
            "wire bytes per share {:.1}  (both directions, IP and TCP/UDP headers included)",
            self.wire_bytes_per_share()
        );
        println!(
            "ack latency          p50 {} us  p99 {} us  p999 {} us  max {} us",
            quantile_us(&self.ack_us, 0.5),
            quantile_us(&self.ack_us, 0.99),
            quantile_us(&self.ack_us, 0.999),
            self.ack_us.max()
        );
        if self.broadcast_us.is_empty() {
            println!("job broadcast        no new job arrived during the run");
        } else {
            println!(
                "job broadcast        p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} receipts, {})",
                quantile_us(&self.broadcast_us, 0.5) as f64 / 1000.0,
                quantile_us(&self.broadcast_us, 0.99) as f64 / 1000.0,
                self.broadcast_us.max() as f64 / 1000.0,
                self.broadcast_us.len(),
                if t.broadcast_stamped {
                    "from the pool's publish stamp"
                } else {
                    "from the first receipt in each process: the pool's own delay is not included"
                }
            );
        }
        let mut stage_figures = serde_json::Map::new();
        if let Some(stages) = stages {
            let ms = |seconds: Option<f64>| match seconds {
                Some(s) if s.is_finite() => format!("{:.3}", s * 1e3),
                Some(_) => "more".to_string(),
                None => "-".to_string(),
            };
            println!("pool's ack stages    (its /metrics over this run; p50/p99 are bucket bounds: at most)");
            for key in ["queue", "disk", "replicate", "handoff", "reply", "ack"] {
                let Some(h) = stages.get(key) else { continue };
                if key == "replicate" && h.count == 0 {
                    // Only a pool that acknowledges replicated shares has this stage.
                    continue;
                }
                let (p50, p99) = (h.quantile_bound_s(0.5), h.quantile_bound_s(0.99));
                println!(
                    "  {key:<8} shares {:>9}  mean {:>8} ms  p50 <= {:>7} ms  p99 <= {:>7} ms",
                    h.count,
                    ms(h.mean_s()),
                    ms(p50),
                    ms(p99)
                );
                let finite_ms = |s: Option<f64>| s.filter(|s| s.is_finite()).map(|s| s * 1e3);
                stage_figures.insert(
                    key.to_string(),
                    serde_json::json!({
                        "count": h.count,
                        "mean_ms": h.mean_s().map(|s| s * 1e3),
                        "p50_le_ms": finite_ms(p50),
                        "p99_le_ms": finite_ms(p99),
                    }),
                );
            }
        }
        println!("errors               {}", self.errors());
        let broadcast_p99_ms = (!self.broadcast_us.is_empty())
            .then(|| quantile_us(&self.broadcast_us, 0.99) as f64 / 1000.0);
        let line = serde_json::json!({
            "connections": t.connections_held,
            "shares_acked": t.shares_acked,
            "shares_per_s": (self.shares_per_s() * 10.0).round() / 10.0,
            "answered_per_s": (self.answered_per_s() * 10.0).round() / 10.0,
            "wire_bytes_per_share": (self.wire_bytes_per_share() * 10.0).round() / 10.0,
            "protocol": args.protocol.name(),
            "ack_p50_us": quantile_us(&self.ack_us, 0.5),
            "ack_p99_us": quantile_us(&self.ack_us, 0.99),
            "ack_p999_us": quantile_us(&self.ack_us, 0.999),
            "broadcast_p99_ms": broadcast_p99_ms,
            "errors": self.errors(),
            "connect_errors": t.connect_errors,
            "reconnects": t.reconnects,
            "pool_stages": stage_figures,
        });
        println!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A latency past `LATENCY_US_MAX` is counted at the top, not lost.
    #[test]
    fn latencies_past_the_limit_are_counted_at_it() {
        let mut histogram = latency_histogram();
        histogram.saturating_record(LATENCY_US_MAX);
        histogram.saturating_record(LATENCY_US_MAX + 1);
        histogram.saturating_record(u64::MAX);
        assert_eq!(histogram.len(), 3);
        assert!(histogram.max() >= LATENCY_US_MAX);
        assert_eq!(histogram.count_at(LATENCY_US_MAX), 3);
    }
}
