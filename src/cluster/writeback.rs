//! cluster::writeback: the embedded cluster's data files go to disk steadily, not in bursts.
//!
//! A durable COMMIT waits for its WAL to reach the disk. By default Linux lets dirty page
//! cache grow to 10 % of memory before it writes any back, then writes out everything older
//! than 30 s at once; PostgreSQL's data writes (its `*_flush_after` hints do not cover them
//! all: a relation grows by zero-filled pages written without a hint, and backends' evictions
//! are not hinted by default) then leave in bursts of hundreds of MB, and every COMMIT's WAL
//! flush queues behind them on the same disk: stalls of 100-200 ms under sustained ingest.
//! `tuning/sysctl.conf` fixes it for the whole host; on an untuned one (`starts_late`) the
//! server does this instead: every `writeback_ms` (250) its supervisor hands each data file
//! written to lately to write-back, so dirty pages leave about as fast as they come
//! (results/2026-11-30-writeback: once a second, p99.9 at 20,000 req/s 21-50 ms instead of
//! 127-210, the page cache's dirty share ~27 MB instead of 415-450). The period is short
//! because each pass is a small stall of its own (the commits' WAL flushes queue behind the
//! writes it starts): once a second made p99 11-14 ms, every 250 ms 6-7.5
//! (results/2026-11-30-lead-persister).
//!
//! How: `posix_fadvise(POSIX_FADV_DONTNEED)` over the whole file, which on Linux starts the
//! write of its dirty pages without waiting for it (as background write-back does) and then
//! drops its clean pages from the page cache. That drop is the price: pages PostgreSQL no
//! longer holds in its own buffers are read from disk again. The alternatives measured worse
//! or are out of reach: `fdatasync` waits, commits ext4's journal each time, and cost more at
//! p90 and p99; starting write-back only past 32 MB of dirty memory left 33-49 ms at p99.9;
//! `sync_file_range`, which only starts the write, is offered by neither std, rustix nor nix
//! without unsafe code, which this crate forbids.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The data files of one cluster the server writes: its database's (`base/<oid>/*`) and the
/// shared catalogs (`global/*`). The other databases (template0, template1, postgres: about
/// 900 of 1,400 files on a new cluster) are left to the kernel: the server never writes
/// them, and looking at their files four times a second was most of an idle server's CPU.
pub struct Writeback {
    dirs: Vec<PathBuf>,
    /// Files modified this recently are handed to write-back: those written since the last
    /// pass, with a margin for a pass that ran late.
    recent: Duration,
}

impl Writeback {
    /// For the cluster whose PGDATA is `pgdata` and the database of OID `database` in it
    /// (every database when it is not known), passing every `every`.
    pub fn new(pgdata: &Path, database: Option<u32>, every: Duration) -> Writeback {
        let base = pgdata.join("base");
        Writeback {
            dirs: vec![
                database.map_or(base.clone(), |oid| base.join(oid.to_string())),
                pgdata.join("global"),
            ],
            recent: every * 2 + Duration::from_secs(1),
        }
    }

    /// Hands every data file modified lately to write-back; how many. Files that vanish or
    /// cannot be opened meanwhile are skipped.
    pub fn pass(&self) -> usize {
        let since = SystemTime::now() - self.recent;
        let mut handed = 0;
        for dir in &self.dirs {
            for file in data_files(dir) {
                let recent = fs::metadata(&file)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t >= since);
                if recent && write_back(&file) {
                    handed += 1;
                }
            }
        }
        handed
    }
}

/// Relation files in `dir` and in each directory under it (`base/<database>/`). Temporary
/// ones are left out: temporary relations (`t<backend>_<file>`) and sort and hash spills
/// (`pgsql_tmp/`) are dropped soon, and written back they would only be written for nothing.
fn data_files(dir: &Path) -> Vec<PathBuf> {
    let kept = |e: &fs::DirEntry| !e.file_name().to_string_lossy().starts_with(['t', 'p']);
    let mut files = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten().filter(kept) {
        match entry.file_type() {
            Ok(t) if t.is_file() => files.push(entry.path()),
            Ok(t) if t.is_dir() => {
                if let Ok(inner) = fs::read_dir(entry.path()) {
                    files.extend(
                        inner
                            .flatten()
                            .filter(|e| kept(e) && e.file_type().is_ok_and(|t| t.is_file()))
                            .map(|e| e.path()),
                    );
                }
            }
            _ => {}
        }
    }
    files
}

