//! The plan against fact sets (see `facts/README.md`): what it sets, that it refuses what
//! memory cannot hold (at the exact edge), and that a host carrying the plan needs no
//! further change.

use otedama_tune::facts::Facts;
use otedama_tune::plan::{self, Kind, Plan, PlanError, Target};

fn facts(name: &str) -> Facts {
    // Read at run time: a test binary built from another checkout that shares the target
    // directory would carry that checkout's path.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let path = format!("{manifest_dir}/tests/facts/{name}.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn target(connections: u64, cores: &[u32], processes: u32) -> Target {
    Target {
        connections,
        shares_per_second: connections / 10,
        dataplane_cores: cores.to_vec(),
        dataplane_processes: processes,
    }
}

fn planned<'a>(plan: &'a Plan, name: &str) -> &'a str {
    &plan
        .settings
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("{name} not in the plan"))
        .planned
}

/// The facts of a host that carries `plan`: every setting at its planned value.
fn tuned(facts: &Facts, plan: &Plan) -> Facts {
    let mut facts = facts.clone();
    for setting in &plan.settings {
        match setting.kind {
            Kind::Sysctl => {
                facts
                    .sysctl
                    .insert(setting.name.clone(), setting.planned.clone());
            }
            Kind::ServiceLimit => {
                facts
                    .service_limits
                    .insert(setting.name.clone(), setting.planned.clone());
            }
            Kind::IrqAffinity { irq } => {
                for nic in &mut facts.nics {
                    for i in nic.irqs.iter_mut().filter(|i| i.number == irq) {
                        i.affinity_list = setting.planned.clone();
                    }
                }
            }
            Kind::Governor { cpu } => {
                facts.governors.insert(cpu, setting.planned.clone());
            }
        }
    }
    facts
}

#[test]
fn the_ci_vm_at_100k_connections() {
    let facts = facts("vm-2cpu-24gib");
    let plan = plan::plan(&facts, &target(100_000, &[0, 1], 1)).unwrap();
    // 100,000 connections + 4,096 other descriptors, rounded up to 1,024.
    assert_eq!(planned(&plan, "LimitNOFILE"), "104448");
    // Already above what is needed: the plan keeps the host's value.
    assert_eq!(planned(&plan, "fs.nr_open"), "1048576");
    assert_eq!(planned(&plan, "fs.file-max"), "2466174");
    assert_eq!(planned(&plan, "net.core.somaxconn"), "8192");
    assert_eq!(planned(&plan, "net.ipv4.tcp_max_syn_backlog"), "8192");
    assert_eq!(
        planned(&plan, "net.ipv4.ip_local_port_range"),
        "10240 65535"
    );
    assert_eq!(planned(&plan, "net.ipv4.tcp_fin_timeout"), "15");
    assert_eq!(planned(&plan, "net.ipv4.tcp_keepalive_time"), "300");
    // 21 GiB of buffers over 100,000 connections is 111 KiB each way: the 128 KiB receive
    // default comes down to 64 KiB, the 16 KiB send default stays.
    assert_eq!(planned(&plan, "net.ipv4.tcp_rmem"), "4096 65536 33554432");
    assert_eq!(planned(&plan, "net.ipv4.tcp_wmem"), "4096 16384 4194304");
    assert_eq!(planned(&plan, "vm.nr_hugepages"), "64");
    assert_eq!(planned(&plan, "LimitMEMLOCK"), "67108864");
    assert!(plan.settings.iter().all(|s| !s.reason.is_empty()));
    // Both CPUs run the data plane, so the IRQs stay put, and the plan says so.
    assert!(!plan
        .settings
        .iter()
        .any(|s| matches!(s.kind, Kind::IrqAffinity { .. })));
    assert!(plan.notes.iter().any(|n| n.contains("NIC IRQs stay")));
    assert!(plan.notes.iter().any(|n| n.contains("no cpufreq")));
}

#[test]
fn irqs_move_to_the_cores_the_data_plane_leaves() {
    let facts = facts("vm-2cpu-24gib");
    let plan = plan::plan(&facts, &target(1000, &[1], 1)).unwrap();
    assert_eq!(planned(&plan, "irq/38/smp_affinity_list"), "0");
    assert_eq!(planned(&plan, "irq/39/smp_affinity_list"), "0");
    assert!(plan
        .notes
        .iter()
        .any(|n| n.contains("IRQBALANCE_BANNED_CPULIST=1")));
}

