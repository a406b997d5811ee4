//! One run of one script: its record first, then the processes under their
//! timeout, the output, how it ended, and everything it left stopped.

use super::*;

impl Batch {
    /// Runs one script to its end: record first, then the processes, the
    /// log, the record of how it ended, the log on the share.
    pub(super) async fn execute(&self, settings: &Arc<Settings>, item: &Planned) {
        let Ok(vetted) = &item.verdict else { return };
        let script = &item.script;
        let name = script.name.clone();
        let started_at = self.ctx.clock.now();
        let started = rfc3339(started_at);
        let began = Instant::now();
        let grace = (script.timeout / 10).clamp(Duration::from_secs(1), MAX_GRACE);
        // Where users reach the share (the mount point while it is down).
        let share_path = match self.ctx.shared.share() {
            ShareNews::Mounted { root, .. } => Some(root),
            _ => self.share_root(settings),
        };
        let instance = self.ctx.shared.instance_name();
        let lang = plan::system_lang(&self.ctx.paths);
        let facts = plan::EnvFacts { instance: &instance, share_path: share_path.as_deref(), settings, lang };
        let job = Job {
            name: name.clone(),
            program: vetted.program.clone(),
            args: script.args.clone(),
            workdir: vetted.workdir.clone(),
            env: plan::environment(script, &vetted.account, &facts),
            account: vetted.account.clone(),
            groups: vetted.groups.clone(),
            timeout: script.timeout,
            grace,
        };
        let mut record = RunRecord::running(&vetted.content_hash, &self.host, &started);
        self.store(&name, &record).await;
        let log_path = self.log_path(&name);
        let header = format!(
            "[pool-agent] run of {} as {} ({} runner, timeout {}) started",
            script.path.display(),
            vetted.account.name,
            self.runner.kind(),
            crate::config::duration::format(script.timeout)
        );
        let opened = {
            let (path, started, header) = (log_path.clone(), stamp(self.ctx.clock.now()), header.clone());
            task::blocking("opening a script's log", LOG_WRITE_DEADLINE, move || {
                log::LogFile::open(&path).and_then(|mut log| log.line(&started, &header).map(|_| log))
            })
            .await
        };
        let log = match opened {
            Ok(Ok(log)) => Some(log),
            Ok(Err(err)) => {
                tracing::warn!(script = %name, "cannot write {}: {err}", log_path.display());
                None
            }
            Err(err) => {
                tracing::warn!(script = %name, "cannot write {}: {err}", log_path.display());
                None
            }
        };
        tracing::info!(script = %name, "{header}");
        let runner = self.runner.clone();
        let launch_job = job.clone();
        let launched = task::blocking("starting the script", LAUNCH_DEADLINE, move || runner.launch(&launch_job)).await;
        let launched = match launched {
            Ok(Ok(launched)) => launched,
            Ok(Err(err)) => return self.finish_unstarted(&name, record, format!("cannot start: {err}")).await,
            Err(err) => return self.finish_unstarted(&name, record, err.to_string()).await,
        };
        record.pid = launched.pid;
        record.pid_start = launched.pid_start;
        record.unit = match &launched.handle {
            Handle::Unit(unit) => Some(unit.clone()),
            Handle::ProcessGroup(_) => None,
        };
        self.store(&name, &record).await;
        self.scripts.update_script(&name, |row| {
            row.state = ScriptState::Running;
            row.reason = None;
            row.pid = launched.pid;
            row.unit = record.unit.clone();
            row.started = Some(started.clone());
            row.finished = None;
            row.exit_code = None;
            row.signal = None;
            row.duration_seconds = Some(0.0);
            row.content_hash = vetted.content_hash.clone();
        });
        self.publish_running(Some(&name));
        self.publish_board();
        let Launched { mut child, output, handle, .. } = launched;
        let pump = tokio::spawn(pump_output(output, log, name.clone(), self.ctx.clock.clone(), self.journal.clone()));
        if let Handle::Unit(unit) = &handle {
            let unit = unit.clone();
            let (scripts, name) = (self.scripts.clone(), name.clone());
            tokio::spawn(async move {
                // The main pid is known once systemd started the unit.
                tokio::time::sleep(Duration::from_millis(500)).await;
                if let Ok(Some(pid)) =
                    task::blocking("asking systemd", Duration::from_secs(5), move || runner::unit_main_pid(&unit)).await
                {
                    scripts.update_script(&name, |row| {
                        if row.state == ScriptState::Running {
                            row.pid = Some(pid);
                        }
                    });
                }
            });
        }
        enum End {
            Exited(std::io::Result<std::process::ExitStatus>),
            TimedOut,
            Shutdown,
        }
        let end = tokio::select! {
            status = child.wait() => End::Exited(status),
            _ = tokio::time::sleep(script.timeout) => End::TimedOut,
            _ = self.ctx.shutdown.cancelled() => End::Shutdown,
        };
        let status = match end {
            End::Exited(status) => Some(status),
            End::TimedOut => {
                let note = format!(
                    "[pool-agent] timeout of {} reached: SIGTERM to every process of the script, SIGKILL after {}",
                    crate::config::duration::format(script.timeout),
                    crate::config::duration::format(grace)
                );
                tracing::warn!(script = %name, "{note}");
                append_line(&log_path, stamp(self.ctx.clock.now()), &note).await;
                self.stop_all(&handle, grace).await;
                let _ = tokio::time::timeout(grace, child.wait()).await;
                None
            }
            End::Shutdown => {
                // The record stays `running`: the next start reports it interrupted and runs it again.
                let runner = self.runner.clone();
                let stop = handle.clone();
                let _ = task::blocking("stopping the script", Duration::from_secs(2), move || {
                    runner.signal_all(&stop, Signal::SIGKILL)
                })
                .await;
                pump.abort();
                self.runner.finished(&job);
                return;
            }
        };
        // Output still coming after the exit is a leftover holding stdout:
        // stop what is left, so nothing outlives the run and the runner never hangs.
        let mut pump = pump;
        let drained = tokio::time::timeout(OUTPUT_DRAIN, &mut pump).await;
        let killed_by = match &drained {
            Ok(Ok(killed_by)) if self.runner.kind() == "systemd" => killed_by.clone(),
            _ => None,
        };
        let drained = drained.is_ok();
        let leftovers = self.any_left(&handle).await;
        if leftovers {
            self.stop_all(&handle, grace).await;
        }
        if !drained {
            let _ = tokio::time::timeout(Duration::from_secs(1), &mut pump).await;
            pump.abort();
        }
        self.runner.finished(&job);
        let duration = began.elapsed();
        let (outcome, exit_code, signal) = match status {
            None => (Outcome::TimedOut, None, Some("SIGTERM".to_string())),
            // systemd calls a SIGTERM'd run a success; it is not one.
            Some(Ok(status)) if status.success() && killed_by.is_some() => {
                (Outcome::Failed, None, killed_by.map(|name| format!("SIG{name}")))
            }
            Some(Ok(status)) => exit_of(status),
            Some(Err(err)) => {
                tracing::warn!(script = %name, "cannot wait for the script: {err}");
                (Outcome::Failed, None, None)
            }
        };
        record.outcome = outcome;
        record.exit_code = exit_code;
        record.signal = signal.clone();
        record.finished = Some(rfc3339(self.ctx.clock.now()));
        record.duration_seconds = Some((duration.as_secs_f64() * 1000.0).round() / 1000.0);
        let mut ending = format!(
            "[pool-agent] run ended: {}{} after {:.1}s",
            outcome_word(outcome),
            failure_detail(&record),
            duration.as_secs_f64()
        );
        if leftovers {
            ending.push_str("; processes it left running were stopped");
        }
        append_line(&log_path, stamp(self.ctx.clock.now()), &ending).await;
        if outcome == Outcome::Succeeded {
            tracing::info!(script = %name, "{ending}");
        } else {
            tracing::warn!(script = %name, "{ending}");
        }
        // The row before the record: whoever sees the run recorded as ended
        // (the file) may ask for the next one, and must not be told it runs.
        let state = match outcome {
            Outcome::Succeeded => ScriptState::Succeeded,
            Outcome::Failed => ScriptState::Failed,
            Outcome::TimedOut => ScriptState::TimedOut,
            Outcome::Running => ScriptState::Interrupted,
        };
        self.scripts.update_script(&name, |row| {
            row.state = state;
            row.reason = (state != ScriptState::Succeeded).then(|| {
                format!("{}{}; see `pool-agent scripts log {name}`", outcome_word(outcome), failure_detail(&record))
            });
            row.pid = None;
            row.finished = record.finished.clone();
            row.duration_seconds = record.duration_seconds;
            row.exit_code = exit_code;
            row.signal = signal;
        });
        self.publish_running(None);
        self.store(&name, &record).await;
        self.copy_log(&name).await;
    }

