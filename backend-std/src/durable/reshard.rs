//! The data directory's layout for `--workers N`, and the change from one N to another.
//!
//! With one worker the segments are in the data directory itself (the layout every node had
//! before `--workers`). With N > 1 worker `i` keeps its own segments in `worker-<i>/` and
//! the file `WORKERS` says N. A key's records belong to the worker
//! [`worker_of_key`](crate::steering::worker_of_key) names, so a node started with another N
//! first rewrites every valid record into the new layout (a *reshard*), in an order a kill
//! at any point survives without losing an acknowledged write:
//!
//! 1. **Copy.** Every valid record of the old layout is appended to the segment of its epoch
//!    in `reshard/` (`reshard/worker-<i>/` for N > 1), laid out as the new layout; `reshard/TARGET`
//!    names N. The files and directories are fsynced, then `reshard/COMPLETE` is created and
//!    fsynced. A kill before that leaves the old layout whole: the next start removes
//!    `reshard/` and copies again.
//! 2. **Remove the old layout** (`seg-*.log` in the directory, every `worker-*/`, `WORKERS`),
//!    then rename `COMPLETE` to `MOVING`. A kill here resumes this step: the copy is the truth.
//! 3. **Move** each entry of `reshard/` into the directory (one rename each), write `WORKERS`
//!    (N > 1), remove `reshard/`. A kill here resumes the moves.
//!
//! Quarantine files (`*.damaged`) of the old layout's directory are kept; those of old
//! `worker-<i>/` directories are copied into the new layout's first directory as
//! `from-worker-<i>-<name>`. Unreadable slots are not copied (they were never readable).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::format::{
    MAGIC, RECORD_BYTES, decode_record, parse_segment_name, read_full, segment_name,
};
use crate::steering::worker_of_key;

/// The file that names the number of workers of an N > 1 layout.
pub const WORKERS_FILE: &str = "WORKERS";
/// The directory a reshard builds the new layout in.
const STAGING: &str = "reshard";
const TARGET: &str = "TARGET";
const COMPLETE: &str = "COMPLETE";
const MOVING: &str = "MOVING";

/// Worker `i`'s directory in a layout of `workers` workers under `dir`.
pub fn worker_dir(dir: &Path, worker: usize, workers: usize) -> PathBuf {
    if workers == 1 {
        dir.to_path_buf()
    } else {
        dir.join(format!("worker-{worker}"))
    }
}

/// The number of workers whose layout `dir` holds (1 when it has no `WORKERS` file).
pub fn layout_workers(dir: &Path) -> io::Result<usize> {
    match fs::read_to_string(dir.join(WORKERS_FILE)) {
        Ok(text) => text
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} should hold a number of workers, not {text:?}",
                        dir.join(WORKERS_FILE).display()
                    ),
                )
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(1),
        Err(e) => Err(e),
    }
}

/// Whether `dir` holds another layout than one worker's, or an unfinished reshard: a
/// one-worker start must reshard (and lock the directory for it) before opening its store.
pub fn reshard_needed_for_one(dir: &Path) -> bool {
    dir.join(WORKERS_FILE).exists() || dir.join(STAGING).exists()
}

/// What a reshard did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resharded {
    /// Workers of the old layout.
    pub from: usize,
    /// Records copied.
    pub records: u64,
}

/// Bring `dir` to the layout of `workers` workers, finishing an interrupted reshard first.
/// `None` when it already had that layout (or does not exist). The caller keeps other
/// processes out of `dir` meanwhile (a node locks it).
pub fn reshard(dir: &Path, workers: usize) -> io::Result<Option<Resharded>> {
    if !dir.is_dir() {
        return Ok(None);
    }
    let staging = dir.join(STAGING);
    if staging.is_dir() {
        if staging.join(MOVING).exists() {
            move_in(dir)?;
        } else if staging.join(COMPLETE).exists() {
            remove_old(dir)?;
            move_in(dir)?;
        } else {
            warn!(dir = %staging.display(), "removing an unfinished reshard copy; the old layout is whole");
            fs::remove_dir_all(&staging)?;
            sync_dir(dir)?;
        }
    }
    let from = layout_workers(dir)?;
    if from == workers {
        return Ok(None);
    }
    // A new directory (or one without segments) is only laid out: nothing to say about it.
    let fresh = !has_segments(dir, from)?;
    if !fresh {
        info!(dir = %dir.display(), from, to = workers, "resharding the data directory");
    }
    let records = copy(dir, from, workers)?;
    remove_old(dir)?;
    move_in(dir)?;
    if fresh {
        return Ok(None);
    }
    info!(dir = %dir.display(), from, to = workers, records, "resharded");
    Ok(Some(Resharded { from, records }))
}

