//! What the host is: read from `/proc`, `/sys` and `/etc` under a root directory, so tests
//! can point the reader at a recorded tree instead of the live host.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The sysctl keys the plan may set; their current values are part of the facts.
pub const SYSCTL_KEYS: &[&str] = &[
    "fs.nr_open",
    "fs.file-max",
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
    "net.ipv4.ip_local_port_range",
    "net.core.rmem_default",
    "net.core.rmem_max",
    "net.core.wmem_default",
    "net.core.wmem_max",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "net.ipv4.tcp_mem",
    "net.core.netdev_max_backlog",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_migrate_req",
    "vm.nr_hugepages",
    "kernel.io_uring_disabled",
];

/// The systemd unit whose limits the plan sets, and the drop-in `apply` writes for it.
/// The data plane runs one instance of this template unit per process
/// (`otedama-dataplane@0.service`, …); a drop-in for the template covers every instance.
pub const DATAPLANE_UNIT: &str = "otedama-dataplane@.service";
pub const LIMITS_DROP_IN: &str = "60-otedama-tune.conf";

/// Everything the plan depends on. Serializable, so a host's facts can be recorded
/// (`otedama-tune facts`) and planned against elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    /// Online CPUs.
    pub cpus: Vec<u32>,
    pub numa_nodes: Vec<NumaNode>,
    pub memory_total_kib: u64,
    pub hugepage_size_kib: u64,
    pub kernel_release: String,
    /// Current value of each key in [`SYSCTL_KEYS`] the kernel has (whitespace collapsed).
    pub sysctl: BTreeMap<String, String>,
    /// `LimitNOFILE` and `LimitMEMLOCK` as the data plane's unit and drop-ins set them;
    /// absent when nothing sets them (systemd's defaults apply).
    pub service_limits: BTreeMap<String, String>,
    /// Hard limits of this process, for reference: what a shell on the host gets.
    pub process_nofile_hard: Option<u64>,
    pub process_memlock_hard_bytes: Option<u64>,
    pub nics: Vec<Nic>,
    /// `scaling_governor` per CPU, where the kernel exposes cpufreq.
    pub governors: BTreeMap<u32, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumaNode {
    pub id: u32,
    pub cpus: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    pub name: String,
    pub rx_queues: u32,
    pub tx_queues: u32,
    pub numa_node: Option<u32>,
    pub irqs: Vec<Irq>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Irq {
    pub number: u32,
    /// The action name from `/proc/interrupts`, such as `mlx5_comp3` or `eth0-TxRx-1`.
    pub name: String,
    /// `/proc/irq/N/smp_affinity_list`.
    pub affinity_list: String,
}

/// Reads the host under `root` (`/` for the live host).
pub fn read(root: &Path) -> Facts {
    let at = |relative: &str| root.join(relative.trim_start_matches('/'));
    let cpus = read_trimmed(&at("/sys/devices/system/cpu/online"))
        .and_then(|list| parse_cpu_list(&list))
        .unwrap_or_else(|| {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
            (0..n).collect()
        });
    let meminfo = fs::read_to_string(at("/proc/meminfo")).unwrap_or_default();
    let sysctl = SYSCTL_KEYS
        .iter()
        .filter_map(|key| {
            read_trimmed(&sysctl_path(root, key)).map(|v| (key.to_string(), normalize(&v)))
        })
        .collect();
    let limits = fs::read_to_string(at("/proc/self/limits")).unwrap_or_default();
    Facts {
        cpus,
        numa_nodes: read_numa_nodes(&at("/sys/devices/system/node")),
        memory_total_kib: meminfo_kib(&meminfo, "MemTotal:").unwrap_or(0),
        hugepage_size_kib: meminfo_kib(&meminfo, "Hugepagesize:").unwrap_or(2048),
        kernel_release: read_trimmed(&at("/proc/sys/kernel/osrelease")).unwrap_or_default(),
        sysctl,
        service_limits: read_service_limits(root),
        process_nofile_hard: process_limit(&limits, "Max open files"),
        process_memlock_hard_bytes: process_limit(&limits, "Max locked memory"),
        nics: read_nics(root),
        governors: read_governors(&at("/sys/devices/system/cpu")),
    }
}

/// `/proc/sys/net/ipv4/tcp_rmem` for `net.ipv4.tcp_rmem`, under `root`.
pub fn sysctl_path(root: &Path, key: &str) -> PathBuf {
    root.join("proc/sys").join(key.replace('.', "/"))
}

/// The drop-in that holds the data plane's limits, under `root`.
pub fn limits_drop_in_path(root: &Path) -> PathBuf {
    root.join("etc/systemd/system")
        .join(format!("{DATAPLANE_UNIT}.d"))
        .join(LIMITS_DROP_IN)
}

/// Collapses runs of whitespace, so `4096\t131072\t6291456` compares equal to the form
/// `sysctl.d` files use.
pub fn normalize(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn read_trimmed(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn meminfo_kib(meminfo: &str, field: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `0-3,8,10-11` → `[0, 1, 2, 3, 8, 10, 11]`.
pub fn parse_cpu_list(list: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last): (u32, u32) = (first.parse().ok()?, last.parse().ok()?);
                if last < first {
                    return None;
                }
                cpus.extend(first..=last);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Some(cpus)
}

/// `[0, 1, 2, 3, 8]` → `0-3,8`.
pub fn format_cpu_list(cpus: &[u32]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

fn read_numa_nodes(dir: &Path) -> Vec<NumaNode> {
    let mut nodes: Vec<NumaNode> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let id = name.strip_prefix("node")?.parse().ok()?;
            let cpus = parse_cpu_list(&read_trimmed(&entry.path().join("cpulist"))?)?;
            Some(NumaNode { id, cpus })
        })
        .collect();
    nodes.sort_by_key(|n| n.id);
    nodes
}

/// `LimitNOFILE=` and `LimitMEMLOCK=` from the data plane's unit and its drop-ins, later
/// files overriding earlier ones as systemd reads them.
fn read_service_limits(root: &Path) -> BTreeMap<String, String> {
    let unit_dir = root.join("etc/systemd/system");
    let mut files = vec![unit_dir.join(DATAPLANE_UNIT)];
    let mut drop_ins: Vec<PathBuf> = fs::read_dir(unit_dir.join(format!("{DATAPLANE_UNIT}.d")))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "conf"))
        .collect();
    drop_ins.sort();
    files.extend(drop_ins);
    let mut limits = BTreeMap::new();
    for file in files {
        for line in fs::read_to_string(file).unwrap_or_default().lines() {
            if let Some((key, value)) = line.trim().split_once('=') {
                if key == "LimitNOFILE" || key == "LimitMEMLOCK" {
                    limits.insert(key.to_string(), value.trim().to_string());
                }
            }
        }
    }
    limits
}

