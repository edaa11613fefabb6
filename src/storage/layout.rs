//! The data directory: which shard count the data was written with, and where each shard's files
//! are.
//!
//! ```text
//! data_dir/
//!   LOCK                    held (flock) by the one process using the directory
//!   MANIFEST                {"format": 1, "shards": 2, "generation": 1}, replaced atomically
//!   gen-000001/shard-000/   wal-<first seq>.log segments and snapshot-<seq>.snap files
//!   gen-000001/shard-001/
//! ```
//!
//! Resharding (starting with another shard count) writes the new layout as a new generation —
//! every new shard's state as a snapshot — makes it durable, then switches `MANIFEST` to it with
//! one atomic rename. A crash before the rename leaves the old generation in use (the unfinished
//! one is removed at the next start); after it, the new one. Old generations are then removed.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::disk::{sync_dir, write_atomic_std};

/// Version of the on-disk format this build reads and writes.
pub const FORMAT: u32 = 1;
const MANIFEST: &str = "MANIFEST";

/// The contents of `MANIFEST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// On-disk format version.
    pub format: u32,
    /// Shard count the data is laid out for.
    pub shards: usize,
    /// Generation directory in use.
    pub generation: u64,
}

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// A file operation failed (missing permission, read-only or full file system…).
    #[error("{}: {error}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// Another process holds the directory.
    #[error("{}: another shardpay process is using this data directory", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// `MANIFEST` is unreadable or from another format.
    #[error("{}: {message}", path.display())]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Moving the data to the new shard count failed; the old layout is still in use.
    #[error("resharding from {from} to {to} shards failed (the data is unchanged): {message}")]
    Reshard {
        /// Old shard count.
        from: usize,
        /// New shard count.
        to: usize,
        /// What failed.
        message: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> LayoutError + '_ {
    move |error| LayoutError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// An open data directory, locked for this process.
#[derive(Debug)]
pub struct Layout {
    data_dir: PathBuf,
    manifest: Manifest,
    _lock: File,
}

impl Layout {
    /// The directory of `shard` in generation `generation`.
    fn dir(data_dir: &Path, generation: u64, shard: usize) -> PathBuf {
        data_dir
            .join(format!("gen-{generation:06}"))
            .join(format!("shard-{shard:03}"))
    }

    /// The directory of `shard`.
    pub fn shard_dir(&self, shard: usize) -> PathBuf {
        Self::dir(&self.data_dir, self.manifest.generation, shard)
    }

    /// The manifest in use.
    pub fn manifest(&self) -> Manifest {
        self.manifest
    }

    /// Opens (creating if needed) `data_dir` for `shards` shards. When the data was written with
    /// another shard count, `reshard(old_dirs, new_dirs)` must write every new shard's state
    /// into its (empty, existing) directory; the switch to it is then made atomically.
    pub fn open(
        data_dir: &Path,
        shards: usize,
        reshard: impl FnOnce(&[PathBuf], &[PathBuf]) -> Result<(), String>,
    ) -> Result<Layout, LayoutError> {
        std::fs::create_dir_all(data_dir).map_err(io_error(data_dir))?;
        let lock_path = data_dir.join("LOCK");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error(&lock_path))?;
        // SAFETY: flock on a descriptor we own; released when the file is closed.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(LayoutError::Locked { path: lock_path });
        }
        let manifest_path = data_dir.join(MANIFEST);
        let existing = match std::fs::read(&manifest_path) {
            Ok(bytes) => {
                let manifest: Manifest =
                    serde_json::from_slice(&bytes).map_err(|error| LayoutError::Manifest {
                        path: manifest_path.clone(),
                        message: format!("not a valid manifest: {error}"),
                    })?;
                if manifest.format != FORMAT {
                    return Err(LayoutError::Manifest {
                        path: manifest_path,
                        message: format!(
                            "format {} is not supported by this build (format {FORMAT})",
                            manifest.format
                        ),
                    });
                }
                Some(manifest)
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => None,
            Err(error) => return Err(io_error(&manifest_path)(error)),
        };
        let manifest = match existing {
            Some(manifest) if manifest.shards == shards => manifest,
            Some(old) => {
                let next = Manifest {
                    format: FORMAT,
                    shards,
                    generation: old.generation + 1,
                };
                let old_dirs: Vec<PathBuf> = (0..old.shards)
                    .map(|s| Self::dir(data_dir, old.generation, s))
                    .collect();
                let new_dirs = Self::make_generation(data_dir, next)?;
                tracing::info!(from = old.shards, to = shards, "resharding the data directory");
                reshard(&old_dirs, &new_dirs).map_err(|message| LayoutError::Reshard {
                    from: old.shards,
                    to: shards,
                    message,
                })?;
                for dir in &new_dirs {
                    sync_dir(dir).map_err(io_error(dir))?;
                }
                Self::write_manifest(data_dir, next)?;
                tracing::info!(from = old.shards, to = shards, "resharded");
                next
            }
            None => {
                let first = Manifest {
                    format: FORMAT,
                    shards,
                    generation: 1,
                };
                Self::make_generation(data_dir, first)?;
                Self::write_manifest(data_dir, first)?;
                first
            }
        };
        // Generations other than the one in use: old ones, or an unfinished resharding.
        for entry in std::fs::read_dir(data_dir).map_err(io_error(data_dir))? {
            let entry = entry.map_err(io_error(data_dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("gen-") && name != format!("gen-{:06}", manifest.generation) {
                let path = entry.path();
                std::fs::remove_dir_all(&path).map_err(io_error(&path))?;
            }
        }
        sync_dir(data_dir).map_err(io_error(data_dir))?;
        Ok(Layout {
            data_dir: data_dir.to_path_buf(),
            manifest,
            _lock: lock,
        })
    }

    /// Creates the (empty) shard directories of a generation, removing a stale one first.
    fn make_generation(data_dir: &Path, manifest: Manifest) -> Result<Vec<PathBuf>, LayoutError> {
        let root = data_dir.join(format!("gen-{:06}", manifest.generation));
        if root.exists() {
            std::fs::remove_dir_all(&root).map_err(io_error(&root))?;
        }
        let mut dirs = Vec::with_capacity(manifest.shards);
        for shard in 0..manifest.shards {
            let dir = Self::dir(data_dir, manifest.generation, shard);
            std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
            dirs.push(dir);
        }
        sync_dir(&root).map_err(io_error(&root))?;
        sync_dir(data_dir).map_err(io_error(data_dir))?;
        Ok(dirs)
    }

    fn write_manifest(data_dir: &Path, manifest: Manifest) -> Result<(), LayoutError> {
        let bytes = serde_json::to_vec(&manifest).expect("a manifest serializes");
        write_atomic_std(data_dir, MANIFEST, &bytes).map_err(io_error(&data_dir.join(MANIFEST)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shardpay-layout-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_new_directory_gets_a_manifest_and_one_directory_per_shard() {
        let dir = temp("new");
        let layout = Layout::open(&dir, 3, |_, _| unreachable!()).unwrap();
        assert_eq!(layout.manifest().shards, 3);
        for shard in 0..3 {
            assert!(layout.shard_dir(shard).is_dir());
        }
        drop(layout);
        let again = Layout::open(&dir, 3, |_, _| unreachable!()).unwrap();
        assert_eq!(again.manifest().generation, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_process_is_refused() {
        let dir = temp("lock");
        let _held = Layout::open(&dir, 1, |_, _| unreachable!()).unwrap();
        assert!(matches!(
            Layout::open(&dir, 1, |_, _| unreachable!()),
            Err(LayoutError::Locked { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_reshard_leaves_the_old_layout_in_use() {
        let dir = temp("reshard");
        let layout = Layout::open(&dir, 2, |_, _| unreachable!()).unwrap();
        std::fs::write(layout.shard_dir(1).join("marker"), b"old").unwrap();
        drop(layout);
        let failed = Layout::open(&dir, 1, |_, new| {
            std::fs::write(new[0].join("half"), b"written").unwrap();
            Err("crashed half-way".to_string())
        });
        assert!(matches!(failed, Err(LayoutError::Reshard { from: 2, to: 1, .. })));
        let old = Layout::open(&dir, 2, |_, _| unreachable!()).unwrap();
        assert_eq!(old.manifest().generation, 1);
        assert!(old.shard_dir(1).join("marker").exists());
        assert!(
            !dir.join("gen-000002").exists(),
            "the unfinished generation is removed"
        );
        drop(old);
        let moved = Layout::open(&dir, 1, |old, new| {
            assert_eq!(old.len(), 2);
            std::fs::copy(old[1].join("marker"), new[0].join("marker"))
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .unwrap();
        assert_eq!(
            moved.manifest(),
            Manifest {
                format: FORMAT,
                shards: 1,
                generation: 2
            }
        );
        assert!(moved.shard_dir(0).join("marker").exists());
        assert!(!dir.join("gen-000001").exists(), "the old generation is removed");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
