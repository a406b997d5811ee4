//! The pool as a whole, seen from one VM: each agent keeps a small record on
//! the share (who has sessions here, with the uid and gid this VM gives
//! them, see [`record`]) and reads the others'. From them `pool-agent pool`
//! says where a user still works (the login note: after a scale change the
//! load balancer may send her to another VM than her running notebook's) and
//! names a user whose ids differ between VMs.
//!
//! Cheap on a share many VMs use: the record is written when this VM's
//! sessions change and renewed every few minutes; the others' are read every
//! ten minutes and when someone asks (at most every 30 s), on a blocking
//! thread under a deadline, never more than one at a time.

pub mod record;

use crate::core::capability::Capability;
use crate::core::component::{ComponentId, ComponentState};
use crate::core::http::{Access, Caller, Route};
use crate::core::share_write::{write_into_share, ShareFile};
use crate::core::shared::ShareNews;
use crate::core::stuck::StuckWork;
use crate::core::task::{TaskContext, TaskResult};
use axum::extract::State;
use axum::Extension;
use axum::Json;
use futures_util::future::BoxFuture;
use record::{PoolView, UserSeen, VmRecord};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// The record is renewed this often even when nothing changed (others take
/// a record older than [`record::STALE_AFTER`] for a VM gone).
const RENEW_EVERY: Duration = Duration::from_secs(5 * 60);
/// The others' records are read this often for the id check.
const READ_EVERY: Duration = Duration::from_secs(10 * 60);
/// A read asked for by a user (the login note) reuses one this fresh.
const FRESH_ENOUGH: Duration = Duration::from_secs(30);
/// The share may hang: a read or a write is given this long.
const SHARE_DEADLINE: Duration = Duration::from_secs(2);

/// `GET /v1/pool`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PoolReport {
    /// `waiting for the share`, `on the share`.
    pub state: String,
    /// This VM's instance name (its record's).
    pub here: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_at: Option<String>,
    #[serde(default)]
    pub view: PoolView,
    /// The caller's user name, as this VM knows it (for the login note).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub you: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

struct Inner {
    report: Mutex<PoolReport>,
    /// When the others' records were last read (monotonic).
    read_at: Mutex<Option<Instant>>,
    share_io: StuckWork,
    /// Set by the task: what a read asked from the API needs.
    reader: std::sync::OnceLock<TaskContext>,
}

#[derive(Clone)]
pub struct Pool(Arc<Inner>);

impl Default for Pool {
    fn default() -> Self {
        Self::new()
    }
}

impl Pool {
    pub fn new() -> Self {
        Self(Arc::new(Inner {
            report: Mutex::default(),
            read_at: Mutex::new(None),
            share_io: StuckWork::new("reads and writes of the pool's records", 1),
            reader: std::sync::OnceLock::new(),
        }))
    }

    fn update(&self, change: impl FnOnce(&mut PoolReport)) {
        change(&mut self.0.report.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn report(&self) -> PoolReport {
        self.0.report.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads every VM's record, unless a read this fresh was made already.
    async fn read_records(&self, ctx: &TaskContext, fresh_enough: Duration) {
        let recent =
            self.0.read_at.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|at| at.elapsed() < fresh_enough);
        let ShareNews::Mounted { root, .. } = ctx.shared.share() else { return };
        if recent {
            return;
        }
        let now = ctx.clock.now();
        let read = self
            .0
            .share_io
            .run(SHARE_DEADLINE, move || {
                crate::core::beneath::read_small_files_beneath(
                    &root,
                    Path::new(record::DIR),
                    "",
                    ".json",
                    record::MAX_BYTES,
                )
            })
            .await;
        *self.0.read_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        match read {
            Ok(Ok(files)) => {
                let files: Vec<(String, Vec<u8>)> = files.into_iter().map(|f| (f.name, f.bytes)).collect();
                let view = record::view(&files, now);
                self.update(|r| {
                    r.view = view;
                    r.read_at = Some(crate::core::clock::rfc3339(now));
                    r.error = None;
                });
            }
            Ok(Err(why)) => self.update(|r| r.error = Some(format!("cannot read the pool's records: {why}"))),
            Err(err) => self.update(|r| r.error = Some(format!("cannot read the pool's records: {err}"))),
        }
        self.publish_board(ctx);
    }

    fn publish_board(&self, ctx: &TaskContext) {
        let report = self.report();
        let vms = report.view.vms.len();
        match (report.view.conflicts.first(), &report.error) {
            (Some(conflict), _) => ctx.set_error(
                ComponentState::Degraded,
                format!("{vms} VM(s) on the share; {} user(s) with different ids", report.view.conflicts.len()),
                conflict.to_string(),
            ),
            (None, Some(error)) => {
                ctx.set_error(ComponentState::Degraded, "the pool's records".to_string(), error.clone())
            }
            (None, None) => ctx.set(ComponentState::Ready, format!("{vms} VM(s) on the share")),
        }
    }
}

impl Capability for Pool {
    fn id(&self) -> ComponentId {
        ComponentId::Pool
    }

    fn run(&self, ctx: TaskContext) -> BoxFuture<'static, TaskResult> {
        Box::pin(run(ctx, self.clone()))
    }

    fn routes(&self) -> Vec<Route> {
        vec![Route::get_with("/v1/pool", Access::Read, self.clone(), pool_report)]
    }

    fn config_section(&self) -> &'static str {
        "pool"
    }
}

