//! `otedama-tune`: the command line over the facts → plan → apply pipeline.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use otedama_tune::apply::{self, Report};
use otedama_tune::facts::{self, format_cpu_list, parse_cpu_list, Facts};
use otedama_tune::plan::{self, Bytes, Plan, Target};

#[derive(Parser)]
#[command(
    name = "otedama-tune",
    version,
    about = "Plan, apply, check and revert the kernel and service settings an Otedama pool host needs",
    long_about = "Reads the host (cores, NUMA, memory, sysctls, limits, NIC IRQs, governors), \
                  computes the settings a target load needs with a reason for each, and \
                  applies them to /etc/sysctl.d/60-otedama.conf, /proc/sys, a systemd drop-in \
                  for otedama-dataplane@.service, IRQ affinities and CPU governors. apply keeps \
                  a backup that revert restores."
)]
struct Cli {
    /// Treat this directory as `/` (for tests and staged images); `/proc/sys` and `/etc`
    /// are read and written under it.
    #[arg(long, global = true, default_value = "/", env = "OTEDAMA_TUNE_ROOT")]
    root: PathBuf,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the host facts the plan is computed from.
    Facts,
    /// Show what apply would change, and why (a dry run).
    Plan(TargetArgs),
    /// Write and apply the plan, keeping a backup of what it replaces. Needs root.
    Apply {
        #[command(flatten)]
        target: TargetArgs,
        /// Apply only this setting (repeatable), such as `net.ipv4.tcp_fin_timeout`.
        #[arg(long = "only", value_name = "SETTING")]
        only: Vec<String>,
    },
    /// Exit non-zero, naming each setting that differs from the plan.
    Check(TargetArgs),
    /// Restore everything apply replaced. Needs root.
    Revert,
    /// Size a NATS server of cluster mode for the pool's load: its JetStream store, open
    /// files, write and network rates and CPU, each with its reason.
    Nats(NatsArgs),
}

#[derive(Args)]
struct NatsArgs {
    /// Shares per second the whole pool takes.
    #[arg(long)]
    shares_per_second: u64,
    /// Hours of shares the share stream holds (the pool's share_retention_hours).
    #[arg(long, default_value_t = 48)]
    retention_hours: u64,
    /// Share logs in the cluster: two per data-plane process over every host (each
    /// process's second slot is written during an upgrade).
    #[arg(long, default_value_t = 16)]
    share_logs: u64,
    /// Hours the stream must take shares while nothing is purged (no leader, the node
    /// down): nobody's credit is purged.
    #[arg(long, default_value_t = 24)]
    outage_hours: u64,
    /// NATS servers in the cluster.
    #[arg(long, default_value_t = 3)]
    servers: u64,
    /// Copies of each stream (share_stream_replicas).
    #[arg(long, default_value_t = 3)]
    replicas: u64,
}

