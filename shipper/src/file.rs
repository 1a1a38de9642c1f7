//! `file:///dir` target: the remote layout as plain files in a local directory.
//!
//! Publishing is atomic and never overwrites: the object is written to a hidden temp file
//! in the same directory, fsynced, hard-linked to its final name (`link` fails with EEXIST
//! instead of replacing, unlike `rename`), and the directory is fsynced before returning.
//! The peer receiver stores through this same type.

use crate::target::{Target, TargetError, TargetErrorKind, TargetResult};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// A directory holding the remote layout.
#[derive(Debug, Clone)]
pub struct FileTarget {
    root: PathBuf,
}

/// Refuses keys that could escape the root or collide with temp files.
pub(crate) fn validate_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 512 {
        return Err("key is empty or longer than 512 bytes".into());
    }
    for part in key.split('/') {
        if part.is_empty() || part.starts_with('.') {
            return Err(format!("key {key:?} has an empty or dot-leading component"));
        }
        if !part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(format!("key {key:?} has characters outside [A-Za-z0-9._-]"));
        }
    }
    Ok(())
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl FileTarget {
    /// Opens (creating if needed) the directory `root`.
    pub fn new(root: impl Into<PathBuf>) -> TargetResult<FileTarget> {
        let root = root.into();
        let t = FileTarget { root };
        fs::create_dir_all(&t.root).map_err(|e| {
            t.err(
                &t.root.display().to_string(),
                "create the target directory",
                e,
            )
        })?;
        Ok(t)
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
        let mut f = File::open(&path).map_err(|e| self.err(key, "open", e))?;
        let len = f.metadata().map_err(|e| self.err(key, "stat", e))?.len();
        if len > max_len {
            return Err(TargetError::new(
                TargetErrorKind::Permanent,
                format!("{}/{key}", self.id()),
                format!("object is {len} bytes, more than the {max_len} allowed for it; it is not a valid snapblk object"),
            ));
        }
        let mut buf = Vec::with_capacity(len as usize);
        f.read_to_end(&mut buf)
            .map_err(|e| self.err(key, "read", e))?;
        Ok(buf)
    }

    fn head(&self, key: &str) -> TargetResult<Option<u64>> {
        let path = self.path(key)?;
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
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

    #[test]
    fn put_new_never_overwrites_and_lists_sorted() {
        let d = tempfile::tempdir().unwrap();
        let t = FileTarget::new(d.path().join("r")).unwrap();
        t.put_new("segments/0000000000000001/a", b"one").unwrap();
        let e = t
            .put_new("segments/0000000000000001/a", b"two")
            .unwrap_err();
        assert_eq!(e.kind, TargetErrorKind::AlreadyExists);
        assert_eq!(t.get("segments/0000000000000001/a", 10).unwrap(), b"one");
        t.put_new("manifests/b", b"x").unwrap();
        assert_eq!(
            t.list("segments/").unwrap(),
            vec!["segments/0000000000000001/a".to_string()]
        );
        assert_eq!(t.list("").unwrap().len(), 2);
        assert_eq!(t.head("manifests/b").unwrap(), Some(1));
        assert_eq!(t.head("manifests/c").unwrap(), None);
        assert!(t.get("manifests/b", 0).is_err(), "size limit enforced");
        t.delete("manifests/b").unwrap();
        t.delete("manifests/b").unwrap();
        assert_eq!(t.head("manifests/b").unwrap(), None);
        // No temp files left behind.
        let names: Vec<_> = fs::read_dir(d.path().join("r/segments/0000000000000001"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn keys_cannot_escape_the_root() {
        let d = tempfile::tempdir().unwrap();
        let t = FileTarget::new(d.path()).unwrap();
        for k in ["../x", "/etc/passwd", "a//b", ".hidden", "a/../../b", "a b"] {
            assert!(t.put_new(k, b"x").is_err(), "{k}");
        }
    }
}
