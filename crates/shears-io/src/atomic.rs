//! Atomic file writes: the one way shears writes an output file.
//!
//! [`write_atomic`] writes to a temporary file beside the target, named
//! `.NAME.tmp-<pid>-<counter>` (hidden, unique within and across processes), fsyncs it, renames
//! it over the target and fsyncs the directory where the platform allows. A reader therefore
//! sees either the old file or the complete new one, never a prefix, and a crash leaves the
//! target as it was.
//!
//! Before writing it refuses a target that exists and is not a regular file (a directory, a
//! symbolic link, a FIFO, a socket or a device node such as `/dev/full`:
//! [`IoError::NotRegularFile`]), and with [`WriteOptions::with_input`] a target that is one of
//! the command's inputs (same canonical path or same inode: [`IoError::OutputIsInput`]). On
//! any error the temporary file is removed and the target is untouched.
//!
//! A process killed between creating and renaming its temporary file (kill -9, power loss)
//! leaves it behind. The next write to the same target removes such stale files: those whose
//! process is no longer running (checked through `/proc` where it exists) or that are older than
//! [`STALE_AFTER`], and says so on stderr.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::IoError;

/// A temporary file older than this is stale even if a process with its pid is running (the
/// pid may have been reused).
pub const STALE_AFTER: Duration = Duration::from_secs(6 * 3600);

/// Distinguishes the temporary files of concurrent writes within one process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// What a path that is not a regular file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A directory.
    Directory,
    /// A symbolic link (never followed: replacing it would replace the link, not its target).
    Symlink,
    /// A named pipe.
    Fifo,
    /// A Unix domain socket.
    Socket,
    /// A character device such as `/dev/null` or `/dev/full`.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// Anything else that is not a regular file.
    Other,
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::Directory => "a directory",
            FileKind::Symlink => "a symbolic link",
            FileKind::Fifo => "a FIFO (named pipe)",
            FileKind::Socket => "a socket",
            FileKind::CharDevice => "a character device",
            FileKind::BlockDevice => "a block device",
            FileKind::Other => "not a regular file",
        })
    }
}

impl FileKind {
    /// The kind of `meta` (from `symlink_metadata`), or `None` for a regular file.
    fn of(meta: &std::fs::Metadata) -> Option<FileKind> {
        let t = meta.file_type();
        if t.is_file() {
            return None;
        }
        if t.is_dir() {
            return Some(FileKind::Directory);
        }
        if t.is_symlink() {
            return Some(FileKind::Symlink);
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileTypeExt;
            if t.is_fifo() {
                return Some(FileKind::Fifo);
            }
            if t.is_socket() {
                return Some(FileKind::Socket);
            }
            if t.is_char_device() {
                return Some(FileKind::CharDevice);
            }
            if t.is_block_device() {
                return Some(FileKind::BlockDevice);
            }
        }
        Some(FileKind::Other)
    }
}

/// Options of [`write_atomic_with`]: the input files the target must not be.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    inputs: Vec<PathBuf>,
}

impl WriteOptions {
    /// No guard beyond the file-kind check.
    pub fn new() -> Self {
        Self::default()
    }

    /// Refuses to write over `input` (same canonical path or same inode as the target).
    pub fn with_input(mut self, input: impl Into<PathBuf>) -> Self {
        self.inputs.push(input.into());
        self
    }

    /// The input files guarded so far.
    pub fn inputs(&self) -> &[PathBuf] {
        &self.inputs
    }
}

/// Checks that `path` may be written: it does not exist or is a regular file (not a symbolic
/// link), and it is none of `opts`' inputs. [`write_atomic_with`] calls this first; commands
/// call it too, to refuse a bad output path before doing any work.
///
/// # Errors
/// [`IoError::NotRegularFile`], [`IoError::OutputIsInput`], or [`IoError::Io`] when the path
/// cannot be examined.
pub fn check_output(path: &Path, opts: &WriteOptions) -> Result<(), IoError> {
    if path.file_name().is_none() {
        return Err(IoError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no file name"),
        ));
    }
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(IoError::io(path, e)),
    };
    if let Some(kind) = FileKind::of(&meta) {
        return Err(IoError::NotRegularFile {
            path: path.to_path_buf(),
            kind,
        });
    }
    for input in &opts.inputs {
        if same_file(path, &meta, input) {
            return Err(IoError::OutputIsInput {
                path: path.to_path_buf(),
                input: input.clone(),
            });
        }
    }
    Ok(())
}