/// The hard column of one `/proc/self/limits` row; `None` for "unlimited".
fn process_limit(limits: &str, row: &str) -> Option<u64> {
    let rest = limits.lines().find(|l| l.starts_with(row))?[row.len()..].to_string();
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn read_nics(root: &Path) -> Vec<Nic> {
    let interrupts = fs::read_to_string(root.join("proc/interrupts")).unwrap_or_default();
    let net = root.join("sys/class/net");
    let mut nics: Vec<Nic> = fs::read_dir(&net)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            // Only interfaces backed by a device have queues and IRQs worth placing.
            let device = fs::canonicalize(entry.path().join("device")).ok()?;
            let queues = fs::read_dir(entry.path().join("queues"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|q| q.file_name().into_string().ok())
                .collect::<Vec<_>>();
            let count = |prefix: &str| queues.iter().filter(|q| q.starts_with(prefix)).count();
            let device_name = device.file_name()?.to_string_lossy().into_owned();
            let msi: Vec<u32> = fs::read_dir(device.join("msi_irqs"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect();
            let irqs = nic_irqs(root, &interrupts, &name, &device_name, &msi);
            Some(Nic {
                rx_queues: count("rx-") as u32,
                tx_queues: count("tx-") as u32,
                numa_node: read_trimmed(&device.join("numa_node")).and_then(|n| n.parse().ok()),
                name,
                irqs,
            })
        })
        .collect();
    nics.sort_by(|a, b| a.name.cmp(&b.name));
    nics
}

/// A NIC's IRQs: its MSI vectors, plus every `/proc/interrupts` line whose action names
/// the interface (`eth0-TxRx-3`) or its device (`virtio2-input.0`).
fn nic_irqs(root: &Path, interrupts: &str, name: &str, device: &str, msi: &[u32]) -> Vec<Irq> {
    let mut irqs = Vec::new();
    for line in interrupts.lines() {
        let Some((number, rest)) = line.trim_start().split_once(':') else {
            continue;
        };
        let Ok(number) = number.parse::<u32>() else {
            continue;
        };
        let action = rest.split_whitespace().last().unwrap_or_default();
        let named = action.starts_with(&format!("{name}-"))
            || action == name
            || action.starts_with(&format!("{device}-"));
        // Configuration vectors carry no packets; moving them gains nothing.
        if (named || msi.contains(&number)) && !action.ends_with("-config") {
            let affinity_list =
                read_trimmed(&root.join(format!("proc/irq/{number}/smp_affinity_list")))
                    .unwrap_or_default();
            irqs.push(Irq {
                number,
                name: action.to_string(),
                affinity_list,
            });
        }
    }
    irqs
}

fn read_governors(dir: &Path) -> BTreeMap<u32, String> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let cpu = name.strip_prefix("cpu")?.parse().ok()?;
            let governor = read_trimmed(&entry.path().join("cpufreq/scaling_governor"))?;
            Some((cpu, governor))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_round_trip() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(format_cpu_list(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(format_cpu_list(&[]), "");
    }

    #[test]
    fn process_limits_read_the_hard_column() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 20000                files\n\
                      Max locked memory         8388608              unlimited            bytes\n";
        assert_eq!(process_limit(limits, "Max open files"), Some(20000));
        assert_eq!(process_limit(limits, "Max locked memory"), None);
    }
}
