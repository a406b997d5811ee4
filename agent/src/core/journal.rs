//! Entries for the systemd journal over its native socket, with fields of
//! our own: a setup script's output gets its own `SYSLOG_IDENTIFIER`, so
//! `journalctl -t pool-agent-script-<name>` shows that script alone (the
//! entries still carry pool-agentd's unit, added by journald).

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

/// Where journald takes native entries.
pub const SOCKET: &str = "/run/systemd/journal/socket";

/// `PRIORITY=` values used here (syslog levels).
pub const INFO: &str = "6";

#[derive(Debug)]
pub struct Journal {
    socket: UnixDatagram,
}

impl Journal {
    /// A writer to journald's socket at `path`; an error where there is none.
    pub fn connect(path: &Path) -> io::Result<Self> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(path)?;
        // A journald that cannot keep up loses lines here, not the caller's time.
        socket.set_nonblocking(true)?;
        Ok(Self { socket })
    }

    /// Sends one entry; `fields` are (NAME, value), NAME in journald's
    /// alphabet (A-Z, 0-9, _).
    pub fn send(&self, fields: &[(&str, &str)]) -> io::Result<()> {
        self.socket.send(&encode(fields)).map(|_| ())
    }
}

/// journald's native format: `NAME=value\n`, or for a value with a newline
/// `NAME\n`, its length as 64-bit little endian, the value and `\n`.
pub fn encode(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut entry = Vec::new();
    for (name, value) in fields {
        entry.extend_from_slice(name.as_bytes());
        if value.contains('\n') {
            entry.push(b'\n');
            entry.extend_from_slice(&(value.len() as u64).to_le_bytes());
        } else {
            entry.push(b'=');
        }
        entry.extend_from_slice(value.as_bytes());
        entry.push(b'\n');
    }
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads an entry as journald does.
    fn decode(mut entry: &[u8]) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        while !entry.is_empty() {
            let end = entry.iter().position(|b| *b == b'\n' || *b == b'=').unwrap();
            let name = String::from_utf8(entry[..end].to_vec()).unwrap();
            if entry[end] == b'=' {
                let rest = &entry[end + 1..];
                let stop = rest.iter().position(|b| *b == b'\n').unwrap();
                fields.push((name, String::from_utf8(rest[..stop].to_vec()).unwrap()));
                entry = &rest[stop + 1..];
            } else {
                let len = u64::from_le_bytes(entry[end + 1..end + 9].try_into().unwrap()) as usize;
                let value = &entry[end + 9..end + 9 + len];
                assert_eq!(entry[end + 9 + len], b'\n');
                fields.push((name, String::from_utf8(value.to_vec()).unwrap()));
                entry = &entry[end + 10 + len..];
            }
        }
        fields
    }

    #[test]
    fn an_entry_reaches_the_socket_with_its_fields_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let journald = UnixDatagram::bind(&path).unwrap();
        let journal = Journal::connect(&path).unwrap();
        let fields = [
            ("MESSAGE", "Collecting numpy=1.26 (from -r requirements.txt)"),
            ("SYSLOG_IDENTIFIER", "pool-agent-script-conda"),
            ("PRIORITY", INFO),
            ("POOL_AGENT_SCRIPT", "a value\nwith a newline"),
        ];
        journal.send(&fields).unwrap();
        let mut buffer = vec![0u8; 4096];
        let n = journald.recv(&mut buffer).unwrap();
        let got = decode(&buffer[..n]);
        let want: Vec<(String, String)> = fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn no_journald_is_an_error_at_connect_not_a_panic_later() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Journal::connect(&dir.path().join("none")).is_err());
    }
}
