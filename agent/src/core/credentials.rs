//! The storage key: read from a root-only file, handed to mount.cifs through a
//! root-only credentials file that lives only as long as the mount call.
//! Never in argv, a child's environment, a log line or an API answer.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// A storage key. Its `Debug` says nothing, and its bytes (of every copy) are wiped on drop.
#[derive(Clone)]
pub struct StorageKey(Zeroizing<String>);

impl StorageKey {
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A key fetched from a service. One line and nothing else: it goes into
    /// a credentials file, where a line break would add a line of its own.
    pub fn fetched(text: Zeroizing<String>) -> Result<StorageKey, &'static str> {
        if text.trim().is_empty() {
            return Err("the key is empty");
        }
        if text.contains(['\n', '\r', '\0']) {
            return Err("the key is not one line");
        }
        Ok(StorageKey(text))
    }

    /// Whether two keys are the same (a rotated key differs).
    pub fn same_as(&self, other: &StorageKey) -> bool {
        *self.0 == *other.0
    }
}

impl fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StorageKey(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the storage key file {path}: {}", crate::config::io_text(source))]
    Unreadable {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("storage key file {path} is a symlink; point share.key_file at the file itself")]
    Symlink { path: String },
    #[error("storage key file {path} is owned by uid {owner}, not {expected}; chown it to root")]
    WrongOwner { path: String, owner: u32, expected: u32 },
    #[error("storage key file {path} is readable by group or others (mode {mode:04o}); run chmod 600 on it")]
    TooOpen { path: String, mode: u32 },
    #[error("storage key file {path} is not a regular file")]
    NotAFile { path: String },
    #[error("the storage key's directory {dir} is writable by group or others (mode {mode:04o}); run chmod 700 on it")]
    OpenDirectory { dir: String, mode: u32 },
    #[error("the storage key's directory {dir} is owned by uid {owner}, not by root; run chown root on it")]
    ForeignDirectory { dir: String, owner: u32 },
    #[error("storage key file {path} is empty")]
    Empty { path: String },
    #[error("storage key file {path} must hold the key on one line and nothing else")]
    Malformed { path: String },
}

/// Reads the key, refusing a file that others could read, that someone else
/// owns, or whose directory others could write (they could swap the file).
/// The file is opened once, without following a symlink, and every check is
/// made on the open descriptor, so it cannot be replaced between check and read.
pub fn read_key_file(path: &Path, expected_owner: u32) -> Result<StorageKey, KeyError> {
    use std::io::Read;
    let name = path.display().to_string();
    if let Some(dir) = path.parent() {
        let dir_meta = fs::metadata(dir).map_err(|source| KeyError::Unreadable { path: name.clone(), source })?;
        if dir_meta.uid() != expected_owner && dir_meta.uid() != 0 {
            return Err(KeyError::ForeignDirectory { dir: dir.display().to_string(), owner: dir_meta.uid() });
        }
        if dir_meta.mode() & 0o022 != 0 {
            return Err(KeyError::OpenDirectory { dir: dir.display().to_string(), mode: dir_meta.mode() & 0o7777 });
        }
    }
    let mut file = OpenOptions::new()
        .read(true)
        // O_NONBLOCK: a FIFO planted in its place must not hang the open.
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| match source.raw_os_error() {
            Some(libc::ELOOP) => KeyError::Symlink { path: name.clone() },
            _ => KeyError::Unreadable { path: name.clone(), source },
        })?;
    let meta = file.metadata().map_err(|source| KeyError::Unreadable { path: name.clone(), source })?;
    if !meta.file_type().is_file() {
        return Err(KeyError::NotAFile { path: name });
    }
    if meta.uid() != expected_owner {
        return Err(KeyError::WrongOwner { path: name, owner: meta.uid(), expected: expected_owner });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::TooOpen { path: name, mode });
    }
    let mut text = Zeroizing::new(String::new());
    file.read_to_string(&mut text).map_err(|source| KeyError::Unreadable { path: name.clone(), source })?;
    let key = StorageKey(Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_string()));
    if key.0.is_empty() {
        return Err(KeyError::Empty { path: name });
    }
    if key.0.contains(['\n', '\r', '\0']) {
        return Err(KeyError::Malformed { path: name });
    }
    Ok(key)
}

/// Root-only directory for credentials files that live as long as a mount call.
pub const PRIVATE_RUN_DIR: &str = "/run/pool-agent/private";

/// A `credentials=` file for mount.cifs; removed when dropped.
pub struct CredentialsFile {
    path: PathBuf,
}

