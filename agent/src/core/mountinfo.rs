//! `/proc/self/mountinfo`: what is mounted where, so a mount is adopted,
//! never stacked, and a foreign filesystem is reported as a conflict.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The path inside the mounted filesystem that appears here (bind mounts).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
    pub super_options: String,
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let value = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fields: Vec<&str> = before.split(' ').collect();
            let tail: Vec<&str> = after.split(' ').collect();
            if fields.len() < 6 || tail.len() < 3 {
                return None;
            }
            Some(MountEntry {
                root: PathBuf::from(unescape(fields[3])),
                mount_point: PathBuf::from(unescape(fields[4])),
                fstype: tail[0].to_string(),
                source: unescape(tail[1]),
                super_options: tail[2].to_string(),
            })
        })
        .collect()
}

/// The mount that is visible at `path` now: the last one listed there.
pub fn top_mount_at<'a>(entries: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    entries.iter().rev().find(|entry| entry.mount_point == path)
}

pub fn read() -> std::io::Result<Vec<MountEntry>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
43 22 0:40 / /data/notebooks rw,relatime shared:20 - cifs //127.0.0.1/notebooks rw,vers=3.1.1,cache=strict,username=poolstore,uid=0
44 22 0:41 / /mnt/with\\040space rw - tmpfs none rw
45 22 254:0 /srv/share /data/local rw,relatime - ext4 /dev/vda rw
46 43 0:42 / /data/notebooks rw - nfs4 127.0.0.1:/srv/nfs rw,vers=4.1
";

    #[test]
    fn parses_fields_and_escapes() {
        let entries = parse(SAMPLE);
        assert_eq!(entries.len(), 5);
        assert_eq!(entries[1].fstype, "cifs");
        assert_eq!(entries[1].source, "//127.0.0.1/notebooks");
        assert_eq!(entries[2].mount_point, PathBuf::from("/mnt/with space"));
        assert_eq!(entries[3].root, PathBuf::from("/srv/share"));
    }

    #[test]
    fn the_top_mount_wins() {
        let entries = parse(SAMPLE);
        let top = top_mount_at(&entries, Path::new("/data/notebooks")).unwrap();
        assert_eq!(top.fstype, "nfs4");
        assert!(top_mount_at(&entries, Path::new("/nowhere")).is_none());
    }
}
