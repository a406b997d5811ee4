//! A run's output: into its log file (off the async workers) and the journal.

use super::log;
use crate::core::journal::{self, Journal};
use crate::core::task;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

/// What systemd-run says at the end of a `--wait` run whose main process a
/// signal ended: systemd counts SIGTERM, SIGINT, SIGHUP and SIGPIPE as a
/// clean end and exits 0, so this line is the only word of it.
const SYSTEMD_KILLED: &str = "Main processes terminated with: code=killed/status=";

/// Reads the one pipe both stdout and stderr write to, line by line, into
/// the log (each line with its time) and the journal (under the script's own
/// identifier where journald is there, else in the agent's log). Returns the
/// signal systemd-run said ended the run, if it said one (`TERM`).
pub(super) async fn pump_output(
    output: std::os::fd::OwnedFd,
    mut log: Option<log::LogFile>,
    name: String,
    clock: crate::core::clock::SharedClock,
    journal: Option<Arc<Journal>>,
) -> Option<String> {
    let mut killed_by = None;
    let identifier = format!("pool-agent-script-{name}");
    let Ok(receiver) = tokio::net::unix::pipe::Receiver::from_owned_fd(output) else { return None };
    // The log file is written on a blocking thread fed by a bounded queue: a
    // disk that stalls loses lines (counted), never an async worker.
    let (lines, queued) = std::sync::mpsc::sync_channel::<(String, String)>(LOG_QUEUE);
    let writer = log.take().map(|mut log| {
        tokio::task::spawn_blocking(move || {
            for (at, text) in queued {
                let _ = log.line(&at, &text);
            }
        })
    });
    let mut dropped = 0u64;
    let mut reader = tokio::io::BufReader::new(receiver);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut reader).take(log::MAX_LINE_BYTES as u64).read_until(b'\n', &mut line).await;
        match read {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                if let Some(signal) = text.strip_prefix(SYSTEMD_KILLED) {
                    killed_by = Some(signal.trim().to_string());
                }
                if writer.is_some() && lines.try_send((stamp(clock.now()), text.to_string())).is_err() {
                    dropped += 1;
                }
                let fields = [
                    ("MESSAGE", text),
                    ("SYSLOG_IDENTIFIER", identifier.as_str()),
                    ("PRIORITY", journal::INFO),
                    ("POOL_AGENT_SCRIPT", name.as_str()),
                ];
                if journal.as_ref().is_none_or(|j| j.send(&fields).is_err()) {
                    tracing::info!(script = %name, "{text}");
                }
            }
        }
    }
    if dropped > 0 {
        tracing::warn!(script = %name, dropped, "the script's log file could not keep up; lines are in the journal only");
    }
    drop(lines);
    // Every line is in the file before the run's ending line is added.
    if let Some(writer) = writer {
        let _ = tokio::time::timeout(LOG_WRITE_DEADLINE, writer).await;
    }
    killed_by
}

/// Lines of output waiting for the log file's writer.
const LOG_QUEUE: usize = 4096;
/// A write to a script's log (local disk) takes no longer than this.
pub(super) const LOG_WRITE_DEADLINE: Duration = Duration::from_secs(5);

/// One line added to a script's log, on a blocking thread.
pub(super) async fn append_line(path: &std::path::Path, stamp: String, text: &str) {
    let (path, text) = (path.to_path_buf(), text.to_string());
    let written = task::blocking("writing a script's log", LOG_WRITE_DEADLINE, move || {
        log::LogFile::open(&path).and_then(|mut log| log.line(&stamp, &text))
    });
    if let Err(err) = written.await {
        tracing::warn!("script log: {err}");
    }
}

/// The same where nothing can wait for it (inside a report update).
pub(super) fn append_line_detached(path: std::path::PathBuf, stamp: String, text: String) {
    drop(tokio::task::spawn_blocking(move || {
        if let Ok(mut log) = log::LogFile::open(&path) {
            let _ = log.line(&stamp, &text);
        }
    }));
}

pub(super) fn stamp(at: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}
