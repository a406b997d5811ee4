//! utmp's records of logged-in users (glibc's `struct utmpx`), for terminals
//! logind does not know or where it does not run.

/// glibc's `struct utmpx` on x86_64 and aarch64.
const RECORD: usize = 384;
const USER_PROCESS: i16 = 7;
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    pub line: String,
    pub host: String,
    pub pid: i32,
}

fn text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The user-process records of a utmp file.
pub fn parse_utmp(bytes: &[u8]) -> Vec<Session> {
    bytes
        .chunks_exact(RECORD)
        .filter(|r| i16::from_ne_bytes([r[0], r[1]]) == USER_PROCESS)
        .map(|r| Session {
            pid: i32::from_ne_bytes([r[4], r[5], r[6], r[7]]),
            line: text(&r[8..40]),
            user: text(&r[44..76]),
            host: text(&r[76..332]),
        })
        .filter(|s| !s.user.is_empty())
        .collect()
}

/// Writes utmp records: for tests of this source and of the daemon.
pub fn utmp_record(user: &str, line: &str, host: &str, pid: i32) -> Vec<u8> {
    let mut record = vec![0u8; RECORD];
    record[0..2].copy_from_slice(&USER_PROCESS.to_ne_bytes());
    record[4..8].copy_from_slice(&pid.to_ne_bytes());
    record[8..8 + line.len().min(32)].copy_from_slice(&line.as_bytes()[..line.len().min(32)]);
    record[44..44 + user.len().min(32)].copy_from_slice(&user.as_bytes()[..user.len().min(32)]);
    record[76..76 + host.len().min(256)].copy_from_slice(&host.as_bytes()[..host.len().min(256)]);
    record
}