/// Starts the write of `path`'s dirty pages and drops its clean ones from the page cache.
fn write_back(path: &Path) -> bool {
    File::open(path).is_ok_and(|file| {
        nix::fcntl::posix_fadvise(
            file.as_raw_fd(),
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .is_ok()
    })
}

/// Dirty page cache past which a host's kernel starts background write-back and still keeps
/// commits smooth. Beyond it, write-back comes in bursts that every COMMIT's WAL flush waits
/// behind (measured: 110-270 ms stalls with 2.4 GB, none with 32 MiB:
/// results/2026-11-26-writeback-stalls).
const WRITEBACK_START_MAX: u64 = 256 << 20;

/// Bytes of dirty page cache at which background write-back starts: `dirty_background_bytes`
/// when set, else `dirty_background_ratio` percent of memory (the kernel's rule, which counts
/// only reclaimable memory: `mem_total` overstates it a little).
pub fn writeback_start(background_bytes: u64, background_ratio: u64, mem_total: u64) -> u64 {
    if background_bytes > 0 {
        background_bytes
    } else {
        mem_total / 100 * background_ratio
    }
}

/// Where this host's kernel starts background write-back, in bytes, when that is late
/// enough for its bursts to stall the embedded cluster's commits; `None` when it is early
/// enough (a host tuned with tuning/sysctl.conf, or a small one), or cannot be read.
pub fn starts_late() -> Option<u64> {
    let read = |path: &str| -> Option<u64> { fs::read_to_string(path).ok()?.trim().parse().ok() };
    let mem_total = mem_total()?;
    let start = writeback_start(
        read("/proc/sys/vm/dirty_background_bytes")?,
        read("/proc/sys/vm/dirty_background_ratio")?,
        mem_total,
    );
    (start > WRITEBACK_START_MAX).then_some(start)
}

/// The host's memory in bytes (`MemTotal`), if it can be read.
pub fn mem_total() -> Option<u64> {
    let kb = fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_hands_over_the_data_files_written_lately_and_no_others() {
        let pgdata = tempfile::tempdir().unwrap();
        let db = pgdata.path().join("base").join("16384");
        fs::create_dir_all(&db).unwrap();
        fs::create_dir_all(pgdata.path().join("global")).unwrap();
        for f in ["16385", "16386", "16387_fsm"] {
            fs::write(db.join(f), vec![1u8; 8192]).unwrap();
        }
        // Temporary: a temporary table's file, a sort's spill.
        fs::write(db.join("t3_16390"), vec![1u8; 8192]).unwrap();
        let spills = pgdata.path().join("base").join("pgsql_tmp");
        fs::create_dir_all(&spills).unwrap();
        fs::write(spills.join("pgsql_tmp123.0"), vec![1u8; 8192]).unwrap();
        fs::write(pgdata.path().join("global").join("1262"), b"x").unwrap();
        // Outside the data directories: never looked at.
        fs::write(pgdata.path().join("postmaster.pid"), b"1").unwrap();
        // Another database's file: left out once the server's database is known.
        let template = pgdata.path().join("base").join("1");
        fs::create_dir_all(&template).unwrap();
        fs::write(template.join("1259"), vec![1u8; 8192]).unwrap();
        let every = Duration::from_secs(1);
        assert_eq!(Writeback::new(pgdata.path(), None, every).pass(), 5);
        let w = Writeback::new(pgdata.path(), Some(16384), every);
        assert_eq!(w.pass(), 4);
        // Files last written a minute ago are left alone.
        let old = SystemTime::now() - Duration::from_secs(60);
        for f in ["16385", "16387_fsm"] {
            File::options()
                .write(true)
                .open(db.join(f))
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        assert_eq!(w.pass(), 2);
        fs::remove_file(db.join("16386")).unwrap();
        assert_eq!(w.pass(), 1);
        // A cluster not yet initialized: nothing to do.
        assert_eq!(
            Writeback::new(&pgdata.path().join("none"), Some(16384), every).pass(),
            0
        );
    }

    #[test]
    fn write_back_starts_at_the_byte_setting_or_else_a_share_of_memory() {
        let gib = 1u64 << 30;
        // The kernel's defaults on a 24 GiB host: 10 % of memory, far past the bound.
        assert_eq!(writeback_start(0, 10, 24 * gib), 24 * gib / 100 * 10);
        assert!(writeback_start(0, 10, 24 * gib) > WRITEBACK_START_MAX);
        // tuning/sysctl.conf's setting wins over the ratio.
        assert_eq!(writeback_start(32 << 20, 10, 24 * gib), 32 << 20);
        assert!(writeback_start(32 << 20, 10, 24 * gib) <= WRITEBACK_START_MAX);
        // A small machine is fine with the ratio alone.
        assert!(writeback_start(0, 10, 2 * gib) <= WRITEBACK_START_MAX);
    }
}