    async fn finish_unstarted(&self, name: &str, mut record: RunRecord, why: String) {
        tracing::error!(script = %name, "{why}");
        append_line(&self.log_path(name), stamp(self.ctx.clock.now()), &format!("[pool-agent] {why}")).await;
        record.outcome = Outcome::Failed;
        record.finished = Some(rfc3339(self.ctx.clock.now()));
        self.store(name, &record).await;
        self.scripts.update_script(name, |row| {
            row.state = ScriptState::Failed;
            row.reason = Some(why);
            row.finished = record.finished.clone();
        });
        self.publish_running(None);
    }

    pub(super) async fn store(&self, name: &str, record: &RunRecord) {
        let (records, name, record) = (self.records.clone(), name.to_string(), record.clone());
        let what = format!("recording the run of {name}");
        match task::blocking(&what, Duration::from_secs(10), move || records.store(&name, &record)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::error!("{what}: {err}"),
            Err(err) => tracing::error!("{err}"),
        }
    }

    async fn any_left(&self, handle: &Handle) -> bool {
        let (runner, handle) = (self.runner.clone(), handle.clone());
        task::blocking("looking for leftovers", Duration::from_secs(5), move || runner.any_left(&handle))
            .await
            .unwrap_or(true)
    }

    /// SIGTERM to every process of the run; SIGKILL to what is left after `grace`.
    async fn stop_all(&self, handle: &Handle, grace: Duration) {
        let signal = |signal: Signal| {
            let (runner, handle) = (self.runner.clone(), handle.clone());
            task::blocking("signalling the script", Duration::from_secs(5), move || runner.signal_all(&handle, signal))
        };
        let _ = signal(Signal::SIGTERM).await;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.any_left(handle).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = signal(Signal::SIGKILL).await;
        // The kernel takes a moment to reap; wait so `any_left` is honest afterwards.
        for _ in 0..50 {
            if !self.any_left(handle).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn exit_of(status: std::process::ExitStatus) -> (Outcome, Option<i32>, Option<String>) {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) => (Outcome::Succeeded, Some(0), None),
        (Some(code), _) => (Outcome::Failed, Some(code), None),
        (None, Some(signal)) => (
            Outcome::Failed,
            None,
            Some(Signal::try_from(signal).map(|s| s.as_str().to_string()).unwrap_or_else(|_| signal.to_string())),
        ),
        (None, None) => (Outcome::Failed, None, None),
    }
}