impl CredentialsFile {
    /// Writes `username=`/`password=` to a new 0600 file in `dir`, a
    /// directory only the agent may enter (made 0700 here if it is not).
    pub fn write(dir: &Path, username: &str, key: &StorageKey) -> io::Result<Self> {
        Self::write_as(dir, "share.credentials", username, key)
    }

    /// The same under another file name, for another user of the key (one
    /// mount call at a time per name).
    pub fn write_as(dir: &Path, file_name: &str, username: &str, key: &StorageKey) -> io::Result<Self> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let dir_meta = fs::symlink_metadata(dir)?;
        if !dir_meta.is_dir() || dir_meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(io::Error::other(format!("{} is not a directory of the agent's own", dir.display())));
        }
        if dir_meta.mode() & 0o077 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
        let path = dir.join(file_name);
        match fs::remove_file(&path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
            _ => {}
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)?;
        let written = (|| {
            file.write_all(b"username=")?;
            file.write_all(username.as_bytes())?;
            file.write_all(b"\npassword=")?;
            file.write_all(key.expose().as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()
        })();
        let credentials = Self { path };
        written?;
        Ok(credentials)
    }

    /// Where the file lives while a mount call runs.
    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join("share.credentials")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for CredentialsFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn me() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    fn key_file(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let path = dir.join("storage-key");
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn reads_a_private_key_file_and_hides_it_in_debug() {
        let dir = tempfile::tempdir().unwrap();
        let key = read_key_file(&key_file(dir.path(), "s3cr3t==\n", 0o600), me()).unwrap();
        assert_eq!(key.expose(), "s3cr3t==");
        assert_eq!(format!("{key:?}"), "StorageKey(<redacted>)");
    }

    #[test]
    fn refuses_an_open_file_without_printing_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_key_file(&key_file(dir.path(), "s3cr3t==", 0o644), me()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("mode 0644") && text.contains("chmod 600"), "{text}");
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(!format!("{err:?}").contains("s3cr3t"));
    }

    #[test]
    fn refuses_a_foreign_owner_a_symlink_and_junk() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_file(dir.path(), "k", 0o600);
        assert!(matches!(read_key_file(&path, me() + 1), Err(KeyError::WrongOwner { .. })));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(matches!(read_key_file(&link, me()), Err(KeyError::Symlink { .. })));
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(matches!(
            read_key_file(&fifo, me()),
            Err(KeyError::NotAFile { .. }) | Err(KeyError::Unreadable { .. })
        ));
        let empty = key_file(dir.path(), "\n", 0o600);
        assert!(matches!(read_key_file(&empty, me()), Err(KeyError::Empty { .. })));
        let two = key_file(dir.path(), "a\nb\n", 0o600);
        assert!(matches!(read_key_file(&two, me()), Err(KeyError::Malformed { .. })));
    }

    #[test]
    fn a_key_in_a_directory_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_file(dir.path(), "k", 0o600);
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let err = read_key_file(&path, me()).unwrap_err();
        assert!(matches!(err, KeyError::OpenDirectory { mode: 0o777, .. }), "{err}");
        assert!(err.to_string().contains("chmod 700"), "{err}");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        // Someone else's directory (only root can hand one over to test it).
        if me() == 0 {
            std::os::unix::fs::chown(dir.path(), Some(4321), None).unwrap();
            let err = read_key_file(&path, me()).unwrap_err();
            assert!(matches!(err, KeyError::ForeignDirectory { owner: 4321, .. }), "{err}");
            assert!(err.to_string().contains("owned by uid 4321, not by root"), "{err}");
        }
    }

    #[test]
    fn the_credentials_directory_is_made_private() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("private");
        let key = read_key_file(&key_file(base.path(), "k3y", 0o600), me()).unwrap();
        let credentials = CredentialsFile::write(&dir, "acct", &key).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        drop(credentials);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let _again = CredentialsFile::write(&dir, "acct", &key).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700, "loosened modes are tightened");
    }

    #[test]
    fn credentials_file_is_private_and_goes_away() {
        let dir = tempfile::tempdir().unwrap();
        let key = read_key_file(&key_file(dir.path(), "k3y", 0o600), me()).unwrap();
        let path;
        {
            let credentials = CredentialsFile::write(dir.path(), "mystorage", &key).unwrap();
            path = credentials.path().to_path_buf();
            let meta = fs::metadata(&path).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
            assert_eq!(fs::read_to_string(&path).unwrap(), "username=mystorage\npassword=k3y\n");
        }
        assert!(!path.exists());
    }
}
