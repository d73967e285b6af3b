//! The alert rules and the Grafana dashboard in `monitoring/` (issue 21), checked as
//! exporters check theirs: `promtool check rules`, the rules' own unit tests
//! (`promtool test rules`: each alert fires on the series that should raise it and not on
//! the others), and every dashboard query parsed by promtool too. That each metric they
//! name is one a running pool exports is checked against a live `/metrics` in
//! `api_end_to_end`.

use std::collections::BTreeSet;
use std::process::Command;

use otedama_tests::monitoring::{dashboard, dashboard_queries, rules_file, rules_test_file};

/// Runs `promtool` with `args`; its output, or a panic with it.
fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool (Debian's prometheus package; `cargo xtask test` installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_alert_rules_load_and_their_unit_tests_pass() {
    let checked = promtool(&["check", "rules", rules_file().to_str().unwrap()]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", rules_test_file().to_str().unwrap()]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// A rule that would never fire on its own test series fails the unit tests: the check
/// above can fail.
#[test]
fn a_broken_rule_fails_its_unit_tests() {
    let dir = tempfile::tempdir().unwrap();
    let rules = std::fs::read_to_string(rules_file()).unwrap();
    let broken = rules.replace(
        "otedama_audit_chain_intact == 0",
        "otedama_audit_chain_intact == 2",
    );
    assert_ne!(broken, rules);
    std::fs::write(dir.path().join("otedama.rules.yml"), broken).unwrap();
    std::fs::copy(rules_test_file(), dir.path().join("otedama.rules.test.yml")).unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(dir.path().join("otedama.rules.test.yml"))
        .output()
        .expect("promtool");
    assert!(
        !out.status.success(),
        "a rule that cannot fire passed its tests"
    );
}

#[test]
fn the_dashboard_is_well_formed_and_every_query_parses() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "otedama-pool");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("a title");
        assert!(
            ids.insert(panel["id"].as_u64().expect("an id")),
            "{title}: id twice"
        );
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(x + w <= 24, "{title}: wider than Grafana's 24 columns");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
    }
    // Each query parsed by promtool, as a recording rule of a generated file (with the
    // dashboard's `$instance` variable filled in).
    let dir = tempfile::tempdir().unwrap();
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let queries = dashboard_queries();
    for (index, query) in queries.iter().enumerate() {
        let query = query.replace("$instance", ".*");
        file.push_str(&format!(
            "      - record: dashboard:query_{index}\n        expr: {}\n",
            serde_json::to_string(&query).unwrap()
        ));
    }
    let path = dir.path().join("dashboard.rules.yml");
    std::fs::write(&path, file).unwrap();
    let checked = promtool(&["check", "rules", path.to_str().unwrap()]);
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{checked}"
    );
}
