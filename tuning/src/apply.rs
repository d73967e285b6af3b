//! Carrying a plan out, and taking it back. `apply` keeps the first value it replaced for
//! every file and kernel setting it touches in a backup, so `revert` restores the host as
//! it was before Otedama tuned it, however many times `apply` ran in between.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::facts::{limits_drop_in_path, normalize, sysctl_path, DATAPLANE_UNIT};
use crate::plan::{Kind, Plan, Setting};

/// The persistent sysctl file `apply` owns.
pub const SYSCTL_FILE: &str = "etc/sysctl.d/60-otedama.conf";
/// Where `apply` keeps what it replaced.
pub const BACKUP_FILE: &str = "var/lib/otedama-tune/backup.json";

/// What `apply` replaced: file contents (`None`: the file did not exist) and runtime values
/// exactly as read, keyed by path relative to the root.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Backup {
    pub files: BTreeMap<String, Option<String>>,
    pub runtime: BTreeMap<String, String>,
}

/// One thing written to the host.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// The setting, or the file, that changed.
    pub name: String,
    pub path: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub changes: Vec<Change>,
    pub notes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("no setting named {0} in the plan")]
    UnknownSetting(String),
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("the backup {path} is unreadable ({reason}); fix or remove it by hand")]
    BadBackup { path: String, reason: String },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> ApplyError + '_ {
    move |source| ApplyError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn relative(root: &Path, path: &Path) -> String {
    format!("/{}", path.strip_prefix(root).unwrap_or(path).display())
}

/// The runtime file that holds a setting's live value, if it has one.
fn runtime_path(root: &Path, setting: &Setting) -> Option<PathBuf> {
    match setting.kind {
        Kind::Sysctl => Some(sysctl_path(root, &setting.name)),
        Kind::ServiceLimit => None,
        Kind::IrqAffinity { irq } => Some(root.join(format!("proc/irq/{irq}/smp_affinity_list"))),
        Kind::Governor { cpu } => Some(root.join(format!(
            "sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor"
        ))),
    }
}

/// `/etc/sysctl.d/60-otedama.conf`: every planned sysctl, so the values survive a reboot.
fn sysctl_file(settings: &[&Setting]) -> Option<String> {
    let lines: Vec<String> = settings
        .iter()
        .filter(|s| s.kind == Kind::Sysctl)
        .map(|s| format!("# {}\n{} = {}\n", s.reason, s.name, s.planned))
        .collect();
    (!lines.is_empty()).then(|| {
        format!(
            "# Written by otedama-tune apply; otedama-tune revert restores what was here.\n{}",
            lines.join("")
        )
    })
}

/// The data plane unit's drop-in with its limits.
fn limits_file(settings: &[&Setting]) -> Option<String> {
    let lines: Vec<String> = settings
        .iter()
        .filter(|s| s.kind == Kind::ServiceLimit)
        .map(|s| format!("# {}\n{}={}\n", s.reason, s.name, s.planned))
        .collect();
    (!lines.is_empty()).then(|| {
        format!(
            "# Written by otedama-tune apply; otedama-tune revert removes it.\n[Service]\n{}",
            lines.join("")
        )
    })
}

fn load_backup(root: &Path) -> Result<Option<Backup>, ApplyError> {
    let path = root.join(BACKUP_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| ApplyError::BadBackup {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(&path)(e)),
    }
}

fn save_backup(root: &Path, backup: &Backup) -> Result<(), ApplyError> {
    let path = root.join(BACKUP_FILE);
    write_atomically(
        &path,
        &serde_json::to_string_pretty(backup).expect("a backup serializes"),
    )
}

/// Writes `contents` beside `path` and renames it into place, so a crash leaves the old
/// file or the new one, never half of either.
fn write_atomically(path: &Path, contents: &str) -> Result<(), ApplyError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_error(dir))?;
    }
    let temporary = path.with_extension("otedama-tune-new");
    fs::write(&temporary, contents).map_err(io_error(&temporary))?;
    fs::rename(&temporary, path).map_err(io_error(path))
}

