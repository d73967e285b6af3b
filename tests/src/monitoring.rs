//! The monitoring files the repository ships (`monitoring/`): Prometheus alert rules with
//! their unit tests, and a Grafana dashboard. Read here for the tests that check them.

use std::collections::BTreeSet;
use std::path::PathBuf;

/// `monitoring/` in the repository.
pub fn monitoring_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../monitoring")
}

pub fn rules_file() -> PathBuf {
    monitoring_dir().join("prometheus/otedama.rules.yml")
}

pub fn rules_test_file() -> PathBuf {
    monitoring_dir().join("prometheus/otedama.rules.test.yml")
}

pub fn dashboard_file() -> PathBuf {
    monitoring_dir().join("grafana/otedama.json")
}

/// The dashboard, parsed.
pub fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(dashboard_file()).expect("the dashboard file");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every query of the dashboard's panels.
pub fn dashboard_queries() -> Vec<String> {
    dashboard()["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|target| Some(target["expr"].as_str()?.to_string()))
        .collect()
}

/// The names of Otedama's own metrics (`otedama_…`) the rules and the dashboard use.
pub fn metric_names_used() -> BTreeSet<String> {
    let rules = std::fs::read_to_string(rules_file()).expect("the rules file");
    let mut text = rules;
    for query in dashboard_queries() {
        text.push('\n');
        text.push_str(&query);
    }
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(found) = text[at..].find("otedama_") {
        let start = at + found;
        let end = start
            + bytes[start..]
                .iter()
                .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || **b == b'_')
                .count();
        // `otedama_…` inside a word (a file name, a label value) is not a metric.
        let inside_word =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'.');
        if !inside_word {
            names.insert(text[start..end].to_string());
        }
        at = end;
    }
    names
}
