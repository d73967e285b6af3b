//! A small disk for the tests of a full one (feature `test-support`): the share log's
//! own and the end-to-end one.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A size-limited tmpfs mounted on a directory, unmounted when dropped. Mounting needs
/// root (CAP_SYS_ADMIN); without it the test fails and says so, it is never skipped.
pub struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `bytes` on `path` (created if missing).
    pub fn mount(path: PathBuf, bytes: usize) -> Self {
        std::fs::create_dir_all(&path).expect("creating the mount point");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("running mount(8)");
        assert!(
            status.success(),
            "mounting a {bytes}-byte tmpfs for a disk-full test failed: it needs root (CAP_SYS_ADMIN)"
        );
        SmallDisk { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a file until the disk is full; removing it gives the space back.
    pub fn fill(&self) -> PathBuf {
        let path = self.path.join("filler");
        let mut file = std::fs::File::create(&path).expect("creating the filler");
        let chunk = vec![0u8; 64 << 10];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}
