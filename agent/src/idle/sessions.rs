//! Logged-in sessions from utmp (what sshd, login and xrdp record), each
//! active while its terminal had input recently: the terminal's access time,
//! as `w` shows it. Sessions without a terminal (VS Code Remote-SSH, scp,
//! sftp) are not in utmp; their connections and their CPU count instead.

use super::signal::{Sample, SignalState, Source};
use crate::core::paths::SystemPaths;
use futures_util::future::BoxFuture;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// glibc's `struct utmpx` on x86_64 and aarch64.
const RECORD: usize = 384;
const USER_PROCESS: i16 = 7;
/// Input this recent makes the session active now (older input still counts
/// from when it happened).
const RECENT_INPUT: Duration = Duration::from_secs(120);

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

pub struct Sessions {
    paths: Arc<SystemPaths>,
}

impl Sessions {
    pub fn new(paths: Arc<SystemPaths>) -> Self {
        Self { paths }
    }

    fn utmp(&self) -> PathBuf {
        self.paths.resolve("/run/utmp")
    }

    fn look(&self, now: SystemTime) -> Sample {
        let bytes = match std::fs::read(self.utmp()) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Sample::idle("no utmp: nobody logged in").with_figure("sessions", 0.0)
            }
            Err(err) => return Sample::unknown(format!("cannot read {}: {err}", self.utmp().display())),
        };
        // A record whose process is gone is a session that ended without logout.
        let sessions: Vec<Session> = parse_utmp(&bytes)
            .into_iter()
            .filter(|s| s.pid <= 0 || std::path::Path::new(&format!("/proc/{}", s.pid)).exists())
            .collect();
        if sessions.is_empty() {
            return Sample::idle("no sessions").with_figure("sessions", 0.0);
        }
        let mut latest: Option<SystemTime> = None;
        let mut reasons = Vec::new();
        let mut active = false;
        for session in &sessions {
            let tty = self.paths.resolve(format!("/dev/{}", session.line));
            let input = std::fs::metadata(&tty).ok().map(|m| {
                UNIX_EPOCH
                    + Duration::from_secs(m.atime().max(0) as u64)
                    + Duration::from_nanos(m.atime_nsec().max(0) as u64)
            });
            let kind = if session.host.is_empty() { "local" } else { "ssh" };
            let from = if session.host.is_empty() { String::new() } else { format!(" from {}", session.host) };
            match input {
                Some(at) => {
                    let ago = now.duration_since(at).unwrap_or_default();
                    latest = Some(latest.map_or(at, |l| l.max(at)));
                    if ago < RECENT_INPUT {
                        active = true;
                        reasons.push(format!(
                            "{kind} {} {}{from}, input {}s ago",
                            session.user,
                            session.line,
                            ago.as_secs()
                        ));
                    } else {
                        reasons.push(format!(
                            "{kind} {} {}{from}, no input for {}",
                            session.user,
                            session.line,
                            crate::config::duration::format(Duration::from_secs(ago.as_secs() / 60 * 60))
                        ));
                    }
                }
                None => reasons.push(format!("{kind} {} {}{from}, terminal not found", session.user, session.line)),
            }
        }
        let state = if active { SignalState::Active } else { SignalState::Idle };
        Sample { state, last_activity: latest, reasons, figures: Default::default() }
            .with_figure("sessions", sessions.len() as f64)
    }
}

impl Source for Sessions {
    fn name(&self) -> &'static str {
        "sessions"
    }

    fn sample(&mut self, now: SystemTime) -> BoxFuture<'_, Sample> {
        Box::pin(async move { self.look(now) })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::disallowed_methods)] // file times are real times
    fn a_session_is_active_while_its_terminal_had_recent_input() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = Arc::new(SystemPaths::under(tmp.path()));
        std::fs::create_dir_all(tmp.path().join("run")).unwrap();
        std::fs::create_dir_all(tmp.path().join("dev/pts")).unwrap();
        let me = std::process::id() as i32;
        let mut utmp = utmp_record("alice", "pts/3", "10.0.0.5", me);
        utmp.extend(utmp_record("bob", "pts/4", "", me));
        std::fs::write(tmp.path().join("run/utmp"), utmp).unwrap();
        let now = SystemTime::now();
        let set_atime = |line: &str, at: SystemTime| {
            let path = tmp.path().join("dev").join(line);
            std::fs::write(&path, "").unwrap();
            let file = std::fs::File::options().write(true).open(&path).unwrap();
            file.set_times(std::fs::FileTimes::new().set_accessed(at)).unwrap();
        };
        set_atime("pts/3", now - Duration::from_secs(10));
        set_atime("pts/4", now - Duration::from_secs(3600));
        let sample = Sessions::new(paths.clone()).look(now);
        assert_eq!(sample.state, SignalState::Active);
        assert_eq!(sample.figures["sessions"], 2.0);
        assert!(sample.reasons[0].starts_with("ssh alice pts/3 from 10.0.0.5, input 10s ago"), "{:?}", sample.reasons);
        assert!(sample.reasons[1].contains("bob pts/4, no input for 1h"), "{:?}", sample.reasons);
        // A forgotten terminal: the session is there, but it is idle since its last input.
        set_atime("pts/3", now - Duration::from_secs(1800));
        let sample = Sessions::new(paths).look(now);
        assert_eq!(sample.state, SignalState::Idle);
        assert_eq!(sample.last_activity.map(|t| now.duration_since(t).unwrap().as_secs()), Some(1800));
    }
}
