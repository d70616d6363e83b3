//! File operations that cannot harm anything outside the output.
//!
//! - Files are compared by identity (device and inode), never by path, so a
//!   hard link, a bind mount or another spelling of a path is recognized
//!   ([`Protected`]).
//! - A file is only ever written when this process has just created it, under
//!   a temporary name, with `O_CREAT | O_EXCL | O_NOFOLLOW`: never through a
//!   symbolic link and never into an existing file. It is fsynced and renamed
//!   into place; a rename replaces a link, it does not follow it.
//! - An output directory carries a marker, [`MARKER_FILE`], written when
//!   symprune creates the directory (or adopts an empty one), and a run holds
//!   a lock on it ([`OwnedDir`]): the whole file for a whole run, one byte per
//!   rank for a part of a shard-parallel run, so parts coexist and nothing else does.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Marks a directory as symprune's output; its lock guards the directory.
pub const MARKER_FILE: &str = ".symprune-output";

const MARKER_TEXT: &str = "This directory is a symprune output. `--overwrite` replaces it; \
                           a lock on this file keeps two runs from writing it at once.\n";

/// A file's identity: its device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    pub fn of(meta: &fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    /// The entry itself (a link is not followed), if there is one.
    pub fn entry(path: &Path) -> Option<FileId> {
        fs::symlink_metadata(path).ok().map(|m| Self::of(&m))
    }

    /// What `path` names, links followed, if it exists.
    pub fn target(path: &Path) -> Option<FileId> {
        fs::metadata(path).ok().map(|m| Self::of(&m))
    }
}

/// The temporary name under which `name` is written.
pub fn temp_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.tmp"))
}

pub fn is_temp(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// The names in `dir`, sorted.
pub fn entries(dir: &Path) -> Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(Error::io(dir))? {
        names.push(entry.map_err(Error::io(dir))?.file_name());
    }
    names.sort();
    Ok(names)
}

fn open_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Creates `path` as a new file; fails if anything is there, a dangling link included.
pub fn create_new(path: &Path) -> Result<File> {
    open_new(path).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            Error::checkpoint(
                path,
                "appeared while symprune was creating it; another program writes into the \
                 output directory, stop it and run again",
            )
        } else {
            Error::io(path)(e)
        }
    })
}

/// Opens an existing file for reading without following a link at `path`.
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Removes a file or a link (never what it points to); nothing there is fine.
pub fn remove_entry(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) => Err(Error::checkpoint(
            path,
            "is a directory where symprune writes a file; remove it",
        )),
        other => other.map_err(Error::io(path)),
    }
}

/// A new file at the temporary name of `name` in `dir`. What is there
/// already (a temporary file an interrupted run left, or a planted link) is
/// removed first; removing a link never touches its target.
pub fn create_temp(dir: &Path, name: &str) -> Result<(PathBuf, File)> {
    let tmp = temp_path(dir, name);
    remove_entry(&tmp)?;
    let file = create_new(&tmp)?;
    Ok((tmp, file))
}

/// Renames a finished temporary file over `target` (a link there is replaced).
pub fn commit(tmp: &Path, target: &Path) -> Result<()> {
    fs::rename(tmp, target).map_err(Error::io(target))
}

/// Writes `bytes` as `dir/name` through a temporary file, so it is whole or absent.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let (tmp, mut file) = create_temp(dir, name)?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .map_err(Error::io(&tmp))?;
    commit(&tmp, &dir.join(name))
}

/// Copies the file `src` to `dir/name` through a temporary file (the kernel
/// copies where it can); returns the bytes copied.
pub fn copy_atomic(src: &Path, dir: &Path, name: &str) -> Result<u64> {
    let mut from = File::open(src).map_err(Error::io(src))?;
    let (tmp, mut file) = create_temp(dir, name)?;
    let copied = io::copy(&mut from, &mut file)
        .and_then(|n| file.sync_all().map(|_| n))
        .map_err(Error::io(&tmp))?;
    commit(&tmp, &dir.join(name))?;
    Ok(copied)
}

