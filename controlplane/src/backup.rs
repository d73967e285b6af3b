//! Backups of a pool's data directory, taken while the pool runs, and their restore.
//!
//! `take` copies every store the pool keeps (RocksDB databases: share logs, ledger and
//! payout intents, blocks, jobs, audit log, the exchange's journal and accounts) and every
//! plain file (keys, identity, ban list, stream positions) into a new directory, with a
//! manifest that names each file's size and SHA-256, each store's record count and RocksDB
//! sequence, and the audit chain's head. `verify` checks a backup against its manifest;
//! `restore` verifies, then copies it into an empty data directory and holds payouts there
//! until the wallet shows no payment the restored ledger does not know
//! (`RESTORE_HOLD_FILE`).
//!
//! **Consistency.** A store is read through a RocksDB secondary instance, which replays the
//! primary's write-ahead log batch by batch, so each copy is the store as it stood after
//! one of its writes, whoever holds it open. Across stores, each is copied before the ones
//! it refers to (`copy_rank`), so no copy refers to anything the copies taken after it
//! lack: a stream position before the store it is the position of, the ledger before the
//! blocks it credits and the share logs, the block store before the share logs it scans,
//! the share logs before the jobs their shares name and before the list of jobs a data
//! plane served (a restored data plane must not serve one of those again).
//!
//! The exchange and the ledger refer to each other: a transfer is written to the ledger,
//! then its command to the journal, then the ledger again (`dex::transfers`), so no order
//! of separate copies fits a moment inside a transfer. They are copied as one cut instead
//! (`copy_exchange_cut`), with the exchange's `TransferGate` held: no transfer is between
//! its writes meanwhile, and none starts (orders go on; they touch only the journal). The
//! ledger is copied first, then the journal (which may hold orders made after the
//! ledger's copy, and no transfer the ledger copy lacks), then the accounts (an account is
//! written before the journal names it).
//!
//! **Invariants.** A backup directory holds a manifest only once every file it names is
//! written and synced (the manifest goes last, by rename). A backup holds no symlink, and
//! every path its manifest names is relative and plain, so verifying or restoring one
//! reads and writes inside it and its target only. `restore` writes into a directory
//! beside the target and renames it into place, so a restore killed midway leaves no
//! half-restored data directory.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};
use rocksdb::{IteratorMode, Options, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The manifest's name inside a backup directory.
pub const MANIFEST_FILE: &str = "otedama-backup.json";
/// Where a backup keeps the data directory's copy.
pub const BACKUP_DATA_DIR: &str = "data";
/// The manifest's format; a restore refuses any other.
pub const BACKUP_FORMAT_VERSION: u32 = 1;
/// Written by `restore` into the data directory it fills: while it exists, the control
/// plane sends no payout until the node's wallet shows no payment since the backup that
/// the restored ledger does not know (a payout sent after the backup was taken is not in
/// it, and the shares it paid for would be paid again).
pub const RESTORE_HOLD_FILE: &str = "payouts-held-after-restore.json";
/// Wallet payments this much older than the backup are still compared: a payout's intent
/// is written before its send, and the wallet's time of a transaction is when it saw it.
pub const RESTORE_HOLD_MARGIN_S: u64 = 2 * 3600;
/// A store's copy is written in batches of about this many bytes.
const COPY_BATCH_BYTES_MAX: usize = 4 << 20;
/// Opening a secondary can meet a table file the primary's compaction just deleted; the
/// open is tried this many times.
const SECONDARY_OPEN_ATTEMPTS_MAX: u32 = 5;
/// How long a backup waits for transfers in progress to finish before it copies the
/// exchange and the ledger.
const TRANSFER_GATE_BACKUP_WAIT_MS: u64 = 30_000;
/// The stores copied as one cut (`copy_exchange_cut`), in that order.
const EXCHANGE_CUT: [&str; 3] = ["ledger", "dex/journal", "dex/accounts"];
/// In the exchange's directory: the file of its `TransferGate`.
pub const TRANSFER_GATE_FILE: &str = "transfers.gate";

/// A lock between the exchange's transfers and backups, across processes (`flock` on
/// `TRANSFER_GATE_FILE`): a transfer holds it shared from its first ledger write to its
/// last, a backup holds it exclusive while it copies the ledger and the journal.
pub struct TransferGate {
    file: std::fs::File,
}

/// A hold on the gate, let go when dropped.
pub struct GateHeld {
    file: std::fs::File,
}

impl Drop for GateHeld {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor this value owns.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl TransferGate {
    /// The gate of the exchange whose directory is `dex_dir` (made if missing).
    pub fn open(dex_dir: &Path) -> anyhow::Result<Self> {
        let path = dex_dir.join(TRANSFER_GATE_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(TransferGate { file })
    }

    /// Waits up to `wait_ms` for the gate, shared or exclusive; `None` if it stayed taken.
    fn take(&self, exclusive: bool, wait_ms: u64) -> anyhow::Result<Option<GateHeld>> {
        use std::os::fd::AsRawFd;
        // A second descriptor of the same open file: its lock is the gate's, and it is
        // let go with the hold whatever else borrows the gate meanwhile.
        let file = self.file.try_clone()?;
        let mode = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(wait_ms);
        loop {
            // SAFETY: flock on a descriptor owned here.
            if unsafe { libc::flock(file.as_raw_fd(), mode | libc::LOCK_NB) } == 0 {
                return Ok(Some(GateHeld { file }));
            }
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(error).context("locking the exchange's transfer gate");
            }
            if std::time::Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// A transfer's hold, or `None` while a backup copies the exchange.
    pub fn for_transfer(&self, wait_ms: u64) -> anyhow::Result<Option<GateHeld>> {
        self.take(false, wait_ms)
    }

    /// A backup's hold: once it is given, no transfer is between its writes.
    pub fn for_backup(&self, wait_ms: u64) -> anyhow::Result<Option<GateHeld>> {
        self.take(true, wait_ms)
    }
}
/// Directories that only hold a follower's own state (secondary instances' info logs),
/// which the pool makes again from the stores: not backed up.
const FOLLOWER_DIR_PREFIXES: &[&str] = &["shares-ship-", "block-scan-", "share-tail-"];

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub format_version: u32,
    pub otedama_version: String,
    pub created_at_unix_s: u64,
    /// Each store, in the order it was copied.
    pub stores: Vec<StoreEntry>,
    /// Every file of the backup's `data/` with its size and hash, stores' files included.
    pub files: Vec<FileEntry>,
    /// The audit log's chain as copied, if the data directory has one.
    pub audit: Option<AuditHead>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoreEntry {
    /// Relative to the data directory, `/`-separated.
    pub path: String,
    pub records: u64,
    /// The source store's RocksDB sequence number the copy stands at.
    pub source_sequence: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditHead {
    pub entries: u64,
    pub head_hash: String,
    pub intact: bool,
}

/// What `RESTORE_HOLD_FILE` holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RestoreHold {
    pub backup_created_at_unix_s: u64,
}

impl RestoreHold {
    /// The wallet's payments from this time on are compared with the ledger's.
    pub fn compare_from_unix_s(&self) -> u64 {
        self.backup_created_at_unix_s
            .saturating_sub(RESTORE_HOLD_MARGIN_S)
    }

    pub fn read(data_dir: &Path) -> anyhow::Result<Option<RestoreHold>> {
        read_marker(&data_dir.join(RESTORE_HOLD_FILE))
    }
}

/// A JSON file a restore leaves in the data directory, or `None` if there is none.
fn read_marker<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", path.display()))?,
        )),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

/// The order stores and files are copied in: each before every one it refers to.
fn copy_rank(path: &str) -> u8 {
    let share_log = path == "shares" || path.starts_with("shares-") && !path.contains('.');
    match path {
        _ if path.ends_with("-stream-position") => 0,
        _ if EXCHANGE_CUT.contains(&path) => 1,
        "control" => 2,
        "audit" => 3,
        _ if path.starts_with("share-mirror") => 4,
        _ if share_log => 5,
        "jobs" => 6,
        _ => 7,
    }
}

fn is_store(dir: &Path) -> bool {
    dir.join("CURRENT").is_file()
}

fn relative(path: &Path, root: &Path) -> String {
    let rel = path.strip_prefix(root).expect("under its root");
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// One thing to copy: a store (a directory) or a plain file.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Item {
    Store(String),
    File(String),
}

impl Item {
    fn path(&self) -> &str {
        match self {
            Item::Store(path) | Item::File(path) => path,
        }
    }
}

/// The stores and plain files under `data_dir`, in the order they are copied.
fn survey(data_dir: &Path) -> anyhow::Result<Vec<Item>> {
    fn walk(
        root: &Path,
        dir: &Path,
        seen: &mut BTreeSet<PathBuf>,
        items: &mut Vec<Item>,
    ) -> anyhow::Result<()> {
        // Symlinks are followed (a store may live on a disk of its own), each directory
        // once, so a link back up the tree ends.
        if !seen.insert(std::fs::canonicalize(dir)?) {
            return Ok(());
        }
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            // Gone since it was listed (a position's temporary file): nothing to copy.
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            // A symlink is followed to a store only (one on a disk of its own): a link to
            // any other directory (the backups' own, `/`) is not the pool's data.
            let linked = entry.file_type().is_ok_and(|kind| kind.is_symlink());
            if linked && !(meta.is_dir() && is_store(&path)) {
                tracing::warn!(path = %path.display(), "a symlink to something other than a store: not backed up");
                continue;
            }
            if meta.is_dir() {
                if FOLLOWER_DIR_PREFIXES.iter().any(|p| name.starts_with(p)) {
                    continue;
                }
                if is_store(&path) {
                    items.push(Item::Store(relative(&path, root)));
                } else {
                    walk(root, &path, seen, items)?;
                }
            } else if meta.is_file() {
                // Sockets, pipes and devices are not the pool's data. A restore hold still
                // in force is: restored again, payouts stay held from the earlier time.
                items.push(Item::File(relative(&path, root)));
            }
        }
        Ok(())
    }
    let mut items = Vec::new();
    walk(data_dir, data_dir, &mut BTreeSet::new(), &mut items)?;
    items.sort_by_key(|item| (copy_rank(item.path()), item.clone()));
    Ok(items)
}

/// Options for opening a store whose directory must not be written to: RocksDB's info
/// log goes to `log_dir`.
fn quiet_options(log_dir: &Path) -> Options {
    let mut options = Options::default();
    options.set_db_log_dir(log_dir);
    options
}

/// A caught-up secondary instance of the store at `source` (scratch state in `scratch`).
fn open_secondary(source: &Path, scratch: &Path) -> anyhow::Result<DB> {
    std::fs::create_dir_all(scratch)?;
    let mut options = quiet_options(scratch);
    // A secondary must keep every table file open: the primary may delete one it compacted.
    options.set_max_open_files(-1);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let opened = DB::open_as_secondary(&options, source, scratch)
            .and_then(|db| db.try_catch_up_with_primary().map(|()| db));
        match opened {
            Ok(db) => return Ok(db),
            Err(error) if attempt < SECONDARY_OPEN_ATTEMPTS_MAX => {
                tracing::debug!(%error, store = %source.display(), "store moved while opening; trying again");
                std::thread::sleep(std::time::Duration::from_millis(100 * u64::from(attempt)));
            }
            Err(error) => {
                return Err(error).with_context(|| format!("opening {}", source.display()))
            }
        }
    }
}

