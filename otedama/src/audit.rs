//! `otedama audit`: reads the hash-chained audit log of a pool's data directory.

use anyhow::Context;

#[derive(clap::Subcommand)]
pub enum AuditCommand {
    /// Walk the hash chain from its start (or its retention checkpoint); exit 0 if every
    /// entry holds, otherwise exit 1 naming the first broken entry. Safe while the pool runs.
    Verify {
        /// The pool's data directory (the log is in its `audit/`).
        #[arg(long, env = "OTEDAMA_DATA_DIR")]
        data_dir: std::path::PathBuf,
    },
}

pub fn run(command: AuditCommand) -> anyhow::Result<()> {
    let AuditCommand::Verify { data_dir } = command;
    let path = data_dir.join("audit");
    anyhow::ensure!(path.is_dir(), "no audit log at {}", path.display());
    let log = otedama_controlplane::audit::AuditLog::open_read_only(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let from = log.checkpoint()?.map_or(0, |c| c.first_sequence);
    match log.verify()? {
        Ok(count) => {
            let head = log.head();
            println!(
                "audit chain intact: {count} entries from sequence {from}; head {} (entry {})",
                head.hash,
                head.entries.saturating_sub(1)
            );
            Ok(())
        }
        Err(broken) => {
            eprintln!(
                "audit chain broken at entry {}: {}",
                broken.sequence, broken.why
            );
            std::process::exit(1);
        }
    }
}