/// Replaces the file `path` with `bytes` (creating its parent directories)
/// through a new temporary file, fsynced and renamed over it: readers see
/// the old file or the new one, and a link at `path` is replaced, not followed.
pub fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Err(Error::invalid(
            "output",
            format!("{} does not end in a file name", path.display()),
        ));
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(Error::io(dir))?;
    // Concurrent writers of one file each use their own temporary name.
    let (tmp, mut file) = create_temp(dir, &format!("{name}.{}", std::process::id()))?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .map_err(Error::io(&tmp))?;
    commit(&tmp, path)?;
    sync_dir(dir)
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(dir))
}

/// `len` bytes at `start` from `src` to the same place in `dst`, copied by
/// the kernel (`copy_file_range`) where it can.
pub fn copy_range(src: &File, dst: &File, start: u64, len: u64) -> io::Result<()> {
    let (mut reader, mut writer) = (src, dst);
    reader.seek(SeekFrom::Start(start))?;
    writer.seek(SeekFrom::Start(start))?;
    let copied = io::copy(&mut reader.take(len), &mut writer)?;
    if copied != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the input ended after {copied} of {len} bytes (was it truncated?)"),
        ));
    }
    Ok(())
}

/// Starts writing a range to disk without waiting for it, so that the fsync
/// closing the file finds little left to do.
#[cfg(target_os = "linux")]
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    // SAFETY: an open descriptor; the call only schedules I/O, and a failure
    // just leaves the work to the fsync.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
pub fn start_writeback(_: &File, _: u64, _: u64) {}

/// The absolute form of a path that may not exist yet, with the links of
/// its existing part resolved.
pub fn resolve(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    while existing.canonicalize().is_err() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return absolute,
        }
    }
    let mut out = existing.canonicalize().expect("checked above");
    out.extend(rest.iter().rev());
    out
}

/// Swaps the directories `a` and `b`: atomically where the system can
/// (Linux `renameat2(RENAME_EXCHANGE)`), else by three renames through `spare`.
pub fn exchange(a: &Path, b: &Path, spare: &Path) -> Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let c =
            |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|e| Error::io(p)(e.into()));
        let (ca, cb) = (c(a)?, c(b)?);
        // SAFETY: two NUL-terminated paths; the raw system call avoids
        // needing a C library new enough to wrap it.
        let done = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                ca.as_ptr(),
                libc::AT_FDCWD,
                cb.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if done == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if !matches!(
            e.raw_os_error(),
            Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
        ) {
            return Err(Error::io(b)(e));
        }
    }
    fs::rename(b, spare).map_err(Error::io(b))?;
    fs::rename(a, b).map_err(Error::io(a))?;
    fs::rename(spare, a).map_err(Error::io(spare))
}

/// What a run locks of an output directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockRange {
    /// Everything: a whole run, or finishing the parts of one.
    Whole,
    /// One rank of a shard-parallel run.
    Part(usize),
}

/// Takes a write lock on `range` of `file` without waiting; `false` when
/// another run holds it. Open-file-description locks (Linux) also exclude
/// a second writer in the same process; where the filesystem has no locks,
/// the run goes on unguarded.
fn try_lock(file: &File, range: LockRange) -> io::Result<bool> {
    let (start, len) = match range {
        LockRange::Whole => (0, 0), // 0: to the end of the file and beyond
        LockRange::Part(rank) => (1 + rank as libc::off_t, 1),
    };
    // SAFETY: a plain C struct, valid when zeroed.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as _;
    lock.l_whence = libc::SEEK_SET as _;
    lock.l_start = start;
    lock.l_len = len;
    #[cfg(target_os = "linux")]
    const SET_LOCK: libc::c_int = libc::F_OFD_SETLK;
    #[cfg(not(target_os = "linux"))]
    const SET_LOCK: libc::c_int = libc::F_SETLK;
    // SAFETY: an open descriptor and a valid flock struct.
    if unsafe { libc::fcntl(file.as_raw_fd(), SET_LOCK, &lock) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN | libc::EACCES) => Ok(false),
        Some(libc::ENOLCK | libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL) => Ok(true),
        _ => Err(e),
    }
}

/// "a, b, c and 4 more".
pub fn some_names(names: &[OsString]) -> String {
    let shown: Vec<_> = names
        .iter()
        .take(3)
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    match names.len() {
        n if n > 3 => format!("{} and {} more", shown.join(", "), n - 3),
        _ => shown.join(", "),
    }
}