async fn pool_report(State(pool): State<Pool>, caller: Option<Extension<Caller>>) -> Json<PoolReport> {
    let mut you = String::new();
    if let Some(ctx) = pool.0.reader.get() {
        pool.read_records(ctx, FRESH_ENOUGH).await;
        if let Some(Extension(caller)) = caller {
            let accounts = ctx.accounts.clone();
            let uid = caller.peer.uid;
            let name = crate::core::task::blocking("the caller's name", SHARE_DEADLINE, move || {
                accounts.user_with_groups(uid).map(|(account, _)| account.name)
            });
            you = name.await.ok().flatten().unwrap_or_default();
        }
    }
    Json(PoolReport { you, ..pool.report() })
}

/// This VM's name in the pool: the configured or IMDS's instance name, else the host name.
fn instance_name(ctx: &TaskContext) -> String {
    let configured = ctx.settings.borrow().instance.name.clone();
    let named = if configured.is_empty() { ctx.shared.instance_name() } else { configured };
    if !named.is_empty() {
        return named;
    }
    nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default()
}

async fn run(ctx: TaskContext, pool: Pool) -> TaskResult {
    let _ = pool.0.reader.set(ctx.clone());
    let mut idle_rx = ctx.shared.watch_idle();
    let mut share_rx = ctx.shared.watch_share();
    // (share root, this VM's name, who had sessions, when) of the last write.
    let mut written: Option<(PathBuf, String, Vec<UserSeen>, Instant)> = None;
    // After a failed write: not again before this (the loop wakes every sample).
    let mut write_again_at = Instant::now();
    let mut write_backoff = crate::core::backoff::Backoff::new(Duration::from_secs(10), RENEW_EVERY);
    let mut next_read = Instant::now();
    ctx.set(ComponentState::Starting, "waiting for the share".to_string());
    loop {
        let ShareNews::Mounted { root, identity, .. } = ctx.shared.share() else {
            pool.update(|r| r.state = "waiting for the share".into());
            ctx.set(ComponentState::Skipped, "waiting for the share".to_string());
            tokio::select! {
                _ = ctx.shutdown.cancelled() => return Ok(()),
                changed = share_rx.changed() => if changed.is_err() { ctx.idle_until_shutdown().await; return Ok(()) },
            }
            continue;
        };
        let here = instance_name(&ctx);
        pool.update(|r| {
            r.state = "on the share".into();
            r.here = here.clone();
        });
        // A look-up that did not answer writes nothing (not "nobody here").
        let users = users_seen(&ctx).await;
        let due = match (&written, &users) {
            (_, None) => false,
            (Some((at_root, name, last, at)), Some(users)) => {
                *at_root != root || *name != here || last != users || at.elapsed() >= RENEW_EVERY
            }
            (None, Some(_)) => true,
        };
        if let (true, Some(users)) = (due && Instant::now() >= write_again_at, users) {
            match write_record(&ctx, &pool, &root, identity, &here, &users).await {
                Ok(()) => {
                    // Named otherwise before (the host name until IMDS said): that record goes.
                    if let Some((old_root, old_name, _, _)) = &written {
                        if *old_name != here && *old_root == root {
                            remove_record(&pool, &root, identity, old_name).await;
                        }
                    }
                    written = Some((root.clone(), here.clone(), users, Instant::now()));
                    write_backoff.reset();
                }
                Err(why) => {
                    pool.update(|r| r.error = Some(why));
                    write_again_at = Instant::now() + write_backoff.next_delay();
                }
            }
        }
        if Instant::now() >= next_read {
            pool.read_records(&ctx, Duration::ZERO).await;
            next_read = Instant::now() + READ_EVERY;
        } else {
            pool.publish_board(&ctx);
        }
        let renew_in = written.as_ref().map_or(RENEW_EVERY, |(_, _, _, at)| RENEW_EVERY.saturating_sub(at.elapsed()));
        let wait = renew_in.min(next_read.saturating_duration_since(Instant::now()));
        // Wakes on a new verdict (each sample) only to compare who has sessions.
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
            _ = share_rx.changed() => {}
            _ = idle_rx.changed() => {}
        }
    }
}

