//! The plan: a pure function of the host's facts and the target load. Every setting
//! carries the reason it has the value it has, and every figure the sizing uses is a
//! named constant with its source.

use serde::{Deserialize, Serialize};

use crate::facts::{format_cpu_list, normalize, Facts};

/// Pool memory per connection. BENCHMARKS.md measured 1.90 KiB (VmRSS over 100,000 idle
/// V1 connections); the product's budget is 2 KiB.
pub const POOL_BYTES_PER_CONNECTION: u64 = 2048;
/// Kernel memory per idle connection on the pool's side: BENCHMARKS.md measured 10.4 KiB
/// of slab per connection for both ends on loopback; the pool holds one end.
pub const KERNEL_BYTES_PER_IDLE_CONNECTION: u64 = 5325;
/// Under memory pressure a TCP socket keeps at least its `tcp_rmem` minimum; every
/// connection must be able to hold that much at once.
pub const SOCKET_BUFFER_FLOOR_BYTES: u64 = 4096;
/// The least ceiling the plan leaves for one TCP socket's buffers under autotuning (an
/// operator's higher one stands): the node's RPC and block relay, the only bulk flows on
/// a pool host, need room to grow.
pub const SOCKET_BUFFER_AUTOTUNE_CEILING_MIN_BYTES: u64 = 4 * 1024 * 1024;
/// Bulk flows (node RPC, block relay, backups) the kernel's TCP memory ceiling leaves
/// room for, each at the autotuning ceiling in both directions.
pub const BULK_FLOWS_BUDGETED: u64 = 64;
/// One data-plane process before connections: 34 MiB measured (BENCHMARKS.md, 202 MiB over
/// six processes), plus RocksDB's memtables (two of 64 MiB), rounded up.
pub const DATAPLANE_PROCESS_BASE_BYTES: u64 = 192 * 1024 * 1024;
/// The share log's memtables per process (`MEMTABLE_BYTES` × `MEMTABLES_MAX` in the data
/// plane's store), which RocksDB puts on huge pages where they are reserved.
pub const SHARE_LOG_MEMTABLE_BYTES: u64 = 128 * 1024 * 1024;
/// Kept for the kernel, the control plane and the rest of the system: 1 GiB or 1/16 of
/// memory, whichever is larger.
pub const SYSTEM_RESERVE_BYTES_MIN: u64 = 1024 * 1024 * 1024;
/// Descriptors a data-plane process holds besides connections: listeners, the share log's
/// files, IPC, QUIC sockets and the runtime.
pub const DESCRIPTORS_PER_PROCESS_BESIDES_CONNECTIONS: u64 = 4096;
/// What the rest of the system may hold open at once.
pub const DESCRIPTORS_FOR_THE_REST_OF_THE_SYSTEM: u64 = 65536;
/// Registered I/O memory (1 MiB, `IO_MEMORY_BYTES` in the data plane) plus io_uring rings
/// per executor, doubled for headroom: what RLIMIT_MEMLOCK must cover per core.
pub const LOCKED_BYTES_PER_EXECUTOR: u64 = 4 * 1024 * 1024;
/// Below this, a locked-memory limit is not worth lowering to.
pub const LOCKED_BYTES_MIN: u64 = 64 * 1024 * 1024;
/// After a pool restart every miner reconnects; assume they do so within this many
/// seconds when sizing accept queues and NIC backlogs.
pub const RECONNECT_STORM_S: u64 = 10;
/// `somaxconn` is a 16-bit field in kernels before 4.1.
pub const ACCEPT_QUEUE_MAX: u64 = 65535;
/// Ephemeral ports the pool's own outgoing connections (node RPC, ZMQ, local proxies) can
/// use; the planned range starts above the usual listen ports.
pub const EPHEMERAL_PORTS_MIN: u64 = 55296;
pub const EPHEMERAL_PORT_RANGE: &str = "10240 65535";