/// Writes what `secondary` holds now into a new store at `target`; the record count.
fn write_copy(secondary: &DB, target: &Path, scratch: &Path) -> anyhow::Result<u64> {
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut options = quiet_options(scratch);
    options.create_if_missing(true);
    options.set_error_if_exists(true);
    let out =
        DB::open(&options, target).with_context(|| format!("creating {}", target.display()))?;
    let mut unlogged = WriteOptions::default();
    // The copy is flushed and synced whole before the manifest names it.
    unlogged.disable_wal(true);
    let mut batch = WriteBatch::default();
    let mut records = 0u64;
    for item in secondary.iterator(IteratorMode::Start) {
        let (key, value) = item?;
        batch.put(&key, &value);
        records += 1;
        if batch.size_in_bytes() >= COPY_BATCH_BYTES_MAX {
            out.write_opt(std::mem::take(&mut batch), &unlogged)?;
        }
    }
    out.write_opt(batch, &unlogged)?;
    out.flush()?;
    Ok(records)
}

fn copy_store(
    data_dir: &Path,
    path: &str,
    data: &Path,
    scratch: &Path,
) -> anyhow::Result<StoreEntry> {
    let secondary = open_secondary(&data_dir.join(path), scratch)?;
    let records = write_copy(&secondary, &data.join(path), scratch)
        .with_context(|| format!("copying store {path}"))?;
    Ok(StoreEntry {
        path: path.to_string(),
        records,
        source_sequence: secondary.latest_sequence_number(),
    })
}