#[derive(Args)]
struct TargetArgs {
    /// Miner connections the host must hold.
    #[arg(long, env = "OTEDAMA_TUNE_CONNECTIONS")]
    connections: u64,
    /// Shares per second the host must take.
    #[arg(long, env = "OTEDAMA_TUNE_SHARES_PER_SECOND", default_value_t = 0)]
    shares_per_second: u64,
    /// CPUs the data plane is pinned to, as a list like `1-15` (default: all but the first
    /// CPU, or all of them on hosts with two CPUs or fewer).
    #[arg(long, env = "OTEDAMA_TUNE_DATAPLANE_CORES")]
    dataplane_cores: Option<String>,
    /// Data-plane processes sharing those cores (`otedama run --dataplane-processes`).
    #[arg(long, env = "OTEDAMA_TUNE_DATAPLANE_PROCESSES", default_value_t = 1)]
    dataplane_processes: u32,
    /// Plan against facts recorded with `otedama-tune facts --json` instead of this host.
    #[arg(long, value_name = "FILE")]
    facts: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(error) => {
            if cli.json {
                println!("{}", json!({ "error": format!("{error:#}") }));
            } else {
                eprintln!("otedama-tune: {error:#}");
            }
            ExitCode::from(2)
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Facts => {
            let facts = facts::read(&cli.root);
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&facts)?);
            } else {
                print_facts(&facts);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan(target) => {
            let plan = make_plan(&cli.root, target)?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                print_plan(&plan);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Apply { target, only } => {
            require_root(&cli.root, "apply")?;
            let plan = make_plan(&cli.root, target)?;
            let report = apply::apply(&cli.root, &plan, only)?;
            print_report(cli.json, "apply", &report)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(target) => {
            let plan = make_plan(&cli.root, target)?;
            let differing: Vec<_> = plan.changes().collect();
            if cli.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "matches": differing.is_empty(),
                        "differing": differing,
                    }))?
                );
            } else if differing.is_empty() {
                println!("every setting matches the plan");
            } else {
                for setting in &differing {
                    println!(
                        "{}: {} (planned {})",
                        setting.name,
                        setting.current.as_deref().unwrap_or("unset"),
                        setting.planned
                    );
                }
            }
            Ok(if differing.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Nats(args) => {
            let sizing = otedama_tune::nats::size(&otedama_tune::nats::NatsLoad {
                shares_per_second: args.shares_per_second,
                retention_hours: args.retention_hours,
                share_logs: args.share_logs,
                outage_hours: args.outage_hours,
                servers: args.servers,
                replicas: args.replicas,
            })?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&sizing)?);
            } else {
                println!("max_file_store     {}", Bytes(sizing.max_file_store_bytes));
                println!(
                    "max_memory_store   {}",
                    Bytes(sizing.max_memory_store_bytes)
                );
                println!("LimitNOFILE        {}", sizing.open_files_max);
                println!(
                    "share stream       {}/s written on this server",
                    Bytes(sizing.stream_write_bytes_per_second)
                );
                println!(
                    "replication        {}/s sent while leading",
                    Bytes(sizing.replication_send_bytes_per_second)
                );
                println!(
                    "cpu                {} millicores at most",
                    sizing.cpu_cores_millis
                );
                for reason in &sizing.reasons {
                    println!("  - {reason}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Revert => {
            require_root(&cli.root, "revert")?;
            let report = apply::revert(&cli.root)?;
            print_report(cli.json, "revert", &report)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Writing to the live host needs root; refuse before touching anything.
fn require_root(root: &Path, command: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if root == Path::new("/") && euid != 0 {
        anyhow::bail!(
            "{command} writes /etc and /proc/sys and needs root (run it with sudo); nothing was changed"
        );
    }
    Ok(())
}

fn make_plan(root: &Path, args: &TargetArgs) -> anyhow::Result<Plan> {
    let facts: Facts = match &args.facts {
        Some(path) => serde_json::from_str(&std::fs::read_to_string(path)?)
            .map_err(|e| anyhow::anyhow!("{}: not a facts file: {e}", path.display()))?,
        None => facts::read(root),
    };
    let dataplane_cores = match &args.dataplane_cores {
        Some(list) => parse_cpu_list(list)
            .filter(|cpus| !cpus.is_empty())
            .ok_or_else(|| {
                anyhow::anyhow!("--dataplane-cores {list:?} is not a CPU list like 1-15,17")
            })?,
        None => plan::default_dataplane_cores(&facts),
    };
    let target = Target {
        connections: args.connections,
        shares_per_second: args.shares_per_second,
        dataplane_cores,
        dataplane_processes: args.dataplane_processes,
    };
    Ok(plan::plan(&facts, &target)?)
}

fn print_facts(facts: &Facts) {
    println!("cpus            {}", format_cpu_list(&facts.cpus));
    for node in &facts.numa_nodes {
        println!("numa node {}     {}", node.id, format_cpu_list(&node.cpus));
    }
    println!("memory          {}", Bytes(facts.memory_total_kib * 1024));
    println!("kernel          {}", facts.kernel_release);
    for (key, value) in &facts.sysctl {
        println!("{key:<32} {value}");
    }
    for (key, value) in &facts.service_limits {
        println!("{key:<32} {value} ({})", facts::DATAPLANE_UNIT);
    }
    for nic in &facts.nics {
        println!(
            "nic {}  rx queues {}  tx queues {}  irqs {}",
            nic.name,
            nic.rx_queues,
            nic.tx_queues,
            nic.irqs
                .iter()
                .map(|i| format!("{}({}) on {}", i.number, i.name, i.affinity_list))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for (cpu, governor) in &facts.governors {
        println!("cpu{cpu} governor   {governor}");
    }
}

fn print_plan(plan: &Plan) {
    let target = &plan.target;
    let memory = &plan.memory;
    println!(
        "target: {} connections, {} shares/s, data-plane CPUs {} in {} process(es)",
        target.connections,
        target.shares_per_second,
        format_cpu_list(&target.dataplane_cores),
        target.dataplane_processes
    );
    println!(
        "memory: {} total = {} system reserve + {} data-plane processes + {} pool connections + {} kernel sockets + {} socket buffers; this host holds at most {} connections",
        Bytes(memory.total_bytes),
        Bytes(memory.system_reserve_bytes),
        Bytes(memory.dataplane_processes_bytes),
        Bytes(memory.pool_connections_bytes),
        Bytes(memory.kernel_sockets_bytes),
        Bytes(memory.socket_buffers_bytes),
        memory.connections_max
    );
    let changes: Vec<_> = plan.changes().collect();
    println!("\n{} setting(s) to change:", changes.len());
    for setting in &changes {
        println!(
            "  {}: {} -> {}\n      {}",
            setting.name,
            setting.current.as_deref().unwrap_or("unset"),
            setting.planned,
            setting.reason
        );
    }
    let unchanged: Vec<_> = plan.settings.iter().filter(|s| !s.changes()).collect();
    println!("\n{} setting(s) already as planned:", unchanged.len());
    for setting in unchanged {
        println!("  {} = {}", setting.name, setting.planned);
    }
    if !plan.notes.is_empty() {
        println!("\nnotes:");
        for note in &plan.notes {
            println!("  - {note}");
        }
    }
}

fn print_report(json: bool, command: &str, report: &Report) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    if report.changes.is_empty() {
        println!("{command}: nothing to change");
    }
    for change in &report.changes {
        let show = |v: &Option<String>| match v {
            None => "absent".to_string(),
            Some(text) if text.contains('\n') => format!("{} lines", text.lines().count()),
            Some(text) => text.clone(),
        };
        println!(
            "{command}: {} ({}): {} -> {}",
            change.name,
            change.path,
            show(&change.before),
            show(&change.after)
        );
    }
    for note in &report.notes {
        println!("{command}: {note}");
    }
    Ok(())
}