/// The load a host must carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub connections: u64,
    pub shares_per_second: u64,
    /// CPUs the data plane is pinned to; the rest take IRQs and housekeeping.
    pub dataplane_cores: Vec<u32>,
    pub dataplane_processes: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Kind {
    /// A kernel parameter: `/etc/sysctl.d/60-otedama.conf` and `/proc/sys`.
    Sysctl,
    /// A limit in the data plane unit's drop-in.
    ServiceLimit,
    /// `/proc/irq/N/smp_affinity_list`.
    IrqAffinity { irq: u32 },
    /// `/sys/devices/system/cpu/cpuN/cpufreq/scaling_governor`.
    Governor { cpu: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setting {
    pub name: String,
    #[serde(flatten)]
    pub kind: Kind,
    /// `None` when the host has no value (a missing drop-in, say).
    pub current: Option<String>,
    pub planned: String,
    pub reason: String,
}

impl Setting {
    pub fn changes(&self) -> bool {
        self.current.as_deref().map(normalize) != Some(normalize(&self.planned))
    }
}

/// Where the host's memory goes at the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryBudget {
    pub total_bytes: u64,
    pub system_reserve_bytes: u64,
    pub dataplane_processes_bytes: u64,
    pub pool_connections_bytes: u64,
    pub kernel_sockets_bytes: u64,
    /// What is left for socket buffers (the `tcp_mem` ceiling).
    pub socket_buffers_bytes: u64,
    /// The most connections this host's memory holds with these processes.
    pub connections_max: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub target: Target,
    pub memory: MemoryBudget,
    pub settings: Vec<Setting>,
    /// Advice the plan cannot carry out itself.
    pub notes: Vec<String>,
}

impl Plan {
    pub fn changes(&self) -> impl Iterator<Item = &Setting> {
        self.settings.iter().filter(|s| s.changes())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "{connections} connections need {needed} of memory and this host has {total}: \
         {per_connection} per connection ({pool} pool, {kernel} kernel socket, {floor} \
         minimum socket buffer, from the measured figures in BENCHMARKS.md), plus {processes} \
         for {process_count} data-plane process(es) and {reserve} kept for the system. \
         This host holds at most {connections_max} connections; lower --connections or add memory"
    )]
    NotEnoughMemory {
        connections: u64,
        needed: Bytes,
        total: Bytes,
        per_connection: Bytes,
        pool: Bytes,
        kernel: Bytes,
        floor: Bytes,
        processes: Bytes,
        process_count: u32,
        reserve: Bytes,
        connections_max: u64,
    },
    #[error("data-plane CPU {0} is not online on this host (online: {1})")]
    UnknownCpu(u32, String),
    #[error("--dataplane-processes must be between 1 and the number of data-plane cores ({0})")]
    BadProcessCount(usize),
    #[error("the host's memory size is unknown (no MemTotal in /proc/meminfo)")]
    UnknownMemory,
}

/// A byte count that prints in binary units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bytes(pub u64);

impl std::fmt::Display for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut value = self.0 as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{value:.1} {}", UNITS[unit])
        }
    }
}

/// The default data-plane cores: every online CPU but the first, which keeps IRQs and
/// housekeeping; on hosts with two CPUs or fewer, all of them.
pub fn default_dataplane_cores(facts: &Facts) -> Vec<u32> {
    if facts.cpus.len() <= 2 {
        facts.cpus.clone()
    } else {
        facts.cpus[1..].to_vec()
    }
}

