//! Key material and the files that hold it: the admin token (kept as its SHA-256), the
//! KYC webhook secret, the SV2 authority key and the QUIC certificate, each generated on
//! first start where the operator gave none, written readable by the pool alone.

use super::*;

impl PoolConfig {
    /// The SHA-256 of the admin token, when an admin token file is configured: the server
    /// keeps nothing else of it.
    pub fn admin_token_sha256(&self) -> anyhow::Result<Option<[u8; 32]>> {
        let Some(path) = &self.admin_token_file else {
            return Ok(None);
        };
        let token = std::fs::read_to_string(path)
            .with_context(|| format!("reading admin_token_file {}", path.display()))?;
        let token = token.trim();
        if token.len() < ADMIN_TOKEN_BYTES_MIN {
            bail!(
                "the admin token in {} is shorter than {ADMIN_TOKEN_BYTES_MIN} characters",
                path.display()
            );
        }
        Ok(Some(sha2::Sha256::digest(token.as_bytes()).into()))
    }

    /// The shared KYC secret, when a webhook is configured.
    pub fn kyc_webhook_secret(&self) -> anyhow::Result<Option<Vec<u8>>> {
        let Some(path) = &self.kyc_webhook_secret_file else {
            return Ok(None);
        };
        let secret = std::fs::read_to_string(path)
            .with_context(|| format!("reading kyc_webhook_secret_file {}", path.display()))?;
        let secret = secret.trim();
        if secret.len() < KYC_WEBHOOK_SECRET_BYTES_MIN {
            bail!(
                "the KYC webhook secret in {} is shorter than {KYC_WEBHOOK_SECRET_BYTES_MIN} characters",
                path.display()
            );
        }
        Ok(Some(secret.as_bytes().to_vec()))
    }

    /// Creates the data directory (and any parent missing) readable by the pool's user and
    /// group only (0750, as the Ansible role makes it): it holds the ledger, the share logs
    /// and the authority key.
    pub fn ensure_data_dir(&self) -> anyhow::Result<&Path> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let existed = self.data_dir.is_dir();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DATA_DIR_MODE)
            .create(&self.data_dir)
            .with_context(|| format!("creating data directory {}", self.data_dir.display()))?;
        if !existed {
            // Exactly the mode, whatever the umask took away or would have let through.
            std::fs::set_permissions(
                &self.data_dir,
                std::fs::Permissions::from_mode(DATA_DIR_MODE),
            )
            .with_context(|| format!("setting the mode of {}", self.data_dir.display()))?;
        }
        Ok(&self.data_dir)
    }

    pub fn sv2_authority_key_path(&self) -> PathBuf {
        self.sv2_authority_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("sv2-authority.key"))
    }

    /// The Stratum V2 authority key: read from its file, or made and written there (mode
    /// 0600, created exclusively, so two processes starting together agree on one key).
    pub fn sv2_authority(&self) -> anyhow::Result<AuthorityKey> {
        let path = self.sv2_authority_key_path();
        let read = |path: &Path| -> anyhow::Result<AuthorityKey> {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let secret: [u8; 32] = hex::decode(text.trim())
                .ok()
                .and_then(|bytes| bytes.try_into().ok())
                .with_context(|| format!("{} must hold 64 hex digits", path.display()))?;
            AuthorityKey::from_secret(secret)
                .with_context(|| format!("{} is not a valid secp256k1 key", path.display()))
        };
        if path.exists() {
            return read(&path);
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let key = AuthorityKey::generate(&mut rand::rngs::OsRng);
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(mut file) => {
                file.write_all(format!("{}\n", hex::encode(key.secret_bytes())).as_bytes())?;
                file.sync_all()?;
                tracing::info!(path = %path.display(), "created the Stratum V2 authority key");
                Ok(key)
            }
            // Another process made it first: use theirs.
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => read(&path),
            Err(error) => Err(error).with_context(|| format!("creating {}", path.display())),
        }
    }

    /// Where the QUIC certificate and key are: the configured pair, or the self-signed one
    /// kept in the data directory.
    pub fn quic_tls_paths(&self) -> (PathBuf, PathBuf) {
        match (&self.quic_cert_file, &self.quic_key_file) {
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
            _ => (
                self.data_dir.join("quic-cert.pem"),
                self.data_dir.join("quic-key.pem"),
            ),
        }
    }
}

/// Writes a new file readable by its owner only; an existing file is an error, so two
/// processes starting together cannot overwrite each other's key.
pub fn write_new_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}