/// Copies the ledger, the exchange's journal and its accounts (those present) as one cut:
/// with the exchange's transfer gate held, so no transfer is between its writes.
fn copy_exchange_cut(
    data_dir: &Path,
    present: &[String],
    data: &Path,
    scratch: &Path,
) -> anyhow::Result<Vec<StoreEntry>> {
    let dex_dir = data_dir.join("dex");
    let gate = match dex_dir.is_dir() {
        true => Some(TransferGate::open(&dex_dir)?),
        false => None,
    };
    let _held = match &gate {
        Some(gate) => Some(
            gate.for_backup(TRANSFER_GATE_BACKUP_WAIT_MS)?
                .with_context(|| {
                    format!(
                        "an exchange transfer held its gate for {TRANSFER_GATE_BACKUP_WAIT_MS} ms"
                    )
                })?,
        ),
        None => None,
    };
    EXCHANGE_CUT
        .iter()
        .filter(|path| present.iter().any(|p| p == *path))
        .map(|path| copy_store(data_dir, path, data, &scratch.join(path)))
        .collect()
}

fn sha256_file(path: &Path) -> anyhow::Result<(u64, String)> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        bytes += read as u64;
    }
    Ok((bytes, hex::encode(hasher.finalize())))
}

fn sync_path(path: &Path) -> anyhow::Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", path.display()))
}

/// Every regular file under `root`, relative and sorted. A symlink anywhere is refused:
/// nothing a backup holds may lead outside it.
fn files_under(root: &Path) -> anyhow::Result<Vec<String>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            ensure!(
                !kind.is_symlink(),
                "{} is a symlink: a backup holds none",
                relative(&entry.path(), root)
            );
            if kind.is_dir() {
                walk(root, &entry.path(), out)?;
            } else if kind.is_file() {
                out.push(relative(&entry.path(), root));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, root, &mut out)?;
    out.sort();
    Ok(out)
}

/// Syncs every file and directory under `root`, and `root` itself.
fn sync_tree(root: &Path) -> anyhow::Result<()> {
    for file in files_under(root)? {
        sync_path(&root.join(file))?;
    }
    fn dirs(dir: &Path) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                dirs(&entry.path())?;
            }
        }
        sync_path(dir)
    }
    dirs(root)
}