/// Whether the layout of `workers` workers in `dir` holds any segment file.
fn has_segments(dir: &Path, workers: usize) -> io::Result<bool> {
    for w in 0..workers {
        let d = worker_dir(dir, w, workers);
        if !d.is_dir() {
            continue;
        }
        for entry in fs::read_dir(&d)? {
            if parse_segment_name(&entry?.file_name().to_string_lossy()).is_some() {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Step 1: copy every valid record of the `from` layout into `reshard/`, as the `to`
/// layout, durably, and mark the copy complete. The records copied.
fn copy(dir: &Path, from: usize, to: usize) -> io::Result<u64> {
    let staging = dir.join(STAGING);
    fs::create_dir(&staging)?;
    write_durably(&staging.join(TARGET), &format!("{to}\n"))?;
    let mut out: HashMap<(usize, u32), BufWriter<File>> = HashMap::new();
    let mut records = 0u64;
    let first = worker_dir(&staging, 0, to);
    for w in 0..to {
        fs::create_dir_all(worker_dir(&staging, w, to))?;
    }
    for old in 0..from {
        let old_dir = worker_dir(dir, old, from);
        if !old_dir.is_dir() {
            continue;
        }
        for entry in fs::read_dir(&old_dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if from > 1 && name.ends_with(".damaged") {
                fs::copy(
                    entry.path(),
                    first.join(format!("from-worker-{old}-{name}")),
                )?;
                continue;
            }
            let Some(epoch) = parse_segment_name(&name) else {
                continue;
            };
            // Read in chunks of whole records: a segment can be larger than RAM allows.
            let mut input = BufReader::new(File::open(entry.path())?);
            let mut magic = [0u8; MAGIC.len()];
            if read_full(&mut input, &mut magic)? < MAGIC.len() || &magic != MAGIC {
                warn!(file = %entry.path().display(), "not a segment: left out of the reshard");
                continue;
            }
            let mut chunk = vec![0u8; RECORD_BYTES * 4096];
            loop {
                let n = read_full(&mut input, &mut chunk)?;
                for r in chunk[..n].chunks_exact(RECORD_BYTES) {
                    let Some(value) = decode_record(r, epoch) else {
                        continue;
                    };
                    let w = worker_of_key(&dqe_core::hash::key_of(&value), to);
                    let file = match out.entry((w, epoch)) {
                        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::hash_map::Entry::Vacant(e) => {
                            let path = worker_dir(&staging, w, to).join(segment_name(epoch));
                            let mut f = BufWriter::new(
                                OpenOptions::new().write(true).create_new(true).open(path)?,
                            );
                            f.write_all(MAGIC)?;
                            e.insert(f)
                        }
                    };
                    file.write_all(r)?;
                    records += 1;
                }
                if n < chunk.len() {
                    break;
                }
            }
        }
    }
    for (_, f) in out {
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    for w in 0..to {
        sync_dir(&worker_dir(&staging, w, to))?;
    }
    File::create(staging.join(COMPLETE))?.sync_all()?;
    sync_dir(&staging)?;
    Ok(records)
}

/// Step 2: remove the old layout (whatever it was: the copy is complete), then mark the
/// moves as started.
fn remove_old(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if parse_segment_name(&name).is_some() || name == WORKERS_FILE {
            fs::remove_file(entry.path())?;
        } else if name.starts_with("worker-") && entry.file_type()?.is_dir() {
            fs::remove_dir_all(entry.path())?;
        }
    }
    sync_dir(dir)?;
    let staging = dir.join(STAGING);
    fs::rename(staging.join(COMPLETE), staging.join(MOVING))?;
    sync_dir(&staging)
}

/// Step 3: move the new layout in and name its number of workers.
fn move_in(dir: &Path) -> io::Result<()> {
    let staging = dir.join(STAGING);
    let target = fs::read_to_string(staging.join(TARGET))?;
    let to: usize = target.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is damaged", staging.join(TARGET).display()),
        )
    })?;
    for entry in fs::read_dir(&staging)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == TARGET || name == MOVING {
            continue;
        }
        fs::rename(entry.path(), dir.join(&name))?;
    }
    sync_dir(dir)?;
    if to > 1 {
        write_durably(&dir.join(WORKERS_FILE), &format!("{to}\n"))?;
    }
    fs::remove_dir_all(&staging)?;
    sync_dir(dir)
}

