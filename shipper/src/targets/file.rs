//! `file:///dir` target: the remote layout as plain files in a local directory.
//!
//! Publishing is atomic and never overwrites: the object is written to a hidden temp file
//! in the same directory, fsynced, hard-linked to its final name (`link` fails with EEXIST
//! instead of replacing, unlike `rename`), and the directory is fsynced before returning.
//! The peer receiver stores through this same type.

use super::{validate_key, Target, TargetError, TargetErrorKind, TargetResult};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A directory holding the remote layout.
#[derive(Debug, Clone)]
pub struct FileTarget {
    root: PathBuf,
}

/// Reads `r` to its end, but never more than `max_len + 1` bytes: `None` when it holds more
/// than `max_len`. `hint` (the expected length) only sizes the buffer.
fn read_bounded(r: impl Read, hint: u64, max_len: u64) -> io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(hint.min(max_len) as usize);
    r.take(max_len.saturating_add(1)).read_to_end(&mut buf)?;
    Ok((buf.len() as u64 <= max_len).then_some(buf))
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl FileTarget {
    /// Opens the directory `root` for shipping, creating it when it is missing — but only
    /// it: its parent must exist. A typo in the URL, or a backup disk that is not mounted,
    /// then fails here instead of silently filling a new tree on the wrong disk.
    pub fn new(root: impl Into<PathBuf>) -> TargetResult<FileTarget> {
        let t = FileTarget { root: root.into() };
        match fs::metadata(&t.root) {
            Ok(m) if m.is_dir() => return Ok(t),
            Ok(_) => return Err(t.not_a_directory()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(t.root_err("inspect the target directory", e)),
        }
        let parent = match t.root.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = t
            .root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match fs::metadata(&parent) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(TargetError::new(
                    TargetErrorKind::Permanent,
                    t.url(),
                    format!(
                        "{} is not a directory; name a target directory inside an existing directory",
                        parent.display()
                    ),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(TargetError::new(
                    TargetErrorKind::NotFound,
                    t.url(),
                    format!(
                        "parent directory {} does not exist; check the URL and that the disk holding it is mounted, or create it first (shipping creates only the last directory, {name:?})",
                        parent.display()
                    ),
                ))
            }
            Err(e) => return Err(t.root_err("inspect the parent directory", e)),
        }
        match fs::create_dir(&t.root) {
            Ok(()) => {}
            // Created meanwhile by someone else: fine if it is a directory.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && t.root.is_dir() => return Ok(t),
            Err(e) => return Err(t.root_err("create the target directory", e)),
        }
        fsync_dir(&parent).map_err(|e| t.root_err("fsync the parent directory", e))?;
        Ok(t)
    }

    /// Opens the existing directory `root` for reading (list, verify, restore, prune):
    /// creates nothing and fails, naming the URL, when the directory is missing.
    pub fn open(root: impl Into<PathBuf>) -> TargetResult<FileTarget> {
        let t = FileTarget { root: root.into() };
        match fs::metadata(&t.root) {
            Ok(m) if m.is_dir() => Ok(t),
            Ok(_) => Err(t.not_a_directory()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(TargetError::new(
                TargetErrorKind::NotFound,
                t.url(),
                "no such directory: nothing has been shipped there; check the URL and that the disk holding it is mounted",
            )),
            Err(e) => Err(t.root_err("open the target directory", e)),
        }
    }

    /// The target as given (not canonicalized: it may not exist yet).
    fn url(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn not_a_directory(&self) -> TargetError {
        TargetError::new(
            TargetErrorKind::Permanent,
            self.url(),
            format!(
                "{} exists and is not a directory; a file:// target is a directory: write file:///path/to/dir",
                self.root.display()
            ),
        )
    }

    fn root_err(&self, op: &str, e: io::Error) -> TargetError {
        TargetError::new(
            TargetErrorKind::Permanent,
            self.url(),
            format!("{op}: {e}; check the path and its permissions"),
        )
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn err(&self, key: &str, op: &str, e: io::Error) -> TargetError {
        let kind = match e.kind() {
            io::ErrorKind::NotFound => TargetErrorKind::NotFound,
            io::ErrorKind::AlreadyExists => TargetErrorKind::AlreadyExists,
            io::ErrorKind::Interrupted | io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                TargetErrorKind::Transient
            }
            _ => TargetErrorKind::Permanent,
        };
        let fix = match kind {
            TargetErrorKind::Permanent => {
                "; check permissions and free space of the target directory"
            }
            _ => "",
        };
        TargetError::new(
            kind,
            format!("{}/{key}", self.id()),
            format!("{op}: {e}{fix}"),
        )
    }

    fn not_regular(&self, key: &str, what: &str) -> TargetError {
        TargetError::new(
            TargetErrorKind::Permanent,
            format!("{}/{key}", self.id()),
            format!("{what}; only regular files are read as objects: remove it (and re-ship) or restore from another point"),
        )
    }

    fn path(&self, key: &str) -> TargetResult<PathBuf> {
        validate_key(key).map_err(|d| {
            TargetError::new(
                TargetErrorKind::Permanent,
                format!("{}/{key}", self.id()),
                d,
            )
        })?;
        Ok(self.root.join(key))
    }

    /// Creates missing parent directories of `path`, making each new entry durable.
    fn ensure_parent(&self, key: &str, path: &Path) -> TargetResult<()> {
        let Some(parent) = path.parent() else {
            return Ok(());
        };
        if parent.is_dir() {
            return Ok(());
        }
        let mut missing = Vec::new();
        let mut p = parent;
        while !p.is_dir() && p.starts_with(&self.root) {
            missing.push(p.to_path_buf());
            match p.parent() {
                Some(pp) => p = pp,
                None => break,
            }
        }
        for dir in missing.iter().rev() {
            match fs::create_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(self.err(key, "create directory", e)),
            }
            if let Some(up) = dir.parent() {
                fsync_dir(up).map_err(|e| self.err(key, "fsync directory", e))?;
            }
        }
        Ok(())
    }

    fn walk(&self, dir: &Path, rel: &str, depth: u32, out: &mut Vec<String>) -> io::Result<()> {
        // The layout is at most three levels deep; the bound keeps a hostile tree finite.
        if depth > 4 {
            return Ok(());
        }
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') {
                continue;
            }
            let key = if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            };
            let ft = entry.file_type()?;
            if ft.is_dir() {
                self.walk(&entry.path(), &key, depth + 1, out)?;
            } else if ft.is_file() {
                out.push(key);
            }
        }
        Ok(())
    }
}