#[test]
fn a_bare_metal_host_at_a_million_connections() {
    let facts = facts("baremetal-64cpu-2numa-256gib");
    let cores: Vec<u32> = (2..32).chain(34..64).collect();
    let plan = plan::plan(&facts, &target(1_000_000, &cores, 2)).unwrap();
    // Half a million connections per process + 4,096.
    assert_eq!(planned(&plan, "LimitNOFILE"), "504832");
    assert_eq!(planned(&plan, "fs.nr_open"), "1073741816");
    assert_eq!(planned(&plan, "net.core.somaxconn"), "65535");
    assert_eq!(planned(&plan, "vm.nr_hugepages"), "128");
    // 30 executors per process at 4 MiB.
    assert_eq!(planned(&plan, "LimitMEMLOCK"), "125829120");
    // The NIC sits on node 1: its IRQs go to node 1's housekeeping CPUs (32 and 33).
    let irqs: Vec<_> = plan
        .settings
        .iter()
        .filter(|s| matches!(s.kind, Kind::IrqAffinity { .. }))
        .collect();
    assert_eq!(irqs.len(), 32);
    assert!(irqs.iter().all(|s| s.planned == "32-33"));
    let governors: Vec<_> = plan
        .settings
        .iter()
        .filter(|s| matches!(s.kind, Kind::Governor { .. }))
        .collect();
    assert_eq!(governors.len(), cores.len());
    assert!(governors.iter().all(|s| s.planned == "performance"));
    // Two processes over two nodes: no NUMA advice. One process: advice.
    assert!(!plan.notes.iter().any(|n| n.contains("NUMA")));
    let one = plan::plan(&facts, &target(1_000_000, &cores, 1)).unwrap();
    assert!(one.notes.iter().any(|n| n.contains("NUMA nodes")));
    // Every connection's starting buffers fit inside the TCP ceiling, which fits the budget.
    let tcp_mem_high: u64 = planned(&plan, "net.ipv4.tcp_mem")
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert!(tcp_mem_high * 4096 <= plan.memory.socket_buffers_bytes);
}

#[test]
fn a_host_carrying_the_plan_needs_no_change() {
    for (name, cores) in [
        ("vm-2cpu-24gib", vec![1]),
        ("vm-2cpu-24gib", vec![0, 1]),
        ("baremetal-64cpu-2numa-256gib", (1..64).collect()),
    ] {
        let facts = facts(name);
        for connections in [1, 10_000, 1_000_000] {
            let target = target(connections, &cores, 1);
            let plan = plan::plan(&facts, &target).unwrap();
            assert!(plan.changes().count() > 0, "{name}: nothing to tune?");
            let again = plan::plan(&tuned(&facts, &plan), &target).unwrap();
            let left: Vec<_> = again.changes().map(|s| &s.name).collect();
            assert!(
                left.is_empty(),
                "{name} at {connections}: still differs: {left:?}"
            );
            assert_eq!(
                plan::plan(&facts, &target).unwrap(),
                plan,
                "not deterministic"
            );
        }
    }
}

#[test]
fn memory_bounds_the_target_at_its_exact_edge() {
    let mut facts = facts("vm-2cpu-24gib");
    facts.memory_total_kib = 4 * 1024 * 1024;
    let at = |connections| plan::plan(&facts, &target(connections, &[0, 1], 1));
    let connections_max = at(1).unwrap().memory.connections_max;
    // 4 GiB - 1 GiB reserve - 192 MiB for the process, at 11.2 KiB per connection.
    assert_eq!(
        connections_max,
        (3 * 1024 - 192) * 1024 * 1024 / (2048 + 5325 + 4096)
    );
    assert!(at(connections_max).is_ok());
    match at(connections_max + 1) {
        Err(PlanError::NotEnoughMemory {
            connections_max: max,
            ..
        }) => assert_eq!(max, connections_max),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let message = at(1_000_000).unwrap_err().to_string();
    assert!(message.contains("1000000 connections need"), "{message}");
    assert!(message.contains("at most 263309 connections"), "{message}");
}

#[test]
fn targets_the_host_cannot_run_are_refused() {
    let facts = facts("vm-2cpu-24gib");
    assert_eq!(
        plan::plan(&facts, &target(10, &[0, 7], 1)).unwrap_err(),
        PlanError::UnknownCpu(7, "0-1".into())
    );
    assert_eq!(
        plan::plan(&facts, &target(10, &[0, 1], 3)).unwrap_err(),
        PlanError::BadProcessCount(2)
    );
    assert_eq!(
        plan::plan(&facts, &target(10, &[0, 1], 0)).unwrap_err(),
        PlanError::BadProcessCount(2)
    );
}

/// The autotuning ceiling of each direction is raised to exactly
/// `SOCKET_BUFFER_AUTOTUNE_CEILING_MIN_BYTES` from one byte below it, and an operator's
/// ceiling at or above it stands.
#[test]
fn socket_buffer_ceilings_at_their_edge() {
    use otedama_tune::plan::{SOCKET_BUFFER_AUTOTUNE_CEILING_MIN_BYTES, SOCKET_BUFFER_FLOOR_BYTES};
    let least = SOCKET_BUFFER_AUTOTUNE_CEILING_MIN_BYTES;
    for (now_max, planned_max) in [(least - 1, least), (least, least), (least + 1, least + 1)] {
        let mut facts = facts("vm-2cpu-24gib");
        for key in ["net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"] {
            facts
                .sysctl
                .insert(key.into(), format!("4096 16384 {now_max}"));
        }
        let plan = plan::plan(&facts, &target(100_000, &[0, 1], 1)).unwrap();
        for key in ["net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"] {
            let values: Vec<u64> = planned(&plan, key)
                .split_whitespace()
                .map(|v| v.parse().unwrap())
                .collect();
            assert_eq!(values[0], SOCKET_BUFFER_FLOOR_BYTES, "{key}");
            assert_eq!(values[2], planned_max, "{key} from {now_max}");
        }
    }
}
