//! `otedama backup` and `otedama restore`: a consistent copy of a pool's data directory,
//! taken while the pool runs, checked against its manifest, and restored into an empty
//! data directory with payouts held until the wallet agrees with the restored ledger
//! (`otedama_controlplane::backup`).

use std::path::PathBuf;

use otedama_controlplane::backup;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BackupArgs {
    #[command(subcommand)]
    command: Option<BackupCommand>,
    /// The pool's data directory (running or stopped).
    #[arg(long, env = "OTEDAMA_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// A new (missing or empty) directory for the backup.
    #[arg(long)]
    to: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
enum BackupCommand {
    /// Check a backup against its manifest (every file's size and SHA-256, each store's
    /// records, the audit chain's head) without restoring it; exit 1 naming what differs.
    Verify {
        /// The backup directory.
        from: PathBuf,
    },
}

#[derive(clap::Args)]
pub struct RestoreArgs {
    /// The backup directory (made by `otedama backup`).
    #[arg(long)]
    from: PathBuf,
    /// The data directory to fill: missing or empty. Start the pool on it afterwards.
    #[arg(long, env = "OTEDAMA_DATA_DIR")]
    data_dir: PathBuf,
    /// Point-in-time recovery: add from this data directory (the damaged live one, its pool
    /// stopped) every share record after the backup's last, every job, and the data
    /// planes' lists of jobs served, so the restored ledger credits every share written
    /// after the backup. Each of its share logs must still hold the backup's last record.
    #[arg(long)]
    replay_share_logs_from: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
pub enum LedgerCommand {
    /// Print the ledger's state hash: a digest of every balance, every credited block's
    /// split and the per-share cursors, equal for two ledgers that owe the same (a live
    /// one, and a restore that replayed the share logs since). Safe while the pool runs.
    Hash {
        /// The pool's data directory (the ledger is its `ledger/`).
        #[arg(long, env = "OTEDAMA_DATA_DIR")]
        data_dir: PathBuf,
    },
}

pub fn ledger(command: LedgerCommand) -> anyhow::Result<()> {
    let LedgerCommand::Hash { data_dir } = command;
    let path = data_dir.join("ledger");
    anyhow::ensure!(path.is_dir(), "no ledger at {}", path.display());
    // A secondary can meet a table file the writer's compaction just removed: tried again.
    let mut attempt = 0;
    let (ledger, _scratch) = loop {
        attempt += 1;
        let scratch = tempfile::tempdir()?;
        match otedama_ledger::ledger::Ledger::open_secondary(&path, scratch.path()) {
            Ok(ledger) => break (ledger, scratch),
            Err(error) if attempt >= 5 => {
                anyhow::bail!("opening {}: {error}", path.display())
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(200)),
        }
    };
    let hash = ledger
        .state_hash()
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    println!("{hash}");
    Ok(())
}

pub fn backup(args: BackupArgs) -> anyhow::Result<()> {
    if let Some(BackupCommand::Verify { from }) = args.command {
        let manifest = backup::verify(&from)?;
        println!(
            "backup {} verified: {} stores, {} files, taken at {} (unix s){}",
            from.display(),
            manifest.stores.len(),
            manifest.files.len(),
            manifest.created_at_unix_s,
            audit_text(&manifest)
        );
        return Ok(());
    }
    let (Some(data_dir), Some(to)) = (args.data_dir, args.to) else {
        anyhow::bail!(
            "usage: otedama backup --data-dir DIR --to DEST, or otedama backup verify DEST"
        );
    };
    let manifest = backup::take(&data_dir, &to, otedama_shared::clock::now_s())?;
    for store in &manifest.stores {
        println!("  {:<24} {:>12} records", store.path, store.records);
    }
    println!(
        "backup of {} written to {}: {} stores, {} files, {} bytes{}",
        data_dir.display(),
        to.display(),
        manifest.stores.len(),
        manifest.files.len(),
        manifest.files.iter().map(|f| f.bytes).sum::<u64>(),
        audit_text(&manifest)
    );
    if manifest.audit.as_ref().is_some_and(|a| !a.intact) {
        eprintln!("warning: the audit chain in this backup is broken; `otedama audit verify --data-dir` names the entry");
    }
    Ok(())
}

fn audit_text(manifest: &backup::Manifest) -> String {
    match &manifest.audit {
        Some(audit) => format!(
            "; audit chain {} entries, head {}{}",
            audit.entries,
            audit.head_hash,
            if audit.intact { "" } else { " (BROKEN)" }
        ),
        None => String::new(),
    }
}

pub fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let manifest = backup::restore(
        &args.from,
        &args.data_dir,
        args.replay_share_logs_from.as_deref(),
    )?;
    println!(
        "restored {} into {}: {} stores, {} files{}",
        args.from.display(),
        args.data_dir.display(),
        manifest.stores.len(),
        manifest.files.len(),
        audit_text(&manifest)
    );
    println!(
        "payouts are held until the node's wallet shows no payment since the backup that the restored ledger does not know ({})",
        args.data_dir.join(backup::RESTORE_HOLD_FILE).display()
    );
    Ok(())
}