impl Target for FileTarget {
    fn id(&self) -> String {
        let abs = fs::canonicalize(&self.root).unwrap_or_else(|_| self.root.clone());
        format!("file://{}", abs.display())
    }

    fn put_new(&self, key: &str, data: &[u8]) -> TargetResult<()> {
        let path = self.path(key)?;
        self.ensure_parent(key, &path)?;
        let dir = path.parent().unwrap_or(&self.root);
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("obj");
        let mut rnd = [0u8; 8];
        getrandom::getrandom(&mut rnd).map_err(|e| {
            TargetError::new(
                TargetErrorKind::Permanent,
                key,
                format!("no randomness: {e}"),
            )
        })?;
        let tmp = dir.join(format!(".{name}.tmp-{}", hex::encode(rnd)));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(|e| self.err(key, "create temp file", e))?;
            f.write_all(data).map_err(|e| self.err(key, "write", e))?;
            f.sync_all().map_err(|e| self.err(key, "fsync", e))?;
            drop(f);
            // link() refuses an existing name: never overwrite a published object.
            fs::hard_link(&tmp, &path).map_err(|e| self.err(key, "publish (link)", e))?;
            fsync_dir(dir).map_err(|e| self.err(key, "fsync directory", e))
        })();
        let _ = fs::remove_file(&tmp);
        result
    }

    fn get(&self, key: &str, max_len: u64) -> TargetResult<Vec<u8>> {
        let path = self.path(key)?;
        // O_NOFOLLOW: an object is a regular file, never a link planted to make us read
        // something else; O_NONBLOCK: opening a FIFO planted under an object's name must
        // not hang (it is refused below as not a regular file).
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => self.not_regular(key, "a symbolic link"),
                _ => self.err(key, "open", e),
            })?;
        let meta = f.metadata().map_err(|e| self.err(key, "stat", e))?;
        if !meta.is_file() {
            return Err(self.not_regular(key, "not a regular file"));
        }
        let too_big = |len: String| {
            TargetError::new(
                TargetErrorKind::Permanent,
                format!("{}/{key}", self.id()),
                format!("object is {len} bytes, more than the {max_len} allowed for it; it is not a valid snapblk object: remove it, or prune the point it belongs to"),
            )
        };
        if meta.len() > max_len {
            return Err(too_big(meta.len().to_string()));
        }
        // The size can change between the stat and the read (a file being appended to):
        // the read is bounded too, so memory stays bounded either way.
        match read_bounded(&f, meta.len(), max_len).map_err(|e| self.err(key, "read", e))? {
            Some(buf) => Ok(buf),
            None => Err(too_big(format!("more than {max_len}"))),
        }
    }

    fn head(&self, key: &str) -> TargetResult<Option<u64>> {
        let path = self.path(key)?;
        // Not following links, like `get`: what `head` reports is what `get` would read.
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(m) if m.file_type().is_symlink() => Err(self.not_regular(key, "a symbolic link")),
            Ok(_) => Err(self.not_regular(key, "not a regular file")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(key, "stat", e)),
        }
    }

    fn list(&self, prefix: &str) -> TargetResult<Vec<String>> {
        let mut out = Vec::new();
        // Only descend into the top-level directory the prefix names, if any.
        let top = prefix.split('/').next().unwrap_or("");
        let (start, rel) = if prefix.contains('/') && !top.is_empty() && validate_key(top).is_ok() {
            (self.root.join(top), top.to_string())
        } else {
            (self.root.clone(), String::new())
        };
        match self.walk(&start, &rel, 0, &mut out) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.err(prefix, "list", e)),
        }
        out.retain(|k| k.starts_with(prefix));
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &str) -> TargetResult<()> {
        let path = self.path(key)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.err(key, "delete", e)),
        }
        let dir = path.parent().unwrap_or(&self.root);
        fsync_dir(dir).map_err(|e| self.err(key, "fsync directory", e))?;
        // Drop an emptied per-point segment directory; failure (not empty) is fine.
        if dir != self.root && fs::remove_dir(dir).is_ok() {
            if let Some(up) = dir.parent() {
                let _ = fsync_dir(up);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The contract (round trip, never overwrite, not-found, list, delete, key shape) is
    // checked for every backend by tests/conformance.rs; what follows is file:// only.

    #[test]
    fn publishing_leaves_no_temp_files_behind() {
        let d = tempfile::tempdir().unwrap();
        let t = FileTarget::new(d.path().join("r")).unwrap();
        t.put_new("segments/0000000000000001/a", b"one").unwrap();
        assert!(t.put_new("segments/0000000000000001/a", b"two").is_err());
        let names: Vec<_> = fs::read_dir(d.path().join("r/segments/0000000000000001"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn reads_are_bounded_even_when_the_source_never_ends() {
        // An endless source (a file that keeps growing after the stat) stops one byte past
        // the limit instead of filling memory.
        assert_eq!(read_bounded(io::repeat(7), 10, 1000).unwrap(), None);
        assert_eq!(
            read_bounded(&b"abc"[..], 3, 3).unwrap().as_deref(),
            Some(&b"abc"[..])
        );
        assert_eq!(read_bounded(&b"abcd"[..], 0, 3).unwrap(), None);
    }

    #[test]
    fn get_refuses_links_fifos_and_oversized_objects() {
        let d = tempfile::tempdir().unwrap();
        let t = FileTarget::new(d.path().join("r")).unwrap();
        t.put_new("manifests/a", b"0123456789").unwrap();
        let secret = d.path().join("secret");
        fs::write(&secret, b"not yours").unwrap();
        std::os::unix::fs::symlink(&secret, d.path().join("r/manifests/link")).unwrap();
        let e = t.get("manifests/link", 100).unwrap_err();
        assert!(e.detail.contains("symbolic link"), "{e}");
        assert!(
            t.head("manifests/link").is_err(),
            "head does not follow links either"
        );
        let fifo = std::ffi::CString::new(
            d.path()
                .join("r/manifests/fifo")
                .as_os_str()
                .as_encoded_bytes(),
        )
        .unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        // Would block forever without O_NONBLOCK (no writer ever opens the FIFO).
        let e = t.get("manifests/fifo", 100).unwrap_err();
        assert!(e.detail.contains("not a regular file"), "{e}");
        let e = t.get("manifests/a", 9).unwrap_err();
        assert!(e.detail.contains("more than the 9 allowed"), "{e}");
        assert_eq!(t.get("manifests/a", 10).unwrap(), b"0123456789");
    }

    #[test]
    fn shipping_creates_only_the_last_directory_and_reading_creates_nothing() {
        let d = tempfile::tempdir().unwrap();
        // Reading a missing target: an error naming it, and nothing created.
        let e = FileTarget::open(d.path().join("nope")).unwrap_err();
        assert_eq!(e.kind, TargetErrorKind::NotFound);
        assert!(
            e.object.ends_with("/nope") && e.detail.contains("nothing has been shipped"),
            "{e}"
        );
        assert!(!d.path().join("nope").exists());
        // Shipping into a missing parent: an error naming the parent, nothing created.
        let e = FileTarget::new(d.path().join("a/b/c")).unwrap_err();
        let parent = d.path().join("a/b").display().to_string();
        assert!(
            e.detail.contains(&parent) && e.detail.contains("\"c\""),
            "{e}"
        );
        assert!(!d.path().join("a").exists());
        // The last directory is created, then opened as it is.
        FileTarget::new(d.path().join("a")).unwrap();
        assert!(d.path().join("a").is_dir());
        FileTarget::new(d.path().join("a")).unwrap();
        FileTarget::open(d.path().join("a")).unwrap();
        // A regular file is not a target: one clear sentence, no doubled path.
        fs::write(d.path().join("f.img"), b"x").unwrap();
        for e in [
            FileTarget::new(d.path().join("f.img")).unwrap_err(),
            FileTarget::open(d.path().join("f.img")).unwrap_err(),
        ] {
            let msg = e.to_string();
            assert!(msg.contains("is not a directory"), "{msg}");
            assert_eq!(msg.matches("f.img").count(), 2, "{msg}");
        }
    }
}
