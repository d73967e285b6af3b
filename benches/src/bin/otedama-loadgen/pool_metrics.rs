//! The pool's own account of a run: its `/metrics` read before and after the measured
//! run (`--pool-metrics`), and the acknowledgement latency split into its stages
//! (`otedama_share_ack_stage_seconds`) over just that run. Quantiles are bucket bounds
//! (Prometheus histograms keep no more), so they read "at most".

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context};

/// How long one read of `/metrics` may take.
const METRICS_READ_TIMEOUT_S: u64 = 5;
/// The most bytes of `/metrics` read (a pool's page is tens of KB).
const METRICS_BYTES_MAX: u64 = 8 << 20;

/// The histograms read: (metric, stage or "" for the whole acknowledgement) → cumulative
/// count per upper bound, plus the sum and count.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histograms(BTreeMap<String, Histogram>);

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    /// (upper bound in seconds, cumulative count), in increasing bound, `+Inf` last.
    pub buckets: Vec<(f64, u64)>,
    pub sum_s: f64,
    pub count: u64,
}

/// Reads `http://ADDRESS/metrics` (loopback only, as every target of this tool).
pub fn read(address: SocketAddr) -> anyhow::Result<Histograms> {
    anyhow::ensure!(
        address.ip().is_loopback(),
        "--pool-metrics must be a loopback address"
    );
    let timeout = Duration::from_secs(METRICS_READ_TIMEOUT_S);
    let mut stream = TcpStream::connect_timeout(&address, timeout)
        .with_context(|| format!("connecting to the pool's API at {address}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET /metrics HTTP/1.0\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream
        .take(METRICS_BYTES_MAX)
        .read_to_string(&mut response)
        .context("reading /metrics")?;
    let Some((head, body)) = response.split_once("\r\n\r\n") else {
        bail!("/metrics: no HTTP header end");
    };
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!(
            "/metrics answered {}",
            head.lines().next().unwrap_or_default()
        );
    }
    Ok(parse(body))
}

/// Picks the acknowledgement histograms out of a Prometheus text page.
pub fn parse(page: &str) -> Histograms {
    let mut histograms = Histograms::default();
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let labels = labels.trim_end_matches('}');
        let label = |key: &str| {
            labels.split(',').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                (k == key).then(|| v.trim_matches('"').to_string())
            })
        };
        let (family, part) = if let Some(family) = name.strip_suffix("_bucket") {
            (family, "bucket")
        } else if let Some(family) = name.strip_suffix("_sum") {
            (family, "sum")
        } else if let Some(family) = name.strip_suffix("_count") {
            (family, "count")
        } else {
            continue;
        };
        let key = match family {
            "otedama_share_ack_latency_seconds" => "ack".to_string(),
            "otedama_share_ack_stage_seconds" => match label("stage") {
                Some(stage) => stage,
                None => continue,
            },
            _ => continue,
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let histogram = histograms.0.entry(key).or_default();
        match part {
            "bucket" => {
                let bound = match label("le").as_deref() {
                    Some("+Inf") => f64::INFINITY,
                    Some(bound) => match bound.parse() {
                        Ok(bound) => bound,
                        Err(_) => continue,
                    },
                    None => continue,
                };
                histogram.buckets.push((bound, value as u64));
            }
            "sum" => histogram.sum_s = value,
            _ => histogram.count = value as u64,
        }
    }
    for histogram in histograms.0.values_mut() {
        histogram.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    histograms
}

impl Histograms {
    /// What happened between `before` and `self`: counts and sums subtracted.
    pub fn since(&self, before: &Histograms) -> Histograms {
        let mut run = Histograms::default();
        for (key, after) in &self.0 {
            let earlier = before.0.get(key).cloned().unwrap_or_default();
            let count_before = |bound: f64| {
                earlier
                    .buckets
                    .iter()
                    .find(|(b, _)| *b == bound)
                    .map_or(0, |(_, n)| *n)
            };
            run.0.insert(
                key.clone(),
                Histogram {
                    buckets: after
                        .buckets
                        .iter()
                        .map(|(bound, n)| (*bound, n.saturating_sub(count_before(*bound))))
                        .collect(),
                    sum_s: after.sum_s - earlier.sum_s,
                    count: after.count.saturating_sub(earlier.count),
                },
            );
        }
        run
    }

    pub fn get(&self, key: &str) -> Option<&Histogram> {
        self.0.get(key)
    }
}

impl Histogram {
    /// The smallest bucket bound holding at least `quantile` of the observations, in
    /// seconds (infinite past the last finite bound); `None` with no observations.
    pub fn quantile_bound_s(&self, quantile: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let wanted = (quantile * self.count as f64).ceil() as u64;
        self.buckets
            .iter()
            .find(|(_, cumulative)| *cumulative >= wanted)
            .map(|(bound, _)| *bound)
    }

    pub fn mean_s(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_s / self.count as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "\
# TYPE otedama_share_ack_stage_seconds histogram
otedama_share_ack_stage_seconds_bucket{stage=\"disk\",le=\"0.001\"} 10
otedama_share_ack_stage_seconds_bucket{stage=\"disk\",le=\"0.002\"} 10
otedama_share_ack_stage_seconds_bucket{stage=\"disk\",le=\"+Inf\"} 10
otedama_share_ack_stage_seconds_sum{stage=\"disk\"} 0.005
otedama_share_ack_stage_seconds_count{stage=\"disk\"} 10
otedama_share_ack_latency_seconds_count 10
otedama_shares_total{result=\"accepted\"} 10
";
    const AFTER: &str = "\
otedama_share_ack_stage_seconds_bucket{stage=\"disk\",le=\"0.001\"} 60
otedama_share_ack_stage_seconds_bucket{stage=\"disk\",le=\"0.002\"} 108
otedama_share_ack_stage_seconds_bucket{stage=\"disk\",le=\"+Inf\"} 110
otedama_share_ack_stage_seconds_sum{stage=\"disk\"} 0.155
otedama_share_ack_stage_seconds_count{stage=\"disk\"} 110
otedama_share_ack_latency_seconds_count 110
";

    /// Only the run's observations count, and quantiles are the bucket bounds that hold
    /// them: of 100, 50 under 1 ms, 48 more under 2 ms, 2 slower.
    #[test]
    fn a_run_is_the_difference_of_two_pages() {
        let run = parse(AFTER).since(&parse(BEFORE));
        let disk = run.get("disk").unwrap();
        assert_eq!(disk.count, 100);
        assert_eq!(disk.quantile_bound_s(0.5), Some(0.001));
        assert_eq!(disk.quantile_bound_s(0.98), Some(0.002));
        assert_eq!(disk.quantile_bound_s(0.99), Some(f64::INFINITY));
        assert!((disk.mean_s().unwrap() - 0.0015).abs() < 1e-12);
        assert_eq!(run.get("ack").unwrap().count, 100);
        assert!(run.get("accepted").is_none());
    }
}