/// Applies `plan` under `root`; `only`, when not empty, limits it to the named settings.
pub fn apply(root: &Path, plan: &Plan, only: &[String]) -> Result<Report, ApplyError> {
    for name in only {
        if !plan.settings.iter().any(|s| &s.name == name) {
            return Err(ApplyError::UnknownSetting(name.clone()));
        }
    }
    let selected: Vec<&Setting> = plan
        .settings
        .iter()
        .filter(|s| only.is_empty() || only.contains(&s.name))
        .collect();
    let mut backup = load_backup(root)?.unwrap_or_default();
    let mut changes = Vec::new();
    let mut notes = Vec::new();

    let files = [
        (root.join(SYSCTL_FILE), sysctl_file(&selected)),
        (limits_drop_in_path(root), limits_file(&selected)),
    ];
    let mut limits_changed = false;
    for (path, wanted) in files {
        let Some(wanted) = wanted else { continue };
        let existing = read_optional(&path)?;
        if existing.as_deref() == Some(wanted.as_str()) {
            continue;
        }
        let key = relative(root, &path);
        backup.files.entry(key.clone()).or_insert(existing.clone());
        save_backup(root, &backup)?;
        write_atomically(&path, &wanted)?;
        limits_changed |= path == limits_drop_in_path(root);
        changes.push(Change {
            name: key.clone(),
            path: key,
            before: existing,
            after: Some(wanted),
        });
    }

    for setting in selected.iter().filter(|s| s.changes()) {
        let Some(path) = runtime_path(root, setting) else {
            continue;
        };
        let key = relative(root, &path);
        let raw = fs::read_to_string(&path).ok();
        if let Some(raw) = &raw {
            backup.runtime.entry(key.clone()).or_insert(raw.clone());
        }
        let before = raw.map(|v| normalize(&v));
        save_backup(root, &backup)?;
        fs::write(&path, format!("{}\n", setting.planned)).map_err(io_error(&path))?;
        changes.push(Change {
            name: setting.name.clone(),
            path: key,
            before,
            after: Some(setting.planned.clone()),
        });
    }
    if limits_changed {
        notes.push(reload_systemd(root));
        notes.push(format!(
            "LimitNOFILE and LimitMEMLOCK take effect when {DATAPLANE_UNIT} next starts"
        ));
    }
    Ok(Report { changes, notes })
}

/// Restores everything `apply` replaced, then forgets the backup.
pub fn revert(root: &Path) -> Result<Report, ApplyError> {
    let Some(backup) = load_backup(root)? else {
        return Ok(Report {
            changes: Vec::new(),
            notes: vec!["nothing to revert: otedama-tune apply has not changed this host".into()],
        });
    };
    let mut changes = Vec::new();
    let mut notes = Vec::new();
    for (key, value) in &backup.runtime {
        let path = root.join(key.trim_start_matches('/'));
        let before = fs::read_to_string(&path).ok().map(|v| normalize(&v));
        if before.as_deref() != Some(normalize(value).as_str()) {
            fs::write(&path, value).map_err(io_error(&path))?;
            changes.push(Change {
                name: key.clone(),
                path: key.clone(),
                before,
                after: Some(normalize(value)),
            });
        }
    }
    let mut limits_changed = false;
    for (key, original) in &backup.files {
        let path = root.join(key.trim_start_matches('/'));
        let before = read_optional(&path)?;
        match original {
            Some(contents) => write_atomically(&path, contents)?,
            None => {
                if before.is_some() {
                    fs::remove_file(&path).map_err(io_error(&path))?;
                }
            }
        }
        if path == limits_drop_in_path(root) {
            limits_changed = true;
            // The drop-in directory is ours too, once it is empty.
            if let Some(dir) = path.parent() {
                let _ = fs::remove_dir(dir);
            }
        }
        changes.push(Change {
            name: key.clone(),
            path: key.clone(),
            before,
            after: original.clone(),
        });
    }
    let backup_path = root.join(BACKUP_FILE);
    fs::remove_file(&backup_path).map_err(io_error(&backup_path))?;
    if let Some(dir) = backup_path.parent() {
        let _ = fs::remove_dir(dir);
    }
    if limits_changed {
        notes.push(reload_systemd(root));
    }
    Ok(Report { changes, notes })
}

fn read_optional(path: &Path) -> Result<Option<String>, ApplyError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(path)(e)),
    }
}

/// Tells systemd its unit files changed, when it runs this host (`root` is `/`).
fn reload_systemd(root: &Path) -> String {
    if root != Path::new("/") || !Path::new("/run/systemd/system").exists() {
        return "systemd does not manage this root; run `systemctl daemon-reload` where it does"
            .into();
    }
    match std::process::Command::new("systemctl")
        .arg("daemon-reload")
        .status()
    {
        Ok(status) if status.success() => "systemctl daemon-reload: done".into(),
        Ok(status) => format!("systemctl daemon-reload failed ({status}); run it by hand"),
        Err(e) => format!("systemctl daemon-reload could not run ({e}); run it by hand"),
    }
}