pub fn plan(facts: &Facts, target: &Target) -> Result<Plan, PlanError> {
    for cpu in &target.dataplane_cores {
        if !facts.cpus.contains(cpu) {
            return Err(PlanError::UnknownCpu(*cpu, format_cpu_list(&facts.cpus)));
        }
    }
    let cores = target.dataplane_cores.len();
    let processes = u64::from(target.dataplane_processes);
    if processes == 0 || processes as usize > cores.max(1) {
        return Err(PlanError::BadProcessCount(cores));
    }
    let memory = memory_budget(facts, target)?;
    let connections = target.connections;
    let mut settings = Vec::new();
    let mut notes = Vec::new();
    let current = |key: &str| facts.sysctl.get(key).cloned();
    let mut sysctl = |key: &str, planned: String, reason: String| {
        if let Some(current) = facts.sysctl.get(key) {
            settings.push(Setting {
                name: key.to_string(),
                kind: Kind::Sysctl,
                current: Some(current.clone()),
                planned,
                reason,
            });
        }
    };

    // Descriptors.
    let per_process = connections.div_ceil(processes) + DESCRIPTORS_PER_PROCESS_BESIDES_CONNECTIONS;
    let nofile = per_process.next_multiple_of(1024);
    sysctl(
        "fs.nr_open",
        at_least(current("fs.nr_open"), nofile),
        format!("per-process descriptor ceiling: {} connections per data-plane process plus {DESCRIPTORS_PER_PROCESS_BESIDES_CONNECTIONS} for listeners, share log and IPC", connections.div_ceil(processes)),
    );
    let file_max = connections
        + processes * DESCRIPTORS_PER_PROCESS_BESIDES_CONNECTIONS
        + DESCRIPTORS_FOR_THE_REST_OF_THE_SYSTEM;
    sysctl(
        "fs.file-max",
        at_least(current("fs.file-max"), file_max),
        format!("system-wide descriptors: every connection plus {DESCRIPTORS_FOR_THE_REST_OF_THE_SYSTEM} for the rest of the host"),
    );

    // Accept queues: a restart brings every miner back within seconds.
    let accept_queue = (connections / RECONNECT_STORM_S / 2)
        .next_power_of_two()
        .clamp(4096, ACCEPT_QUEUE_MAX + 1)
        .min(ACCEPT_QUEUE_MAX);
    let storm_reason = format!(
        "{connections} miners reconnecting within {RECONNECT_STORM_S} s after a restart must not overflow the queue"
    );
    sysctl(
        "net.core.somaxconn",
        at_least(current("net.core.somaxconn"), accept_queue),
        format!("accept queue per listener: {storm_reason}"),
    );
    sysctl(
        "net.ipv4.tcp_max_syn_backlog",
        at_least(current("net.ipv4.tcp_max_syn_backlog"), accept_queue),
        format!("half-open connections: {storm_reason}"),
    );
    let range_ports = current("net.ipv4.ip_local_port_range")
        .as_deref()
        .and_then(port_range_size)
        .unwrap_or(0);
    sysctl(
        "net.ipv4.ip_local_port_range",
        if range_ports >= EPHEMERAL_PORTS_MIN {
            current("net.ipv4.ip_local_port_range").unwrap_or_default()
        } else {
            EPHEMERAL_PORT_RANGE.to_string()
        },
        "ephemeral ports for the pool's outgoing connections (node RPC, ZMQ, local proxies), above the listen ports".into(),
    );

    // Socket buffers: every connection must be able to hold its starting buffers in both
    // directions inside the budget; an operator's smaller choice stands.
    let fit_per_direction = prev_power_of_two(
        (memory.socket_buffers_bytes / connections.max(1) / 2).max(SOCKET_BUFFER_FLOOR_BYTES),
    );
    let mut starting_bytes = 0;
    for (key, direction) in [
        ("net.ipv4.tcp_rmem", "receive"),
        ("net.ipv4.tcp_wmem", "send"),
    ] {
        let now: Vec<u64> = current(key)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        let [_, now_default, now_max] = now[..] else {
            continue;
        };
        let default = now_default
            .min(fit_per_direction)
            .max(SOCKET_BUFFER_FLOOR_BYTES);
        let max = now_max.max(SOCKET_BUFFER_AUTOTUNE_CEILING_MIN_BYTES);
        starting_bytes += default;
        sysctl(
            key,
            format!("{SOCKET_BUFFER_FLOOR_BYTES} {default} {max}"),
            format!(
                "{direction} buffer per connection: {} floor under pressure, {} to start ({connections} connections hold at most {} each way in the budget), {} for bulk flows",
                Bytes(SOCKET_BUFFER_FLOOR_BYTES),
                Bytes(default),
                Bytes(fit_per_direction),
                Bytes(max)
            ),
        );
    }
    // The kernel's own ceiling for all TCP buffers: room for every connection's starting
    // buffers plus bulk flows, never more than the budget leaves.
    let needed_pages = (connections * starting_bytes
        + 2 * SOCKET_BUFFER_AUTOTUNE_CEILING_MIN_BYTES * BULK_FLOWS_BUDGETED)
        / 4096;
    let budget_pages = memory.socket_buffers_bytes / 4096;
    let current_high = current("net.ipv4.tcp_mem")
        .and_then(|v| v.split_whitespace().nth(2)?.parse::<u64>().ok())
        .unwrap_or(0);
    let high_pages = if (needed_pages..=budget_pages).contains(&current_high) {
        current_high
    } else {
        needed_pages.min(budget_pages)
    };
    let tcp_mem = if high_pages == current_high {
        current("net.ipv4.tcp_mem").unwrap_or_default()
    } else {
        format!("{} {} {}", high_pages / 2, high_pages / 4 * 3, high_pages)
    };
    sysctl(
        "net.ipv4.tcp_mem",
        tcp_mem,
        format!(
            "all TCP buffers together, in pages: room for every connection's starting buffers and 64 bulk flows ({}), capped by the {} the budget leaves",
            Bytes(needed_pages * 4096),
            Bytes(memory.socket_buffers_bytes)
        ),
    );
    let udp_buffer: u64 = 4 * 1024 * 1024;
    sysctl(
        "net.core.rmem_default",
        at_least(current("net.core.rmem_default"), udp_buffer),
        "UDP receive buffer: each core's QUIC socket absorbs bursts from every QUIC miner on that core".into(),
    );
    sysctl(
        "net.core.wmem_default",
        at_least(current("net.core.wmem_default"), udp_buffer),
        "UDP send buffer: a job broadcast to every QUIC miner on a core leaves through one socket"
            .into(),
    );
    let udp_buffer_max = 16 * 1024 * 1024;
    for key in ["net.core.rmem_max", "net.core.wmem_max"] {
        sysctl(
            key,
            at_least(current(key), udp_buffer_max),
            "ceiling for SO_RCVBUF/SO_SNDBUF requests, above the defaults".into(),
        );
    }

    // The NIC's per-CPU backlog: shares plus a reconnect storm's SYNs and handshakes.
    let packets_per_second = target.shares_per_second + connections / RECONNECT_STORM_S * 3;
    let backlog = (packets_per_second / 20)
        .next_power_of_two()
        .clamp(4096, 262_144);
    sysctl(
        "net.ipv4.tcp_migrate_req",
        "1".into(),
        "a data plane replaced during an upgrade closes its listeners: connections queued on them move to the replacement's instead of being reset".into(),
    );
    sysctl(
        "net.core.netdev_max_backlog",
        at_least(current("net.core.netdev_max_backlog"), backlog),
        format!("packets queued per CPU between the NIC and TCP: 50 ms of {packets_per_second} packets/s (shares plus a reconnect storm)"),
    );
    sysctl(
        "net.ipv4.tcp_fin_timeout",
        at_most(current("net.ipv4.tcp_fin_timeout"), 15),
        "miners that vanish leave FIN-WAIT-2 sockets; reclaim their memory in 15 s".into(),
    );
    let keepalive = [
        (
            "net.ipv4.tcp_keepalive_time",
            300,
            "a silent miner is probed after 5 minutes",
        ),
        ("net.ipv4.tcp_keepalive_intvl", 30, "probes 30 s apart"),
        (
            "net.ipv4.tcp_keepalive_probes",
            5,
            "and dropped after 5 unanswered probes, inside the pool's 15-minute idle timeout",
        ),
    ];
    for (key, value, reason) in keepalive {
        sysctl(
            key,
            at_most(current(key), value),
            format!("keepalive on miner sockets: {reason}"),
        );
    }
    let hugepage_bytes = facts.hugepage_size_kib.max(4) * 1024;
    let hugepages = (processes * SHARE_LOG_MEMTABLE_BYTES).div_ceil(hugepage_bytes);
    sysctl(
        "vm.nr_hugepages",
        at_least(current("vm.nr_hugepages"), hugepages),
        format!(
            "the share log's memtables ({} per data-plane process) on huge pages, off the TLB's hot path",
            Bytes(SHARE_LOG_MEMTABLE_BYTES)
        ),
    );
    if current("kernel.io_uring_disabled").is_some_and(|v| v != "0") {
        sysctl(
            "kernel.io_uring_disabled",
            "0".into(),
            "the data plane runs on io_uring".into(),
        );
    }

    // The data plane unit's limits.
    let service_limit = |name: &str| facts.service_limits.get(name).cloned();
    settings.push(Setting {
        name: "LimitNOFILE".into(),
        kind: Kind::ServiceLimit,
        current: service_limit("LimitNOFILE"),
        planned: at_least(service_limit("LimitNOFILE"), nofile),
        reason: format!("descriptors per data-plane process: {} connections plus {DESCRIPTORS_PER_PROCESS_BESIDES_CONNECTIONS}", connections.div_ceil(processes)),
    });
    let executors = (cores as u64).div_ceil(processes);
    let locked = (executors * LOCKED_BYTES_PER_EXECUTOR).max(LOCKED_BYTES_MIN);
    let current_locked = service_limit("LimitMEMLOCK");
    settings.push(Setting {
        name: "LimitMEMLOCK".into(),
        kind: Kind::ServiceLimit,
        planned: match current_locked.as_deref().and_then(parse_size) {
            Some(bytes) if bytes >= locked => current_locked.clone().unwrap_or_default(),
            _ => locked.to_string(),
        },
        current: current_locked,
        reason: format!("io_uring rings and registered buffers are locked memory: {executors} executor(s) per process at {}", Bytes(LOCKED_BYTES_PER_EXECUTOR)),
    });

    // IRQs off the data-plane cores, preferring CPUs on the NIC's own NUMA node.
    let housekeeping: Vec<u32> = facts
        .cpus
        .iter()
        .copied()
        .filter(|c| !target.dataplane_cores.contains(c))
        .collect();
    let has_irqs = facts.nics.iter().any(|n| !n.irqs.is_empty());
    if housekeeping.is_empty() && has_irqs {
        notes.push("every CPU belongs to the data plane, so NIC IRQs stay where they are; leave a core out of --dataplane-cores to take them".into());
    }
    if !housekeeping.is_empty() {
        for nic in &facts.nics {
            let local: Vec<u32> = nic
                .numa_node
                .and_then(|node| facts.numa_nodes.iter().find(|n| n.id == node))
                .map(|node| {
                    housekeeping
                        .iter()
                        .copied()
                        .filter(|c| node.cpus.contains(c))
                        .collect()
                })
                .unwrap_or_default();
            let targets = if local.is_empty() {
                &housekeeping
            } else {
                &local
            };
            for irq in &nic.irqs {
                settings.push(Setting {
                    name: format!("irq/{}/smp_affinity_list", irq.number),
                    kind: Kind::IrqAffinity { irq: irq.number },
                    current: Some(irq.affinity_list.clone()),
                    planned: format_cpu_list(targets),
                    reason: format!(
                        "{} ({}) interrupts land on CPUs the data plane does not own",
                        irq.name, nic.name
                    ),
                });
            }
        }
        if has_irqs {
            notes.push(format!(
                "irqbalance, where it runs, must leave the data-plane CPUs alone: IRQBALANCE_BANNED_CPULIST={}",
                format_cpu_list(&target.dataplane_cores)
            ));
        }
    }
    for cpu in &target.dataplane_cores {
        if let Some(governor) = facts.governors.get(cpu) {
            settings.push(Setting {
                name: format!("cpu{cpu}/scaling_governor"),
                kind: Kind::Governor { cpu: *cpu },
                current: Some(governor.clone()),
                planned: "performance".into(),
                reason: "a data-plane core must not ramp its clock up from idle while shares wait"
                    .into(),
            });
        }
    }
    if facts.governors.is_empty() {
        notes.push(
            "the kernel exposes no cpufreq governors (a VM, or fixed clocks); nothing to set"
                .into(),
        );
    }
    let spanned: Vec<u32> = facts
        .numa_nodes
        .iter()
        .filter(|n| n.cpus.iter().any(|c| target.dataplane_cores.contains(c)))
        .map(|n| n.id)
        .collect();
    if spanned.len() as u64 > processes {
        notes.push(format!(
            "the data-plane cores span {} NUMA nodes; run one data-plane process per node (--dataplane-processes {}) so each process's memory stays local",
            spanned.len(),
            spanned.len()
        ));
    }
    Ok(Plan {
        target: target.clone(),
        memory,
        settings,
        notes,
    })
}

