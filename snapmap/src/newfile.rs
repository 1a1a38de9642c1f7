//! Files that appear only when complete: exports and rebuilt images.
//!
//! An image is written unnamed (`O_TMPFILE`) in the directory it is meant for and linked to
//! its name only after its last byte is durable. A failed, interrupted or killed write then
//! leaves nothing behind, not even a partial file for the user to clean up; and because a
//! link never replaces an existing name, a file that appeared at the path meanwhile is never
//! overwritten. Filesystems without `O_TMPFILE` get a hidden, uniquely named sibling instead,
//! removed on failure (a killed process can leave that one behind, under a name that says
//! what it is).

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A regular file being written that gets its name at [`NewFile::persist`].
pub struct NewFile {
    file: File,
    path: PathBuf,
    /// The visible stand-in, where the filesystem has no unnamed files.
    temp: Option<PathBuf>,
}

/// The directory `path` will appear in.
fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

impl NewFile {
    /// Starts a file that will be named `path`. Fails with `AlreadyExists` if `path` exists
    /// now (it is checked again, atomically, at [`NewFile::persist`]).
    pub fn create(path: &Path) -> io::Result<NewFile> {
        Self::create_as(path, true)
    }

    fn create_as(path: &Path, unnamed: bool) -> io::Result<NewFile> {
        if path.symlink_metadata().is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} already exists", path.display()),
            ));
        }
        let dir = dir_of(path);
        let opened = if unnamed {
            OpenOptions::new()
                .read(true)
                .write(true)
                .mode(0o644)
                .custom_flags(libc::O_TMPFILE)
                .open(&dir)
        } else {
            Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
        };
        match opened {
            Ok(file) => Ok(NewFile {
                file,
                path: path.to_path_buf(),
                temp: None,
            }),
            // Filesystems (and kernels) without unnamed files answer one of these.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) | Some(libc::EINVAL)
                ) =>
            {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let temp = dir.join(format!(
                    ".{name}.snapblk-partial-{}",
                    uuid::Uuid::new_v4().simple()
                ));
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .open(&temp)?;
                Ok(NewFile {
                    file,
                    path: path.to_path_buf(),
                    temp: Some(temp),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// The file to write into.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Where the file will appear.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the contents durable, then gives the file its name (failing with
    /// `AlreadyExists`, and leaving nothing, if the name was taken meanwhile) and makes the
    /// name durable too.
    pub fn persist(mut self) -> io::Result<()> {
        self.file.sync_all()?;
        let to = cstr(&self.path)?;
        match self.temp.take() {
            None => {
                let fd = self.file.as_raw_fd();
                // SAFETY: valid descriptor and NUL-terminated paths that outlive the call.
                let direct = unsafe {
                    libc::linkat(
                        fd,
                        c"".as_ptr(),
                        libc::AT_FDCWD,
                        to.as_ptr(),
                        libc::AT_EMPTY_PATH,
                    )
                };
                if direct != 0 {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::ENOENT)
                        && e.raw_os_error() != Some(libc::EPERM)
                    {
                        return Err(e);
                    }
                    // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; the descriptor's /proc link
                    // does the same for anyone who may write the directory.
                    let via = cstr(Path::new(&format!("/proc/self/fd/{fd}")))?;
                    // SAFETY: as above.
                    let r = unsafe {
                        libc::linkat(
                            libc::AT_FDCWD,
                            via.as_ptr(),
                            libc::AT_FDCWD,
                            to.as_ptr(),
                            libc::AT_SYMLINK_FOLLOW,
                        )
                    };
                    if r != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
            }
            Some(temp) => {
                let linked = std::fs::hard_link(&temp, &self.path);
                let res = match linked {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
                    // No hard links here (some FUSE and FAT filesystems): a rename, which
                    // could replace a file created in the last moment, after a last look.
                    Err(_) if self.path.symlink_metadata().is_ok() => Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{} already exists", self.path.display()),
                    )),
                    Err(_) => std::fs::rename(&temp, &self.path),
                };
                let _ = std::fs::remove_file(&temp);
                res?;
            }
        }
        File::open(dir_of(&self.path))?.sync_all()
    }
}

impl Drop for NewFile {
    fn drop(&mut self) {
        if let Some(t) = self.temp.take() {
            let _ = std::fs::remove_file(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn entries(dir: &Path) -> Vec<std::ffi::OsString> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_file_appears_only_when_persisted_and_never_replaces_one() {
        for unnamed in [true, false] {
            appears_only_when_persisted(unnamed);
        }
    }

    fn appears_only_when_persisted(unnamed: bool) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let f = NewFile::create_as(&p, unnamed).unwrap();
        f.file().write_all_at(b"abc", 0).unwrap();
        assert!(!p.exists());
        assert_eq!(entries(dir.path()).len(), usize::from(!unnamed));
        f.persist().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"abc");

        // Taken before the start: refused at once.
        let e = NewFile::create(&p).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);

        // Taken while writing: the newcomer stays, the new file vanishes.
        let q = dir.path().join("other");
        let f = NewFile::create_as(&q, unnamed).unwrap();
        f.file().write_all_at(b"new", 0).unwrap();
        std::fs::write(&q, b"precious").unwrap();
        let e = f.persist().err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&q).unwrap(), b"precious");
        assert_eq!(entries(dir.path()), ["img", "other"]);
    }

    #[test]
    fn a_file_dropped_unpersisted_leaves_nothing() {
        for unnamed in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("img");
            // A sibling with the name an older scheme used as its scratch file is left alone.
            std::fs::write(dir.path().join("img.partial"), b"user data").unwrap();
            let f = NewFile::create_as(&p, unnamed).unwrap();
            f.file().write_all_at(&[1u8; 8192], 0).unwrap();
            drop(f);
            assert_eq!(entries(dir.path()), ["img.partial"]);
        }
    }
}