/// Write `text` to `path` through a temporary file and a rename, fsynced.
fn write_durably(path: &Path, text: &str) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable::encode_record;
    use std::collections::BTreeSet;

    /// The (epoch, value) of every valid record under `dir` in the layout of `workers`, each
    /// checked to be in the directory of its key's worker.
    fn records(dir: &Path, workers: usize) -> BTreeSet<(u32, [u8; 20])> {
        let mut all = BTreeSet::new();
        for w in 0..workers {
            for entry in fs::read_dir(worker_dir(dir, w, workers)).unwrap() {
                let entry = entry.unwrap();
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(epoch) = parse_segment_name(&name) else {
                    continue;
                };
                let bytes = fs::read(entry.path()).unwrap();
                for r in bytes[8..].chunks_exact(RECORD_BYTES) {
                    if let Some(v) = decode_record(r, epoch) {
                        assert_eq!(worker_of_key(&dqe_core::hash::key_of(&v), workers), w);
                        all.insert((epoch, v));
                    }
                }
            }
        }
        all
    }

    fn one_worker_dir(values: usize) -> (tempfile::TempDir, BTreeSet<(u32, [u8; 20])>) {
        let dir = tempfile::tempdir().unwrap();
        let mut want = BTreeSet::new();
        for epoch in [7u32, 8] {
            let mut bytes = MAGIC.to_vec();
            for i in 0..values {
                let mut v = [0u8; 20];
                v[..8].copy_from_slice(&(i as u64).to_le_bytes());
                v[19] = epoch as u8;
                bytes.extend_from_slice(&encode_record(&v, epoch));
                want.insert((epoch, v));
            }
            // A torn tail and preallocated zeros are not records.
            bytes.extend_from_slice(&[0xab; 11]);
            bytes.extend_from_slice(&[0; 56]);
            fs::write(dir.path().join(segment_name(epoch)), bytes).unwrap();
        }
        fs::write(dir.path().join("seg-7.log.damaged"), "quarantine").unwrap();
        (dir, want)
    }

    #[test]
    fn a_reshard_keeps_every_record_and_puts_it_with_its_worker() {
        // More records than one read chunk (4,096) per segment.
        let (dir, want) = one_worker_dir(5_000);
        let d = dir.path();
        assert_eq!(reshard(d, 1).unwrap(), None);
        let done = reshard(d, 3).unwrap().unwrap();
        assert_eq!(
            done,
            Resharded {
                from: 1,
                records: 10_000
            }
        );
        assert_eq!(layout_workers(d).unwrap(), 3);
        assert!(!d.join(segment_name(7)).exists());
        assert!(d.join("seg-7.log.damaged").exists());
        assert_eq!(records(d, 3), want);
        assert_eq!(reshard(d, 3).unwrap(), None);
        assert_eq!(reshard(d, 2).unwrap().unwrap().from, 3);
        assert_eq!(records(d, 2), want);
        assert!(!d.join("worker-2").exists());
        assert_eq!(reshard(d, 1).unwrap().unwrap().records, 10_000);
        assert_eq!(layout_workers(d).unwrap(), 1);
        assert!(!d.join(WORKERS_FILE).exists() && !d.join("worker-0").exists());
        assert!(!d.join(STAGING).exists());
        assert_eq!(records(d, 1), want);
    }

    #[test]
    fn a_directory_without_segments_is_only_laid_out() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(reshard(d, 2).unwrap(), None);
        assert_eq!(layout_workers(d).unwrap(), 2);
        assert!(d.join("worker-1").is_dir() && !d.join(STAGING).exists());
        assert_eq!(reshard(d, 1).unwrap(), None);
        assert_eq!(layout_workers(d).unwrap(), 1);
        assert!(!d.join("worker-0").exists());
    }

    /// A kill after each step of a reshard (simulated by running the steps one by one)
    /// loses nothing: the next start finishes or restarts it.
    #[test]
    fn a_reshard_interrupted_at_any_step_is_finished_or_redone_at_the_next_start() {
        for stop_after in 0..4 {
            let (dir, want) = one_worker_dir(200);
            let d = dir.path();
            reshard(d, 2).unwrap();
            if stop_after >= 1 {
                copy(d, 2, 3).unwrap();
            } else {
                // Killed half-way through the copy: a staging dir without COMPLETE.
                fs::create_dir_all(d.join(STAGING).join("worker-0")).unwrap();
                fs::write(d.join(STAGING).join("worker-0").join("seg-7.log"), b"DQE").unwrap();
            }
            if stop_after >= 2 {
                remove_old(d).unwrap();
            }
            if stop_after >= 3 {
                // Killed half-way through the moves: one entry moved.
                fs::rename(d.join(STAGING).join("worker-0"), d.join("worker-0")).unwrap();
            }
            // The next start, with yet another number of workers.
            reshard(d, 4).unwrap();
            assert_eq!(layout_workers(d).unwrap(), 4, "stop after {stop_after}");
            assert_eq!(records(d, 4), want, "stop after {stop_after}");
            assert!(!d.join(STAGING).exists());
        }
    }
}
