//! The storage key: read from a root-only file, handed to mount.cifs through a
//! root-only credentials file that lives only as long as the mount call.
//! Never in argv, a child's environment, a log line or an API answer.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// A storage key. Its `Debug` says nothing, and its bytes are wiped on drop.
pub struct StorageKey(Zeroizing<String>);

impl StorageKey {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StorageKey(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the storage key file {path}: {source}")]
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
    #[error("storage key file {path} is empty")]
    Empty { path: String },
    #[error("storage key file {path} must hold the key on one line and nothing else")]
    Malformed { path: String },
}

/// Reads the key, refusing a file that others could read or that someone else owns.
pub fn read_key_file(path: &Path, expected_owner: u32) -> Result<StorageKey, KeyError> {
    let name = path.display().to_string();
    let meta = fs::symlink_metadata(path).map_err(|source| KeyError::Unreadable { path: name.clone(), source })?;
    if meta.file_type().is_symlink() {
        return Err(KeyError::Symlink { path: name });
    }
    if meta.uid() != expected_owner {
        return Err(KeyError::WrongOwner { path: name, owner: meta.uid(), expected: expected_owner });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::TooOpen { path: name, mode });
    }
    let text =
        Zeroizing::new(fs::read_to_string(path).map_err(|source| KeyError::Unreadable { path: name.clone(), source })?);
    let key = StorageKey(Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_string()));
    if key.0.is_empty() {
        return Err(KeyError::Empty { path: name });
    }
    if key.0.contains(['\n', '\r', '\0']) {
        return Err(KeyError::Malformed { path: name });
    }
    Ok(key)
}

/// A `credentials=` file for mount.cifs; removed when dropped.
pub struct CredentialsFile {
    path: PathBuf,
}

impl CredentialsFile {
    /// Writes `username=`/`password=` to a new 0600 file in `dir` (root-only /run/pool-agent).
    pub fn write(dir: &Path, username: &str, key: &StorageKey) -> io::Result<Self> {
        let path = Self::path_in(dir);
        match fs::remove_file(&path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
            _ => {}
        }
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
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
        let empty = key_file(dir.path(), "\n", 0o600);
        assert!(matches!(read_key_file(&empty, me()), Err(KeyError::Empty { .. })));
        let two = key_file(dir.path(), "a\nb\n", 0o600);
        assert!(matches!(read_key_file(&two, me()), Err(KeyError::Malformed { .. })));
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