/// An output directory this process may write: it carries the marker, and
/// the marker's lock is held for this run's [`LockRange`] while this lives.
#[derive(Debug)]
pub struct OwnedDir {
    path: PathBuf,
    _lock: File,
}

impl OwnedDir {
    /// Creates the directory `path` (and its parents), adopts it when it
    /// exists and is empty, or takes it when it carries the marker; refuses
    /// any other directory. Then locks it for `range`.
    pub fn claim(path: &Path, range: LockRange) -> Result<OwnedDir> {
        match fs::create_dir(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(path).map_err(Error::io(path))?
            }
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(Error::io(path)(e));
            }
            _ => {}
        }
        if !fs::symlink_metadata(path)
            .map_err(Error::io(path))?
            .is_dir()
        {
            return Err(Error::checkpoint(
                path,
                "is not a directory; pass a new or empty directory for the output",
            ));
        }
        let marker = path.join(MARKER_FILE);
        let lock = match open_marker(&marker) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => adopt(path, &marker)?,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(Error::checkpoint(
                    &marker,
                    "is a symbolic link; symprune never follows links inside its output, \
                     remove it",
                ))
            }
            Err(e) => return Err(Error::io(&marker)(e)),
        };
        let held = lock.metadata().map_err(Error::io(&marker))?;
        if !held.is_file() {
            return Err(Error::checkpoint(
                &marker,
                "is not a regular file; remove it",
            ));
        }
        if !try_lock(&lock, range).map_err(Error::io(&marker))? {
            return Err(Error::checkpoint(
                path,
                format!(
                    "another symprune run is writing this output directory (it holds the lock \
                     on {MARKER_FILE}); wait for it to finish, or choose another output directory"
                ),
            ));
        }
        // A run that replaced the directory meanwhile left this lock on a removed file.
        if FileId::entry(&marker) != Some(FileId::of(&held)) {
            return Err(Error::checkpoint(
                path,
                "was replaced by another symprune run while this one opened it; run again",
            ));
        }
        Ok(OwnedDir {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn open_marker(marker: &Path) -> io::Result<File> {
    // Opened for writing only because a write lock needs it; never written.
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(marker)
}

/// Writes the marker into the empty directory `dir`.
fn adopt(dir: &Path, marker: &Path) -> Result<File> {
    let found = entries(dir)?;
    if !found.is_empty() {
        // Another run (a peer rank) may have adopted it since our first look.
        if found
            .iter()
            .any(|n| n.as_os_str() == std::ffi::OsStr::new(MARKER_FILE))
        {
            return open_marker(marker).map_err(Error::io(marker));
        }
        return Err(Error::checkpoint(
            dir,
            format!(
                "exists and is not empty, and is not a symprune output (it has no {MARKER_FILE} \
                 marker; it holds {}); choose a new or empty output directory: overwrite \
                 (--overwrite) replaces only a directory that symprune wrote",
                some_names(&found)
            ),
        ));
    }
    match open_new(marker) {
        Ok(mut file) => {
            file.write_all(MARKER_TEXT.as_bytes())
                .and_then(|_| file.sync_all())
                .map_err(Error::io(marker))?;
            sync_dir(dir)?;
            Ok(file)
        }
        // Another run adopted it at the same moment; the lock decides.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            open_marker(marker).map_err(Error::io(marker))
        }
        Err(e) => Err(Error::io(marker)(e)),
    }
}

/// What an output must never be, be inside, contain or share a file with,
/// compared by identity: the input directory and its entries, and other
/// inputs (the statistics file).
#[derive(Debug, Default)]
pub struct Protected {
    /// Identity -> what it is and where it was found.
    ids: HashMap<FileId, (&'static str, PathBuf)>,
    /// Paths whose ancestors an output directory must not be.
    roots: Vec<(&'static str, PathBuf)>,
}

impl Protected {
    /// The input directory `dir` and every entry in it.
    pub fn input(dir: &Path) -> Result<Protected> {
        let mut p = Protected::default();
        let what = "the input directory";
        if let Some(id) = FileId::target(dir) {
            p.ids.insert(id, (what, dir.to_path_buf()));
        }
        p.roots.push((what, resolve(dir)));
        for name in entries(dir)? {
            let path = dir.join(name);
            let folder = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
            let what = if folder {
                "a folder of the input"
            } else {
                "the input file"
            };
            p.add(&path, what);
        }
        Ok(p)
    }

    /// Also protects the file `path`, described as `what`.
    pub fn with_file(mut self, path: &Path, what: &'static str) -> Self {
        self.add(path, what);
        self.roots.push((what, resolve(path)));
        self
    }

    /// An entry itself and, for a link to a regular file (as in the Hugging
    /// Face cache), the file it points to.
    fn add(&mut self, path: &Path, what: &'static str) {
        let Ok(meta) = fs::symlink_metadata(path) else {
            return;
        };
        let mut ids = vec![FileId::of(&meta)];
        if meta.file_type().is_symlink() {
            ids.extend(
                fs::metadata(path)
                    .ok()
                    .filter(|m| m.is_file())
                    .map(|m| FileId::of(&m)),
            );
        }
        for id in ids {
            self.ids.entry(id).or_insert((what, path.to_path_buf()));
        }
    }

    fn find(&self, id: Option<FileId>) -> Option<&(&'static str, PathBuf)> {
        self.ids.get(&id?)
    }

    /// Fails when the output directory `out` (resolved, existing or not) is a
    /// protected directory or inside one, contains a protected file, or holds
    /// one under another name (a hard link).
    pub fn check_dir(&self, out: &Path) -> Result<()> {
        // Outermost first: inside the input directory says more than inside one of its folders.
        let ancestors: Vec<&Path> = out.ancestors().collect();
        for dir in ancestors.into_iter().rev() {
            if let Some((what, p)) = self.find(FileId::target(dir)) {
                return Err(Error::checkpoint(
                    out,
                    format!(
                        "is {what} {} or inside it (compared by device and inode, so also \
                         through a bind mount or a link); the input is never modified, choose \
                         an output directory outside it",
                        p.display()
                    ),
                ));
            }
        }
        let Some(out_id) = FileId::target(out) else {
            return Ok(());
        };
        for (what, root) in &self.roots {
            if root.ancestors().any(|a| FileId::target(a) == Some(out_id)) {
                return Err(Error::checkpoint(
                    out,
                    format!(
                        "contains {what} {}; writing or overwriting there could replace or \
                         delete it, choose an output directory that does not hold the input",
                        root.display()
                    ),
                ));
            }
        }
        if !out.is_dir() {
            return Ok(()); // refused as a file by the caller
        }
        for name in entries(out)? {
            let path = out.join(name);
            if let Some((what, p)) = self.find(FileId::entry(&path)) {
                return Err(Error::checkpoint(
                    &path,
                    format!(
                        "is {what} {} under another name (a hard link: the same device and \
                         inode); writing here would change it, choose a new output directory",
                        p.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Fails when the output file `out` is a protected file (by either
    /// identity, the link or its target) or lies inside a protected directory.
    pub fn check_file(&self, out: &Path) -> Result<()> {
        let resolved = resolve(out);
        if resolved.is_dir() {
            return Err(Error::checkpoint(
                out,
                "is a directory; pass the name of the file to write",
            ));
        }
        for id in [FileId::entry(out), FileId::target(out)] {
            if let Some((what, p)) = self.find(id) {
                return Err(Error::checkpoint(
                    out,
                    format!(
                        "is {what} {} (compared by device and inode); writing it would \
                         replace the input, choose another file",
                        p.display()
                    ),
                ));
            }
        }
        for dir in resolved.ancestors().skip(1) {
            if let Some((what, p)) = self.find(FileId::target(dir)) {
                return Err(Error::checkpoint(
                    out,
                    format!(
                        "is inside {what} {}; the input is never modified, write the file \
                         outside it",
                        p.display()
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_files_never_follow_links() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, victim) = (tmp.path().join("out"), tmp.path().join("victim"));
        fs::create_dir(&dir).unwrap();
        fs::write(&victim, "keep").unwrap();
        // A dangling link at a temporary name, a link over the target.
        std::os::unix::fs::symlink(tmp.path().join("new"), temp_path(&dir, "a.json")).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("a.json")).unwrap();
        write_atomic(&dir, "a.json", b"{}").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert!(!tmp.path().join("new").exists());
        assert!(!fs::symlink_metadata(dir.join("a.json"))
            .unwrap()
            .is_symlink());
        assert_eq!(fs::read(dir.join("a.json")).unwrap(), b"{}");
        std::os::unix::fs::symlink(&victim, dir.join("b")).unwrap();
        assert!(create_new(&dir.join("b")).is_err());
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
    }

    #[test]
    fn an_output_is_claimed_once_and_only_when_ours() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("a/b");
        let first = OwnedDir::claim(&out, LockRange::Whole).unwrap();
        assert!(out.join(MARKER_FILE).is_file());
        let e = OwnedDir::claim(&out, LockRange::Whole)
            .unwrap_err()
            .to_string();
        assert!(e.contains("another symprune run is writing"), "{e}");
        drop(first);
        let (zero, one) = (
            OwnedDir::claim(&out, LockRange::Part(0)).unwrap(),
            OwnedDir::claim(&out, LockRange::Part(1)).unwrap(),
        );
        assert!(OwnedDir::claim(&out, LockRange::Part(1)).is_err());
        assert!(OwnedDir::claim(&out, LockRange::Whole).is_err());
        drop((zero, one));

        let busy = tmp.path().join("busy");
        fs::create_dir(&busy).unwrap();
        fs::write(busy.join("notes.txt"), "mine").unwrap();
        let e = OwnedDir::claim(&busy, LockRange::Whole)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not empty") && e.contains("notes.txt"), "{e}");
        assert!(!busy.join(MARKER_FILE).exists());
        let linked = tmp.path().join("linked");
        fs::create_dir(&linked).unwrap();
        std::os::unix::fs::symlink(busy.join("notes.txt"), linked.join(MARKER_FILE)).unwrap();
        let e = OwnedDir::claim(&linked, LockRange::Whole)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a symbolic link"), "{e}");
    }

    #[test]
    fn protected_files_are_recognized_by_identity() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("model");
        fs::create_dir(&input).unwrap();
        fs::write(input.join("config.json"), "{}").unwrap();
        let stats = tmp.path().join("s/stats.safetensors");
        fs::create_dir(tmp.path().join("s")).unwrap();
        fs::write(&stats, "x").unwrap();
        let p = Protected::input(&input)
            .unwrap()
            .with_file(&stats, "the statistics file");
        let err = |out: &Path| p.check_dir(&resolve(out)).unwrap_err().to_string();
        assert!(err(&input).contains("is the input directory"));
        assert!(err(&input.join("x/y")).contains("or inside it"));
        assert!(err(tmp.path()).contains("contains the input directory"));
        assert!(err(&tmp.path().join("s")).contains("contains the statistics file"));
        let linked = tmp.path().join("linked");
        fs::create_dir(&linked).unwrap();
        fs::hard_link(input.join("config.json"), linked.join("config.json")).unwrap();
        assert!(err(&linked).contains("a hard link"));
        let through = tmp.path().join("through");
        std::os::unix::fs::symlink(&input, &through).unwrap();
        assert!(err(&through).contains("is the input directory"));
        p.check_dir(&resolve(&tmp.path().join("fresh"))).unwrap();

        let file_err = |out: &Path| p.check_file(out).unwrap_err().to_string();
        assert!(file_err(&input.join("model.safetensors")).contains("inside the input"));
        assert!(file_err(&linked.join("config.json")).contains("is the input file"));
        assert!(file_err(&stats).contains("is the statistics file"));
        assert!(file_err(tmp.path()).contains("is a directory"));
        p.check_file(&tmp.path().join("stats2.safetensors"))
            .unwrap();
    }

    #[test]
    fn exchange_swaps_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        fs::create_dir(&a).unwrap();
        fs::create_dir(&b).unwrap();
        fs::write(a.join("f"), "a").unwrap();
        exchange(&a, &b, &tmp.path().join("spare")).unwrap();
        assert_eq!(fs::read(b.join("f")).unwrap(), b"a");
        assert!(!a.join("f").exists());
    }
}
