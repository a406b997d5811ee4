//! Which machine this is, to tell this VM's own state from state that came
//! with a captured image: `/etc/machine-id` (under the sandbox root), which
//! systemd makes anew on a VM's first boot from a prepared image.

use super::paths::SystemPaths;

pub const MACHINE_ID_FILE: &str = "/etc/machine-id";

/// This machine's id, or none when the file is missing, empty (an image
/// prepared for capture) or not a machine id.
pub fn machine_id(paths: &SystemPaths) -> Option<String> {
    let text = std::fs::read_to_string(paths.resolve(MACHINE_ID_FILE)).ok()?;
    let id = text.trim();
    let looks_right = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
    looks_right.then(|| id.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_id_is_read_trimmed_and_an_empty_or_odd_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let paths = SystemPaths::under(dir.path());
        assert_eq!(machine_id(&paths), None, "missing");
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        let file = dir.path().join("etc/machine-id");
        std::fs::write(&file, "").unwrap();
        assert_eq!(machine_id(&paths), None, "empty, as a prepared image leaves it");
        std::fs::write(&file, "uninitialized\n").unwrap();
        assert_eq!(machine_id(&paths), None);
        std::fs::write(&file, "0123456789ABCDEF0123456789abcdef\n").unwrap();
        assert_eq!(machine_id(&paths).as_deref(), Some("0123456789abcdef0123456789abcdef"));
    }
}