fn memory_budget(facts: &Facts, target: &Target) -> Result<MemoryBudget, PlanError> {
    if facts.memory_total_kib == 0 {
        return Err(PlanError::UnknownMemory);
    }
    let total = facts.memory_total_kib * 1024;
    let reserve = SYSTEM_RESERVE_BYTES_MIN.max(total / 16);
    let processes = u64::from(target.dataplane_processes);
    let processes_bytes = processes * DATAPLANE_PROCESS_BASE_BYTES;
    let per_connection =
        POOL_BYTES_PER_CONNECTION + KERNEL_BYTES_PER_IDLE_CONNECTION + SOCKET_BUFFER_FLOOR_BYTES;
    let for_connections = total.saturating_sub(reserve + processes_bytes);
    let connections_max = for_connections / per_connection;
    let connections = target.connections;
    if connections > connections_max {
        return Err(PlanError::NotEnoughMemory {
            connections,
            needed: Bytes(reserve + processes_bytes + connections * per_connection),
            total: Bytes(total),
            per_connection: Bytes(per_connection),
            pool: Bytes(POOL_BYTES_PER_CONNECTION),
            kernel: Bytes(KERNEL_BYTES_PER_IDLE_CONNECTION),
            floor: Bytes(SOCKET_BUFFER_FLOOR_BYTES),
            processes: Bytes(processes_bytes),
            process_count: target.dataplane_processes,
            reserve: Bytes(reserve),
            connections_max,
        });
    }
    let pool = connections * POOL_BYTES_PER_CONNECTION;
    let kernel = connections * KERNEL_BYTES_PER_IDLE_CONNECTION;
    Ok(MemoryBudget {
        total_bytes: total,
        system_reserve_bytes: reserve,
        dataplane_processes_bytes: processes_bytes,
        pool_connections_bytes: pool,
        kernel_sockets_bytes: kernel,
        socket_buffers_bytes: for_connections - pool - kernel,
        connections_max,
    })
}