/// Whether `input` is the existing file `path` (whose metadata is `meta`).
fn same_file(path: &Path, meta: &std::fs::Metadata, input: &Path) -> bool {
    if let (Ok(a), Ok(b)) = (path.canonicalize(), input.canonicalize()) {
        if a == b {
            return true;
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let Ok(m) = std::fs::metadata(input) {
            return m.dev() == meta.dev() && m.ino() == meta.ino();
        }
    }
    let _ = meta;
    false
}

/// Writes `path` atomically with no input guard: see [`write_atomic_with`].
///
/// ```
/// use std::io::Write;
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("notes.txt");
/// shears_io::write_atomic(&path, |w| w.write_all(b"hello")).unwrap();
/// assert_eq!(std::fs::read(&path).unwrap(), b"hello");
/// // Only the target is left: the temporary file was renamed over it.
/// assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
/// ```
pub fn write_atomic(
    path: &Path,
    body: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), IoError> {
    write_atomic_with(path, &WriteOptions::new(), body)
}

/// Writes `path` atomically: [`check_output`], then `body` writes (buffered) to a new temporary
/// file `.NAME.tmp-<pid>-<counter>` in the same directory, which is fsynced and renamed over
/// `path`; then the directory is fsynced where it can be opened. Stale temporary files of the
/// same target left by killed processes are removed first (see the module docs).
///
/// # Errors
/// The errors of [`check_output`]; [`IoError::Io`] naming `path` when creating, writing,
/// syncing or renaming fails, or when `body` fails. In every error case the temporary file is
/// removed and `path` is untouched.
pub fn write_atomic_with(
    path: &Path,
    opts: &WriteOptions,
    body: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), IoError> {
    check_output(path, opts)?;
    let file_name = path
        .file_name()
        .expect("check_output refuses paths without a file name");
    for stale in remove_stale_temps(path) {
        eprintln!(
            "note: removed {}, a temporary file left by an interrupted write (process {}, {})",
            stale.path.display(),
            stale.pid,
            if stale.running {
                "pid now reused, file too old"
            } else {
                "no longer running"
            }
        );
    }
    let mut tmp = PathBuf::new();
    let result = (|| {
        let f = loop {
            let mut tmp_name = std::ffi::OsString::from(".");
            tmp_name.push(file_name);
            tmp_name.push(format!(
                ".tmp-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            tmp = path.with_file_name(tmp_name);
            // A name already taken (by nothing shears made) is skipped, never opened.
            match OpenOptions::new().write(true).create_new(true).open(&tmp) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                r => break r?,
            }
        };
        let mut w = BufWriter::new(f);
        body(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        if !tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&tmp);
        }
        return Err(IoError::io(path, e));
    }
    // Best effort: persist the rename itself. Not all platforms can open a directory.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A stale temporary file removed by [`remove_stale_temps`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleTemp {
    /// The file removed.
    pub path: PathBuf,
    /// The pid in its name.
    pub pid: u32,
    /// Whether a process with that pid was running (the file was removed for its age).
    pub running: bool,
}

/// Removes the temporary files of `path` left by writes that will never finish: named as
/// [`write_atomic`] names them (or as earlier shears versions did, `NAME.tmp-<pid>` and
/// `NAME.tmp<pid>`), with a pid other than this process's that is not running, or older than
/// [`STALE_AFTER`]. Returns what it removed; files it cannot remove are left alone.
pub fn remove_stale_temps(path: &Path) -> Vec<StaleTemp> {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Vec::new();
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let me = std::process::id();
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name.to_str().and_then(|f| temp_pid(f, name)) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        if !meta.file_type().is_file() {
            continue;
        }
        let running = pid_running(pid);
        let old = meta
            .modified()
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_AFTER);
        if (running == Some(true) || running.is_none()) && !old {
            continue;
        }
        if std::fs::remove_file(entry.path()).is_ok() {
            removed.push(StaleTemp {
                path: entry.path(),
                pid,
                running: running == Some(true),
            });
        }
    }
    removed.sort_by(|a, b| a.path.cmp(&b.path));
    removed
}

/// The pid in `file`, if it is a temporary file of the target named `name`.
fn temp_pid(file: &str, name: &str) -> Option<u32> {
    let digits = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u32>().ok())
            .flatten()
    };
    if let Some(rest) = file
        .strip_prefix('.')
        .and_then(|f| f.strip_prefix(name))
        .and_then(|f| f.strip_prefix(".tmp-"))
    {
        let (pid, counter) = rest.split_once('-')?;
        digits(counter)?;
        return digits(pid);
    }
    let rest = file.strip_prefix(name)?.strip_prefix(".tmp")?;
    digits(rest.strip_prefix('-').unwrap_or(rest))
}