/// Who has sessions here now, with the ids this VM gives them; `None`: the
/// look-up did not answer in time.
async fn users_seen(ctx: &TaskContext) -> Option<Vec<UserSeen>> {
    let sessions = ctx.shared.idle().session_users;
    if sessions.is_empty() {
        return Some(Vec::new());
    }
    let accounts = ctx.accounts.clone();
    let looked_up = crate::core::task::blocking("user look-ups for the pool's record", SHARE_DEADLINE, move || {
        sessions
            .into_iter()
            .filter_map(|(name, count)| {
                let account = accounts.user_by_name(&name)?;
                Some(UserSeen { name, uid: account.uid, gid: account.gid, sessions: count })
            })
            .collect::<Vec<_>>()
    })
    .await;
    looked_up.ok()
}

/// Removes this VM's record under an old name (best effort: a stale one is ignored by all after 15 min).
async fn remove_record(pool: &Pool, root: &Path, identity: (u64, u64), old_name: &str) {
    let Some(name) = record::file_name(old_name) else { return };
    let root = root.to_path_buf();
    let removed = pool
        .0
        .share_io
        .run(SHARE_DEADLINE, move || {
            crate::core::share_write::remove_from_share(&root, identity, Path::new(record::DIR), &name)
        })
        .await;
    if let Ok(Err(why)) = removed {
        tracing::warn!(component = "pool", "cannot remove the record of this VM's old name: {why}");
    }
}

async fn write_record(
    ctx: &TaskContext,
    pool: &Pool,
    root: &Path,
    identity: (u64, u64),
    here: &str,
    users: &[UserSeen],
) -> Result<(), String> {
    let Some(name) = record::file_name(here) else {
        return Err(format!("{here:?} cannot name a record on the share"));
    };
    let now: SystemTime = ctx.clock.now();
    let record =
        VmRecord { instance: here.to_string(), updated_at: crate::core::clock::rfc3339(now), users: users.to_vec() };
    let bytes = serde_json::to_vec_pretty(&record).map_err(|err| format!("cannot write the record: {err}"))?;
    let root = root.to_path_buf();
    let written = pool
        .0
        .share_io
        .run(SHARE_DEADLINE, move || {
            let file = ShareFile {
                dir: Path::new(record::DIR),
                name: &name,
                mode: 0o644,
                dir_mode: 0o755,
                owner: None,
                private: false,
            };
            write_into_share(&root, identity, &file, &mut bytes.as_slice()).map(|_| ())
        })
        .await;
    match written {
        Ok(Ok(())) => {
            pool.update(|r| r.written_at = Some(crate::core::clock::rfc3339(now)));
            Ok(())
        }
        Ok(Err(err)) => Err(format!("cannot write this VM's record: {err}")),
        Err(err) => Err(format!("cannot write this VM's record: {err}")),
    }
}