fn dir_is_empty_or_missing(path: &Path) -> anyhow::Result<bool> {
    match std::fs::read_dir(path) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

fn audit_head(audit_dir: &Path, log_dir: &Path) -> anyhow::Result<AuditHead> {
    let log = crate::audit::AuditLog::open_read_only_with(&quiet_options(log_dir), audit_dir)
        .with_context(|| format!("opening {}", audit_dir.display()))?;
    let intact = log.verify()?.is_ok();
    let head = log.head();
    Ok(AuditHead {
        entries: head.entries,
        head_hash: head.hash,
        intact,
    })
}

/// Takes a backup of `data_dir` into `to` (missing or empty), online or not.
pub fn take(data_dir: &Path, to: &Path, now_unix_s: u64) -> anyhow::Result<Manifest> {
    ensure!(
        data_dir.is_dir(),
        "no data directory at {}",
        data_dir.display()
    );
    ensure!(
        dir_is_empty_or_missing(to)?,
        "{} is not empty: a backup goes into a new directory",
        to.display()
    );
    let data = to.join(BACKUP_DATA_DIR);
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    if std::fs::canonicalize(to)?.starts_with(std::fs::canonicalize(data_dir)?) {
        let _ = std::fs::remove_dir_all(to);
        bail!(
            "{} lies inside the data directory {}: the backup would copy itself",
            to.display(),
            data_dir.display()
        );
    }
    let scratch = tempfile::tempdir().context("a scratch directory for the copy")?;
    let items = survey(data_dir)?;
    let in_cut: Vec<String> = items
        .iter()
        .filter_map(|item| match item {
            Item::Store(path) if EXCHANGE_CUT.contains(&path.as_str()) => Some(path.clone()),
            _ => None,
        })
        .collect();
    let mut stores = Vec::new();
    let mut cut_copied = false;
    for (index, item) in items.iter().enumerate() {
        match item {
            Item::Store(path) if in_cut.contains(path) => {
                if !cut_copied {
                    cut_copied = true;
                    let cut = copy_exchange_cut(data_dir, &in_cut, &data, scratch.path())?;
                    stores.extend(cut);
                }
            }
            Item::Store(path) => {
                let store_scratch = scratch.path().join(index.to_string());
                std::fs::create_dir_all(&store_scratch)?;
                stores.push(copy_store(data_dir, path, &data, &store_scratch)?);
            }
            Item::File(path) => {
                let target = data.join(path);
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                match std::fs::copy(data_dir.join(path), &target) {
                    Ok(_) => {}
                    // A temporary file renamed away since the survey.
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => return Err(error).with_context(|| format!("copying {path}")),
                }
            }
        }
    }
    for store in &stores {
        tracing::info!(store = %store.path, records = store.records, "store copied");
    }
    let audit = match stores.iter().any(|s| s.path == "audit") {
        true => Some(audit_head(&data.join("audit"), scratch.path())?),
        false => None,
    };
    let files = files_under(&data)?
        .into_iter()
        .map(|path| {
            let (bytes, sha256) = sha256_file(&data.join(&path))?;
            Ok(FileEntry {
                path,
                bytes,
                sha256,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    sync_tree(&data)?;
    let manifest = Manifest {
        format_version: BACKUP_FORMAT_VERSION,
        otedama_version: env!("CARGO_PKG_VERSION").to_string(),
        created_at_unix_s: now_unix_s,
        stores,
        files,
        audit,
    };
    let staged = to.join(format!("{MANIFEST_FILE}.tmp"));
    {
        let mut file = std::fs::File::create(&staged)?;
        file.write_all(&serde_json::to_vec_pretty(&manifest)?)?;
        file.sync_all()?;
    }
    std::fs::rename(&staged, to.join(MANIFEST_FILE))?;
    sync_path(to)?;
    Ok(manifest)
}

/// A manifest path stays inside the backup: relative, no `..`, no empty part.
fn is_plain_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

/// Checks a backup against its manifest: every file there with its size and hash, no file
/// it does not name and no symlink, each store's record count, and the audit chain's head.
pub fn verify(from: &Path) -> anyhow::Result<Manifest> {
    let manifest_path = from.join(MANIFEST_FILE);
    let bytes = std::fs::read(&manifest_path).with_context(|| {
        format!(
            "no manifest at {} (not a backup, or one cut short)",
            manifest_path.display()
        )
    })?;
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .with_context(|| format!("reading {}", manifest_path.display()))?;
    ensure!(
        manifest.format_version == BACKUP_FORMAT_VERSION,
        "backup format {} is not this version's ({BACKUP_FORMAT_VERSION})",
        manifest.format_version
    );
    let data = from.join(BACKUP_DATA_DIR);
    ensure!(
        !std::fs::symlink_metadata(&data)?.file_type().is_symlink(),
        "{} is a symlink: a backup holds none",
        data.display()
    );
    let named: BTreeMap<&str, &FileEntry> = manifest
        .files
        .iter()
        .map(|f| (f.path.as_str(), f))
        .collect();
    ensure!(
        named.len() == manifest.files.len(),
        "the manifest names a file twice"
    );
    // Every file there, and no symlink on the way to any of them.
    let present = files_under(&data)?;
    for path in &present {
        ensure!(
            named.contains_key(path.as_str()),
            "{path} is in the backup but not in its manifest"
        );
    }
    for entry in &manifest.files {
        ensure!(
            is_plain_relative(&entry.path),
            "the manifest names {:?}, outside the backup",
            entry.path
        );
        ensure!(
            present.binary_search(&entry.path).is_ok(),
            "{} is missing",
            entry.path
        );
        let (bytes, sha256) = sha256_file(&data.join(&entry.path))?;
        ensure!(
            bytes == entry.bytes && sha256 == entry.sha256,
            "{} differs from the manifest ({bytes} bytes, sha256 {sha256}; the manifest says {} bytes, {})",
            entry.path,
            entry.bytes,
            entry.sha256
        );
    }
    let scratch = tempfile::tempdir()?;
    for store in &manifest.stores {
        ensure!(
            is_plain_relative(&store.path),
            "the manifest names store {:?}, outside the backup",
            store.path
        );
        let db = DB::open_for_read_only(
            &quiet_options(scratch.path()),
            data.join(&store.path),
            false,
        )
        .with_context(|| format!("opening store {}", store.path))?;
        let mut records = 0u64;
        for item in db.iterator(IteratorMode::Start) {
            item.with_context(|| format!("reading store {}", store.path))?;
            records += 1;
        }
        ensure!(
            records == store.records,
            "store {} holds {records} records; the manifest says {}",
            store.path,
            store.records
        );
    }
    if let Some(expected) = &manifest.audit {
        let found = audit_head(&data.join("audit"), scratch.path())?;
        ensure!(
            &found == expected,
            "the audit log's head is {found:?}; the manifest says {expected:?}"
        );
    }
    Ok(manifest)
}

fn is_share_log(path: &str) -> bool {
    copy_rank(path) == copy_rank("shares")
}

/// A local share log's data-plane process, from its path (`shares`, `shares-N`).
fn share_log_process(path: &str) -> Option<u32> {
    match path {
        "shares" => Some(0),
        _ => path.strip_prefix("shares-")?.parse().ok(),
    }
}

/// Written by a point-in-time restore (`replay_from`) into the data directory: where each
/// local share log's records from the live directory begin and end. Until the payout
/// thread has read every log past its `last`, it reads each log from `first` less the
/// share history a restart reads back (not from the log's end), so every round after the
/// backup is cut from its own shares however many there are, and nothing of the logs is
/// cut by retention; then it removes the file.
pub const REPLAY_START_FILE: &str = "replay-start.json";

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplayStart {
    /// By data-plane process.
    pub logs: BTreeMap<u32, ReplayLog>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplayLog {
    pub first: u64,
    pub last: u64,
}

impl ReplayStart {
    pub fn read(data_dir: &Path) -> anyhow::Result<Option<ReplayStart>> {
        read_marker(&data_dir.join(REPLAY_START_FILE))
    }
}

/// The last share record of the store at `path` (a share log), if it has one.
fn last_share(db: &DB) -> anyhow::Result<Option<(Vec<u8>, Vec<u8>)>> {
    match db.iterator(IteratorMode::End).next().transpose()? {
        Some((key, value)) if otedama_sharelog::format::share_log_sequence(&key).is_some() => {
            Ok(Some((key.to_vec(), value.to_vec())))
        }
        _ => Ok(None),
    }
}

/// Point-in-time recovery: the restored data directory (`staging`) takes from `live` (a
/// data directory whose logs go on where the backup's stop, its ledger lost or damaged)
/// every share record after the backup's last one, every job, and the data planes' lists of
/// jobs served, so the restored control plane credits every share written after the
/// backup. Records are added to the backup's copies, never put in their place: what live
/// retention cut since the backup (credited there, maybe not in the backup's ledger) stays
/// as the backup has it. Each of the backup's share logs must go on in `live`: the live log
/// holds the backup's last record, byte for byte, so nothing after it was cut and the log
/// is the same log (not one wiped and started again, whose numbers mean other shares).
fn replay_from(live: &Path, staging: &Path, manifest: &Manifest) -> anyhow::Result<Vec<String>> {
    let scratch = tempfile::tempdir()?;
    let items = survey(live)?;
    // Two pools on one chain's worth of shares would both pay them.
    for item in &items {
        let path = item.path();
        if matches!(item, Item::Store(_)) && (is_share_log(path) || path == "ledger") {
            ensure!(
                !otedama_sharelog::tail::primary_lock_held(&live.join(path)),
                "{} is open in a running pool: stop the pool on {} before replaying its share logs",
                path,
                live.display()
            );
        }
    }
    let mut replayed = Vec::new();
    let mut marker = ReplayStart::default();
    for item in &items {
        let path = item.path().to_string();
        let target = staging.join(&path);
        match item {
            Item::Store(_) if is_share_log(&path) || path == "jobs" => {
                let source = open_secondary(&live.join(&path), &scratch.path().join(&path))?;
                let mut options = quiet_options(scratch.path());
                options.create_if_missing(true);
                let restored = DB::open(&options, &target)
                    .with_context(|| format!("opening {}", target.display()))?;
                let from = match is_share_log(&path) {
                    true => match last_share(&restored)? {
                        Some((key, value)) => {
                            ensure!(
                                source.get(&key)?.as_deref() == Some(value.as_slice()),
                                "share log {path} in {} does not hold the backup's last record ({}) as the backup has it: \
                                 it is not the log the backup was taken of, or it was cut or wiped since",
                                live.display(),
                                otedama_sharelog::format::share_log_sequence(&key).expect("a share key")
                            );
                            Some(key)
                        }
                        None => None,
                    },
                    false => None,
                };
                let mut batch = WriteBatch::default();
                let (mut added, mut shares_added) = (0u64, 0u64);
                for record in source.iterator(IteratorMode::Start) {
                    let (key, value) = record?;
                    // A share log's own keys (its clock) sort before every share and are
                    // taken as live has them; shares only after the backup's last.
                    let is_share = otedama_sharelog::format::share_log_sequence(&key).is_some();
                    if is_share && from.as_deref().is_some_and(|last| *key <= *last) {
                        continue;
                    }
                    shares_added += u64::from(is_share && is_share_log(&path));
                    batch.put(&key, &value);
                    added += 1;
                    if batch.size_in_bytes() >= COPY_BATCH_BYTES_MAX {
                        restored.write(std::mem::take(&mut batch))?;
                    }
                }
                restored.write(batch)?;
                restored.flush()?;
                if let (Some(process), true) = (share_log_process(&path), shares_added > 0) {
                    let first = from
                        .as_deref()
                        .and_then(otedama_sharelog::format::share_log_sequence)
                        .map_or(0, |last| last + 1);
                    let last = last_share(&restored)?
                        .and_then(|(key, _)| otedama_sharelog::format::share_log_sequence(&key))
                        .unwrap_or(first);
                    marker.logs.insert(process, ReplayLog { first, last });
                }
                tracing::info!(store = %path, added, "records after the backup taken from the live data directory");
                replayed.push(path);
            }
            Item::File(_) if path.ends_with(".jobs-served") => {
                std::fs::copy(live.join(&path), &target)
                    .with_context(|| format!("copying {path} from {}", live.display()))?;
                replayed.push(path);
            }
            _ => {}
        }
    }
    for store in manifest.stores.iter().filter(|s| is_share_log(&s.path)) {
        ensure!(
            replayed.contains(&store.path),
            "{} has no share log {}: the backup's shares would go on nowhere",
            live.display(),
            store.path
        );
    }
    if !marker.logs.is_empty() {
        std::fs::write(
            staging.join(REPLAY_START_FILE),
            serde_json::to_vec_pretty(&marker)?,
        )?;
    }
    Ok(replayed)
}

/// Verifies the backup at `from`, then makes `data_dir` (missing or empty) a copy of it,
/// with payouts held (`RESTORE_HOLD_FILE`); with `replay`, its share logs and jobs come
/// from that live data directory instead (`replay_from`).
pub fn restore(from: &Path, data_dir: &Path, replay: Option<&Path>) -> anyhow::Result<Manifest> {
    ensure!(
        dir_is_empty_or_missing(data_dir)?,
        "{} is not empty: a restore goes into an empty data directory",
        data_dir.display()
    );
    let manifest = verify(from)?;
    let parent = data_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let name = data_dir
        .file_name()
        .context("the data directory needs a name")?
        .to_string_lossy()
        .into_owned();
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{name}.restoring."))
        .tempdir_in(parent)
        .with_context(|| format!("a directory beside {}", data_dir.display()))?;
    let data = from.join(BACKUP_DATA_DIR);
    for entry in &manifest.files {
        let target = staging.path().join(&entry.path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(data.join(&entry.path), &target)
            .with_context(|| format!("copying {}", entry.path))?;
        // Read again from where it landed: the copy is what the pool will run on.
        let (bytes, sha256) = sha256_file(&target)?;
        ensure!(
            bytes == entry.bytes && sha256 == entry.sha256,
            "{} changed while it was copied",
            entry.path
        );
    }
    if let Some(live) = replay {
        let replaced = replay_from(live, staging.path(), &manifest)?;
        tracing::info!(from = %live.display(), ?replaced, "share logs and jobs taken from the live data directory");
    }
    // A backup of a data directory whose own restore hold was still in force keeps the
    // earlier time: payments since then are still unaccounted for.
    let hold = RestoreHold {
        backup_created_at_unix_s: RestoreHold::read(staging.path())?.map_or(
            manifest.created_at_unix_s,
            |earlier| {
                earlier
                    .backup_created_at_unix_s
                    .min(manifest.created_at_unix_s)
            },
        ),
    };
    std::fs::write(
        staging.path().join(RESTORE_HOLD_FILE),
        serde_json::to_vec_pretty(&hold)?,
    )?;
    // An empty target the operator made keeps its owner and mode.
    if let Ok(existing) = std::fs::metadata(data_dir) {
        use std::os::unix::fs::MetadataExt;
        std::os::unix::fs::chown(staging.path(), Some(existing.uid()), Some(existing.gid()))?;
        std::fs::set_permissions(staging.path(), existing.permissions())?;
    }
    sync_tree(staging.path())?;
    if data_dir.exists() {
        // Empty, as checked above. A mount point cannot be replaced: the staged copy goes
        // with the error.
        std::fs::remove_dir(data_dir).with_context(|| {
            format!(
                "replacing the empty {} (a mount point? restore into a new directory under it)",
                data_dir.display()
            )
        })?;
    }
    let staged = staging.keep();
    if let Err(error) = std::fs::rename(&staged, data_dir) {
        let _ = std::fs::remove_dir_all(&staged);
        bail!(
            "moving the restored data into {}: {error}",
            data_dir.display()
        );
    }
    sync_path(parent)?;
    Ok(manifest)
}

/// The payments of `wallet_sends` that the restored ledger does not know as a payout's
/// transaction (its own or the replacement that paid it).
pub fn unknown_sends(
    ledger: &otedama_ledger::ledger::Ledger,
    wallet_sends: &[String],
) -> anyhow::Result<Vec<String>> {
    let mut known = BTreeSet::new();
    for intent in ledger.intents()? {
        known.insert(intent.txid.clone());
        if let Some(paid_by) = intent.paid_by_txid {
            known.insert(paid_by);
        }
    }
    Ok(wallet_sends
        .iter()
        .filter(|txid| !known.contains(*txid))
        .cloned()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(path: &Path, records: &[(&[u8], &[u8])]) {
        let mut options = Options::default();
        options.create_if_missing(true);
        let db = DB::open(&options, path).unwrap();
        for (key, value) in records {
            db.put(key, value).unwrap();
        }
    }

    fn read_all(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
        let db = DB::open_for_read_only(&Options::default(), path, false).unwrap();
        db.iterator(IteratorMode::Start)
            .map(|item| {
                let (k, v) = item.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect()
    }

    /// A data directory with the pool's usual stores, its share log still open for
    /// writing.
    fn pool_dir(root: &Path) -> DB {
        store(
            &root.join("ledger"),
            &[(b"balance/a", b"10"), (b"balance/b", b"20")],
        );
        store(&root.join("dex/journal"), &[(b"e/1", b"order")]);
        store(&root.join("dex/accounts"), &[(b"a/1", b"addr")]);
        store(&root.join("jobs"), &[(b"j/1", b"job")]);
        std::fs::create_dir_all(root.join("shares-ship-0")).unwrap();
        std::fs::write(root.join("shares-ship-0/LOG"), b"follower log").unwrap();
        std::fs::write(root.join("bans.json"), b"{}").unwrap();
        std::fs::write(root.join("jobs-stream-position"), b"7").unwrap();
        std::fs::write(root.join("shares.jobs-served"), b"1").unwrap();
        let mut options = Options::default();
        options.create_if_missing(true);
        let live = DB::open(&options, root.join("shares")).unwrap();
        for sequence in 0u64..1000 {
            live.put(sequence.to_be_bytes(), [7u8; 64]).unwrap();
        }
        live
    }

    #[test]
    fn stores_and_files_are_copied_before_what_they_refer_to() {
        let root = tempfile::tempdir().unwrap();
        drop(pool_dir(root.path()));
        let order: Vec<String> = survey(root.path())
            .unwrap()
            .iter()
            .map(|item| item.path().to_string())
            .collect();
        assert_eq!(
            order,
            [
                "jobs-stream-position",
                "dex/accounts",
                "dex/journal",
                "ledger",
                "shares",
                "jobs",
                "bans.json",
                "shares.jobs-served"
            ]
        );
    }

    #[test]
    fn a_store_open_for_writing_is_copied_whole_and_restored_with_payouts_held() {
        let root = tempfile::tempdir().unwrap();
        let data_dir = root.path().join("pool");
        let live = pool_dir(&data_dir);
        let backup = root.path().join("backup");
        let manifest = take(&data_dir, &backup, 1_700_000_000).unwrap();
        // The exchange cut first, in its own order; followers' directories left out.
        let order: Vec<_> = manifest.stores.iter().map(|s| s.path.as_str()).collect();
        assert_eq!(
            order,
            ["ledger", "dex/journal", "dex/accounts", "shares", "jobs"]
        );
        assert_eq!(manifest.stores[3].records, 1000);
        assert!(manifest
            .files
            .iter()
            .all(|f| !f.path.starts_with("shares-ship-")));
        assert!(manifest.files.iter().any(|f| f.path == "bans.json"));
        // Written after the backup: not in it.
        live.put(5000u64.to_be_bytes(), b"later").unwrap();
        drop(live);

        assert_eq!(verify(&backup).unwrap(), manifest);
        let restored = root.path().join("restored");
        restore(&backup, &restored, None).unwrap();
        assert_eq!(read_all(&restored.join("shares")).len(), 1000);
        assert_eq!(
            read_all(&restored.join("ledger")),
            read_all(&data_dir.join("ledger"))
        );
        assert_eq!(
            RestoreHold::read(&restored).unwrap(),
            Some(RestoreHold {
                backup_created_at_unix_s: 1_700_000_000
            })
        );
        assert_eq!(std::fs::read(restored.join("bans.json")).unwrap(), b"{}");
        // Verifying opened each store read-only without writing into the backup.
        assert_eq!(verify(&backup).unwrap(), manifest);

        // A backup of the restored directory, hold and all, restored again keeps the
        // earlier hold's time.
        let again = root.path().join("backup-again");
        take(&restored, &again, 1_800_000_000).unwrap();
        let twice = root.path().join("restored-twice");
        restore(&again, &twice, None).unwrap();
        assert_eq!(
            RestoreHold::read(&twice)
                .unwrap()
                .unwrap()
                .backup_created_at_unix_s,
            1_700_000_000
        );
    }

    /// Point-in-time: the backup's ledger with the live share logs written since, and a
    /// live log that is not the backup's (wiped and written again) refused.
    #[test]
    fn a_restore_replays_the_live_share_logs_only_if_they_go_on_from_the_backup() {
        let root = tempfile::tempdir().unwrap();
        let data_dir = root.path().join("pool");
        let live = pool_dir(&data_dir);
        let backup = root.path().join("backup");
        take(&data_dir, &backup, 1).unwrap();
        for sequence in 1000u64..1500 {
            live.put(sequence.to_be_bytes(), [8u8; 64]).unwrap();
        }
        // Live retention cut the oldest shares since: the backup's copies of them stay.
        let mut cut = WriteBatch::default();
        cut.delete_range(0u64.to_be_bytes(), 500u64.to_be_bytes());
        live.write(cut).unwrap();
        drop(live);
        std::fs::write(data_dir.join("shares.jobs-served"), b"1 2").unwrap();
        let restored = root.path().join("restored");
        restore(&backup, &restored, Some(&data_dir)).unwrap();
        assert_eq!(read_all(&restored.join("shares")).len(), 1500);
        assert_eq!(
            std::fs::read(restored.join("shares.jobs-served")).unwrap(),
            b"1 2"
        );
        assert_eq!(
            ReplayStart::read(&restored).unwrap().unwrap().logs,
            BTreeMap::from([(
                0,
                ReplayLog {
                    first: 1000,
                    last: 1499
                }
            )])
        );
        // The ledger is the backup's.
        assert_eq!(
            read_all(&restored.join("ledger")),
            read_all(&backup.join("data/ledger"))
        );

        // The live log wiped and written again: its record 999 is another share.
        std::fs::remove_dir_all(data_dir.join("shares")).unwrap();
        store(
            &data_dir.join("shares"),
            &[(&999u64.to_be_bytes(), b"other")],
        );
        let refused = root.path().join("refused");
        let error = restore(&backup, &refused, Some(&data_dir)).unwrap_err();
        assert!(
            format!("{error:#}").contains("last record (999)"),
            "{error:#}"
        );
        assert!(!refused.exists());
    }

    #[test]
    fn a_restore_refuses_a_non_empty_target_and_a_damaged_backup() {
        let root = tempfile::tempdir().unwrap();
        let data_dir = root.path().join("pool");
        drop(pool_dir(&data_dir));
        let backup = root.path().join("backup");
        take(&data_dir, &backup, 1).unwrap();
        // A second backup into the same place is refused.
        assert!(take(&data_dir, &backup, 2).is_err());

        let occupied = root.path().join("occupied");
        std::fs::create_dir_all(&occupied).unwrap();
        std::fs::write(occupied.join("keep"), b"x").unwrap();
        let error = restore(&backup, &occupied, None).unwrap_err().to_string();
        assert!(error.contains("not empty"), "{error}");
        assert_eq!(std::fs::read(occupied.join("keep")).unwrap(), b"x");

        // One byte changed in one file: verify and restore both refuse, and the target
        // stays empty.
        std::fs::write(backup.join("data/bans.json"), b"{ }").unwrap();
        let error = verify(&backup).unwrap_err().to_string();
        assert!(error.contains("bans.json differs"), "{error}");
        let target = root.path().join("target");
        assert!(restore(&backup, &target, None).is_err());
        assert!(!target.exists());
        std::fs::write(backup.join("data/bans.json"), b"{}").unwrap();
        verify(&backup).unwrap();

        // A file the manifest does not name.
        std::fs::write(backup.join("data/extra"), b"").unwrap();
        let error = verify(&backup).unwrap_err().to_string();
        assert!(error.contains("not in its manifest"), "{error}");
        std::fs::remove_file(backup.join("data/extra")).unwrap();

        // A symlink, which could lead a manifest's path outside the backup.
        std::os::unix::fs::symlink("/", backup.join("data/outside")).unwrap();
        let error = verify(&backup).unwrap_err().to_string();
        assert!(error.contains("symlink"), "{error}");
        std::fs::remove_file(backup.join("data/outside")).unwrap();
        verify(&backup).unwrap();

        // A backup cut short before its manifest is not a backup.
        std::fs::remove_file(backup.join(MANIFEST_FILE)).unwrap();
        let error = verify(&backup).unwrap_err().to_string();
        assert!(error.contains("no manifest"), "{error}");
    }

    /// Transfers as `dex::transfers` writes them, gate held, while backups are taken: the
    /// ledger's transfer pending, its command in the journal, the transfer done; orders in
    /// the journal between them. Whatever moment a backup is taken at, its ledger holds
    /// every transfer whose command its journal holds, and every transfer its ledger holds
    /// done has its command in its journal.
    #[test]
    fn the_exchange_and_the_ledger_are_copied_as_one_cut_while_transfers_go_on() {
        let root = tempfile::tempdir().unwrap();
        let data_dir = root.path().join("pool");
        let mut options = Options::default();
        options.create_if_missing(true);
        let ledger = DB::open(&options, data_dir.join("ledger")).unwrap();
        let journal = DB::open(&options, data_dir.join("dex/journal")).unwrap();
        let gate = TransferGate::open(&data_dir.join("dex")).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut id = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = id.to_be_bytes();
                    // Orders go on whatever the gate says.
                    journal.put([&b"o/"[..], &key].concat(), b"order").unwrap();
                    let Some(_held) = gate.for_transfer(1).unwrap() else {
                        continue;
                    };
                    ledger.put([&b"t/"[..], &key].concat(), b"pending").unwrap();
                    journal
                        .put([&b"e/"[..], &key].concat(), b"deposit")
                        .unwrap();
                    ledger.put([&b"t/"[..], &key].concat(), b"done").unwrap();
                    id += 1;
                }
                id
            })
        };
        let mut checked = 0;
        for round in 0..8 {
            let backup = root.path().join(format!("backup-{round}"));
            if let Err(e) = take(&data_dir, &backup, round) {
                panic!("{e:#}")
            }
            let copied_ledger = read_all(&backup.join("data/ledger"));
            let copied_journal: BTreeSet<Vec<u8>> = read_all(&backup.join("data/dex/journal"))
                .into_iter()
                .map(|(key, _)| key)
                .collect();
            let transfers: BTreeMap<Vec<u8>, Vec<u8>> = copied_ledger
                .into_iter()
                .map(|(key, state)| (key[2..].to_vec(), state))
                .collect();
            for (id, state) in &transfers {
                assert_eq!(
                    state, b"done",
                    "round {round}: transfer {id:?} caught midway"
                );
                let command = [&b"e/"[..], id].concat();
                assert!(
                    copied_journal.contains(&command),
                    "round {round}: transfer {id:?} done without its command"
                );
                checked += 1;
            }
            for command in copied_journal.iter().filter(|k| k.starts_with(b"e/")) {
                assert!(
                    transfers.contains_key(&command[2..]),
                    "round {round}: command {command:?} without its transfer"
                );
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let transfers = writer.join().unwrap();
        assert!(
            transfers > 8 && checked > 0,
            "{transfers} transfers, {checked} checked"
        );
    }

    #[test]
    fn a_symlink_loop_in_the_data_directory_is_walked_once() {
        let root = tempfile::tempdir().unwrap();
        let data_dir = root.path().join("pool");
        drop(pool_dir(&data_dir));
        std::os::unix::fs::symlink(&data_dir, data_dir.join("loop")).unwrap();
        let items = survey(&data_dir).unwrap();
        assert!(items.iter().all(|item| !item.path().starts_with("loop/")));
    }

    #[test]
    fn manifest_paths_stay_inside_the_backup() {
        assert!(is_plain_relative("dex/journal/000004.sst"));
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a"] {
            assert!(!is_plain_relative(bad), "{bad}");
        }
    }
}