/// The current value if it is already at least `needed` (never lower what an operator
/// raised), otherwise `needed`.
fn at_least(current: Option<String>, needed: u64) -> String {
    match current
        .as_deref()
        .and_then(|c| c.trim().parse::<u64>().ok())
    {
        Some(value) if value >= needed => value.to_string(),
        _ => needed.to_string(),
    }
}

/// The current value if it is already at most `wanted`, otherwise `wanted`.
fn at_most(current: Option<String>, wanted: u64) -> String {
    match current
        .as_deref()
        .and_then(|c| c.trim().parse::<u64>().ok())
    {
        Some(value) if value <= wanted => value.to_string(),
        _ => wanted.to_string(),
    }
}

fn prev_power_of_two(value: u64) -> u64 {
    1 << (63 - value.max(1).leading_zeros())
}

/// How many ports `first last` spans.
fn port_range_size(range: &str) -> Option<u64> {
    let mut bounds = range.split_whitespace().map(|p| p.parse::<u64>().ok());
    let (first, last) = (bounds.next()??, bounds.next()??);
    Some(last.checked_sub(first)? + 1)
}

/// systemd's size syntax: `65536`, `64K`, `64M`, `1G`, or `infinity`.
pub fn parse_size(value: &str) -> Option<u64> {
    let value = value.trim();
    if value == "infinity" {
        return Some(u64::MAX);
    }
    let (digits, shift) = match value.chars().last()? {
        'K' | 'k' => (&value[..value.len() - 1], 10),
        'M' | 'm' => (&value[..value.len() - 1], 20),
        'G' | 'g' => (&value[..value.len() - 1], 30),
        'T' | 't' => (&value[..value.len() - 1], 40),
        _ => (value, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_systemd_writes_them() {
        assert_eq!(parse_size("65536"), Some(65536));
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("infinity"), Some(u64::MAX));
        assert_eq!(parse_size("lots"), None);
    }

    #[test]
    fn bounds_never_undo_an_operators_larger_choice() {
        assert_eq!(at_least(Some("2000000".into()), 1_000_000), "2000000");
        assert_eq!(at_least(Some("1024".into()), 1_000_000), "1000000");
        assert_eq!(at_least(None, 5), "5");
        assert_eq!(at_most(Some("10".into()), 15), "10");
        assert_eq!(at_most(Some("60".into()), 15), "15");
    }
}