/// Whether process `pid` is running: `None` where that cannot be told (no `/proc`).
fn pid_running(pid: u32) -> Option<bool> {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return None;
    }
    Some(proc.join(pid.to_string()).exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) -> Result<(), IoError> {
        write_atomic(path, |w| w.write_all(text.as_bytes()))
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_a_regular_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        write(&p, "one").unwrap();
        write(&p, "two").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        assert_eq!(names(dir.path()), ["a.txt"]);
    }

    #[test]
    fn a_failing_body_leaves_the_target_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        write(&p, "keep").unwrap();
        let e = write_atomic(&p, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("body failed"))
        })
        .unwrap_err();
        assert!(e.to_string().contains("body failed"), "{e}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "keep");
        assert_eq!(names(dir.path()), ["a.txt"]);
    }

    #[test]
    fn refuses_directories_and_symlinks_naming_the_kind() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        match write(&sub, "x") {
            Err(IoError::NotRegularFile { path, kind }) => {
                assert_eq!(path, sub);
                assert_eq!(kind, FileKind::Directory);
            }
            other => panic!("expected NotRegularFile, got {other:?}"),
        }
        #[cfg(unix)]
        {
            let target = dir.path().join("real.txt");
            write(&target, "real").unwrap();
            let link = dir.path().join("link.txt");
            std::os::unix::fs::symlink(&target, &link).unwrap();
            let e = write(&link, "x").unwrap_err();
            assert!(
                matches!(
                    e,
                    IoError::NotRegularFile {
                        kind: FileKind::Symlink,
                        ..
                    }
                ),
                "{e:?}"
            );
            assert!(e.to_string().contains("symbolic link"), "{e}");
            assert_eq!(std::fs::read_to_string(&target).unwrap(), "real");
            assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
        }
    }

    #[cfg(unix)]
    #[test]
    fn refuses_device_nodes() {
        let p = Path::new("/dev/null");
        if p.exists() {
            let e = write(p, "x").unwrap_err();
            assert!(
                matches!(
                    e,
                    IoError::NotRegularFile {
                        kind: FileKind::CharDevice,
                        ..
                    }
                ),
                "{e:?}"
            );
            assert!(e.to_string().contains("/dev/null"), "{e}");
        }
    }

    #[test]
    fn refuses_an_input_by_path_or_hard_link() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.txt");
        write(&input, "input").unwrap();
        let opts = WriteOptions::new().with_input(&input);
        let same = dir.path().join(".").join("in.txt");
        let e = write_atomic_with(&same, &opts, |w| w.write_all(b"x")).unwrap_err();
        assert!(matches!(e, IoError::OutputIsInput { .. }), "{e:?}");
        assert!(e.to_string().contains("in.txt"), "{e}");
        let hard = dir.path().join("hard.txt");
        std::fs::hard_link(&input, &hard).unwrap();
        let e = write_atomic_with(&hard, &opts, |w| w.write_all(b"x")).unwrap_err();
        assert!(matches!(e, IoError::OutputIsInput { .. }), "{e:?}");
        assert_eq!(std::fs::read_to_string(&input).unwrap(), "input");
        // Another file is fine.
        write_atomic_with(&dir.path().join("out.txt"), &opts, |w| w.write_all(b"x")).unwrap();
    }

    #[test]
    fn temp_names_parse_only_for_their_target() {
        assert_eq!(temp_pid(".m.onnx.tmp-123-4", "m.onnx"), Some(123));
        assert_eq!(temp_pid("m.onnx.tmp-123", "m.onnx"), Some(123));
        assert_eq!(temp_pid("m.onnx.tmp123", "m.onnx"), Some(123));
        assert_eq!(temp_pid(".m.onnx.tmp-123-", "m.onnx"), None);
        assert_eq!(temp_pid("m.onnx.tmp-12x", "m.onnx"), None);
        assert_eq!(temp_pid("xm.onnx.tmp-123", "m.onnx"), None);
        assert_eq!(temp_pid("m.onnx", "m.onnx"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn stale_temps_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.safetensors");
        // Pids above the kernel's pid_max (at most 2^22) are never running.
        let dead = dir.path().join("m.safetensors.tmp-99999999");
        let dead_new = dir.path().join(".m.safetensors.tmp-99999998-0");
        let live = dir
            .path()
            .join(format!(".m.safetensors.tmp-{}-7", std::process::id()));
        let other = dir.path().join("n.safetensors.tmp-99999999");
        for f in [&dead, &dead_new, &live, &other] {
            std::fs::write(f, "partial").unwrap();
        }
        write(&p, "model").unwrap();
        assert!(!dead.exists() && !dead_new.exists());
        assert!(live.exists() && other.exists());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "model");
    }
}
