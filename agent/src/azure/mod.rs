//! Azure: who this VM is (IMDS), tokens from its managed identity, the idle
//! verdict published as Azure Monitor custom metrics for autoscale, and the
//! Application Health endpoint. Fed by the idle verdict and the share's news
//! from the core's shared state.
//!
//! Off Azure (IMDS does not answer) with `azure.enabled = "auto"` the
//! capability says `absent` and asks again every few minutes; nothing else
//! changes. On a scale set's VM it also keeps scale-in protection in step
//! with the verdict ([`protect`]), handles Scheduled Events ([`events`]) and
//! fetches the share's key when it comes from Azure ([`key`]).

pub mod arm;
pub mod delete;
pub mod delete_arm;
pub mod delete_lease;
pub mod drain;
pub mod events;
pub mod firewall;
pub mod health;
pub mod imds;
pub mod key;
pub mod listener;
pub mod monitor;
pub mod problems;
pub mod protect;
mod publish;
pub mod token;

pub use problems::Problems;

use crate::config::{AzureEnabled, Settings};
use crate::core::board::StatusBoard;
use crate::core::capability::Capability;
use crate::core::component::{ComponentId, ComponentState};
use crate::core::http::{Access, Route};
use crate::core::shared::SharedState;
use crate::core::task::{TaskContext, TaskResult};
use axum::extract::State;
use axum::Json;
use futures_util::future::BoxFuture;
use imds::{Imds, ImdsCounters, ImdsError};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};
use token::Tokens;
use tokio::sync::watch;

/// Off Azure, IMDS is asked again this often.
const ABSENT_RETRY: Duration = Duration::from_secs(120);
/// How long the first metadata read may take (a 410 storm lasts up to 70 s).
const METADATA_DEADLINE: Duration = Duration::from_secs(80);
/// The scale set's userData (a config fragment) is read again this often.
const USER_DATA_EVERY: Duration = Duration::from_secs(300);

/// What IMDS says of this VM (`compute`), as `pool-agent azure` shows it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Compute {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub vm_id: String,
    #[serde(default)]
    pub location: String,
    #[serde(default)]
    pub subscription_id: String,
    #[serde(default)]
    pub resource_group_name: String,
    #[serde(default)]
    pub vm_scale_set_name: String,
    #[serde(default)]
    pub resource_id: String,
    /// Base64, as IMDS gives it; its text is a config fragment (or empty).
    #[serde(default, skip_serializing)]
    pub user_data: String,
}

impl Compute {
    /// The userData as text: a TOML config fragment, or nothing.
    pub fn user_data_text(&self) -> Result<String, String> {
        use base64::Engine;
        if self.user_data.trim().is_empty() {
            return Ok(String::new());
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(self.user_data.trim())
            .map_err(|err| format!("userData is not base64: {err}"))?;
        String::from_utf8(bytes).map_err(|_| "userData is not UTF-8 text".to_string())
    }
}

impl Compute {
    /// What the metrics describe: the scale set (autoscale reads its
    /// metrics), or the VM itself outside one.
    pub fn metrics_resource(&self) -> String {
        if self.vm_scale_set_name.is_empty() {
            return self.resource_id.clone();
        }
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachineScaleSets/{}",
            self.subscription_id, self.resource_group_name, self.vm_scale_set_name
        )
    }
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct LastPost {
    pub at: String,
    /// The HTTP status, or 0 when none came back.
    pub status: u16,
    pub detail: String,
}

/// `GET /v1/azure`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct AzureReport {
    /// `on-azure`, `absent` (IMDS does not answer), `off` (azure.enabled = false), `starting`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute: Option<Compute>,
    #[serde(default)]
    pub identity: String,
    #[serde(default)]
    pub tokens: Vec<token::TokenView>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metrics_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_post: Option<LastPost>,
    #[serde(default)]
    pub buckets_posted: u64,
    #[serde(default)]
    pub backlog: usize,
    #[serde(default)]
    pub dropped_too_old: u64,
    #[serde(default)]
    pub dropped_rejected: u64,
    #[serde(default)]
    pub imds_requests: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<health::Health>,
    /// The share's storage key when it comes from Azure (never the key itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_key: Option<key::KeyView>,
    /// Scale-in protection (`azure.protect`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protection: Option<protect::ProtectionView>,
    /// `idle.action = "delete-self"`: whether, and why not yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_delete: Option<delete::DeleteView>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub health_listen: String,
    /// Who may reach IMDS (`azure.imds_access`), as enforced.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub imds_access: String,
    /// Keys of the scale set's userData refused (they could run code or widen access).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_data_refused: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A view a background task keeps and `pool-agent azure` reads: one lock,
/// changed in place (poisoning is ignored: a view is only ever overwritten).
pub struct Shown<T>(pub Arc<Mutex<T>>);

impl<T> Shown<T> {
    pub fn update(&self, change: impl FnOnce(&mut T)) {
        change(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// A keeper's task, made again each time the supervisor starts it.
type Keeper = futures_util::future::BoxFuture<'static, ()>;
type MakeKeeper = Box<dyn Fn() -> Keeper + Send + Sync>;

/// What the health answer reads, set when the task starts.
struct Inputs {
    board: Arc<StatusBoard>,
    shared: SharedState,
    settings: watch::Receiver<Arc<Settings>>,
}

struct Inner {
    clock: crate::core::clock::SharedClock,
    report: Mutex<AzureReport>,
    tokens: Mutex<Option<Arc<Tokens>>>,
    /// Shown while the share's key comes from Azure (`source` set).
    key_view: Arc<Mutex<key::KeyView>>,
    /// Shown while protection is kept (`protected` set).
    protection: Arc<Mutex<protect::ProtectionView>>,
    events: Arc<Mutex<events::EventsReport>>,
    self_delete: Arc<Mutex<delete::DeleteView>>,
    inputs: OnceLock<Inputs>,
    /// What the keepers cannot do, for the status board.
    problems: Problems,
    /// The health probe's listener: kept across restarts that keep its address.
    health: tokio::sync::Mutex<Option<listener::ProbeListener>>,
    /// The agent's nftables table closing IMDS to users is in place.
    imds_closed: std::sync::atomic::AtomicBool,
    imds: ImdsCounters,
    posts: Family<Vec<(String, String)>, Counter>,
    dropped: Family<Vec<(String, String)>, Counter>,
}

#[derive(Clone)]
pub struct Azure(Arc<Inner>);

impl Azure {
    pub fn new(clock: crate::core::clock::SharedClock) -> Self {
        Self(Arc::new(Inner {
            clock,
            report: Mutex::default(),
            tokens: Mutex::new(None),
            key_view: Arc::default(),
            protection: Arc::default(),
            events: Arc::default(),
            self_delete: Arc::default(),
            inputs: OnceLock::new(),
            problems: Problems::default(),
            health: tokio::sync::Mutex::new(None),
            imds_closed: std::sync::atomic::AtomicBool::new(false),
            imds: ImdsCounters::default(),
            posts: Family::default(),
            dropped: Family::default(),
        }))
    }

    fn now(&self) -> SystemTime {
        self.0.clock.now()
    }

    fn update(&self, change: impl FnOnce(&mut AzureReport)) {
        let mut report = self.0.report.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut report);
    }

    fn health_now(&self) -> Option<health::Health> {
        let inputs = self.0.inputs.get()?;
        let unhealthy_after = inputs.settings.borrow().azure.unhealthy_after;
        Some(health::judge(&inputs.shared.idle(), &inputs.board.components(), unhealthy_after, self.now()))
    }

    fn report(&self) -> AzureReport {
        let mut report = self.0.report.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let tokens = self.0.tokens.lock().unwrap_or_else(|p| p.into_inner()).clone();
        report.tokens = tokens.map(|t| t.views()).unwrap_or_default();
        report.imds_requests = self.0.imds.requests.get();
        report.health = self.health_now();
        if let Some(inputs) = self.0.inputs.get() {
            report.user_data_refused = inputs.settings.borrow().user_data_refused.clone();
        }
        let key_view = self.0.key_view.lock().unwrap_or_else(|p| p.into_inner()).clone();
        report.storage_key = (!key_view.source.is_empty()).then_some(key_view);
        let protection = self.0.protection.lock().unwrap_or_else(|p| p.into_inner()).clone();
        report.protection = (!protection.protected.is_empty()).then_some(protection);
        let self_delete = self.0.self_delete.lock().unwrap_or_else(|p| p.into_inner()).clone();
        report.self_delete = (!self_delete.state.is_empty()).then_some(self_delete);
        report
    }
}

impl Capability for Azure {
    fn id(&self) -> ComponentId {
        ComponentId::Azure
    }

    fn run(&self, ctx: TaskContext) -> BoxFuture<'static, TaskResult> {
        Box::pin(run(ctx, self.clone()))
    }

    fn routes(&self) -> Vec<Route> {
        vec![
            Route::get_with("/v1/azure", Access::Read, self.clone(), azure_report),
            Route::get_with("/v1/events", Access::Read, self.clone(), events_report),
        ]
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "azure_imds_requests",
            "Requests to the Instance Metadata Service",
            self.0.imds.requests.clone(),
        );
        registry.register("azure_imds_retries", "IMDS requests that were retries", self.0.imds.retries.clone());
        registry.register(
            "azure_metric_posts",
            "Posts of metric buckets to Azure Monitor, by outcome",
            self.0.posts.clone(),
        );
        registry.register(
            "azure_metric_points_dropped",
            "Metric buckets given up, by reason (too_old: outside Azure's 20 minutes; rejected: a 400)",
            self.0.dropped.clone(),
        );
    }

    fn config_section(&self) -> &'static str {
        "azure"
    }
}

async fn events_report(State(azure): State<Azure>) -> Json<events::EventsReport> {
    let mut report = azure.0.events.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if report.state.is_empty() {
        report.state = azure.0.report.lock().unwrap_or_else(|p| p.into_inner()).state.clone();
    }
    Json(report)
}

async fn azure_report(State(azure): State<Azure>) -> Json<AzureReport> {
    Json(azure.report())
}

async fn run(ctx: TaskContext, azure: Azure) -> TaskResult {
    azure.0.problems.attach(ctx.board.clone());
    let _ = azure.0.inputs.set(Inputs {
        board: ctx.board.clone(),
        shared: ctx.shared.clone(),
        settings: ctx.settings.clone(),
    });
    let mut settings_rx = ctx.settings.clone();
    loop {
        let settings = settings_rx.borrow_and_update().clone();
        let section = settings.azure.clone();
        let key_spec = key::spec(&settings);
        let idle_action = (settings.idle.action, settings.idle.min_instances);
        // A reload that changes [azure] (a userData fragment, say) starts it
        // again with the new settings: endpoints, identity, health address.
        let azure_changed = async {
            loop {
                if settings_rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
                let now = settings_rx.borrow().clone();
                if now.azure != section
                    || key::spec(&now) != key_spec
                    || (now.idle.action, now.idle.min_instances) != idle_action
                {
                    return;
                }
            }
        };
        tokio::select! {
            result = run_with(&ctx, &azure, settings) => {
                // Stopping: IMDS is opened again (the table is the running agent's).
                open_imds(&azure).await;
                return result;
            }
            _ = azure_changed => tracing::info!(component = "azure", "[azure] or the share's key source changed; starting again with it"),
        }
        // A key fetched for another source (or secret, or account) is not this one's.
        if key::spec(&settings_rx.borrow()) != key_spec {
            let stale = ctx.shared.storage_key();
            ctx.shared.publish_storage_key(crate::core::shared::KeyNews {
                generation: stale.generation,
                error: Some("the share's key source changed; fetching the key again".to_string()),
                ..Default::default()
            });
        }
    }
}

async fn run_with(ctx: &TaskContext, azure: &Azure, settings: Arc<Settings>) -> TaskResult {
    let ctx = ctx.clone();
    let azure = azure.clone();
    azure.update(|r| *r = AzureReport::default());
    *azure.0.key_view.lock().unwrap_or_else(|p| p.into_inner()) = key::KeyView::default();
    *azure.0.protection.lock().unwrap_or_else(|p| p.into_inner()) = protect::ProtectionView::default();
    *azure.0.events.lock().unwrap_or_else(|p| p.into_inner()) = events::EventsReport::default();
    *azure.0.self_delete.lock().unwrap_or_else(|p| p.into_inner()) = delete::DeleteView::default();
    azure.0.problems.clear();
    ctx.shared.publish_protection(crate::core::shared::ProtectionNews::NotKept);
    if settings.azure.enabled == AzureEnabled::Off {
        // The agent listens on nothing but its socket off Azure, and leaves no firewall table.
        *azure.0.health.lock().await = None;
        open_imds(&azure).await;
        azure.update(|r| r.state = "off".into());
        ctx.set(ComponentState::Skipped, "azure.enabled = false".to_string());
        ctx.idle_until_shutdown().await;
        return Ok(());
    }
    let imds = match Imds::new(&settings.azure.imds_endpoint, &azure.0.imds) {
        Ok(imds) => Arc::new(imds),
        Err(err) => return Err(crate::core::task::TaskError::Failed(err)),
    };
    let tokens = Arc::new(Tokens::new(imds.clone(), &settings.azure.client_id, ctx.clock.clone()));
    *azure.0.tokens.lock().unwrap_or_else(|p| p.into_inner()) = Some(tokens.clone());
    azure.update(|r| {
        r.state = "starting".into();
        r.identity = match settings.azure.client_id.as_str() {
            "" => "system-assigned managed identity".into(),
            id => format!("user-assigned managed identity {id}"),
        };
    });
    // azure.enabled = true says this is Azure: IMDS not answering yet (the
    // network still coming up) is asked again soon, then less often.
    let mut on_azure_backoff = crate::core::backoff::Backoff::new(Duration::from_secs(5), ABSENT_RETRY);
    let compute = loop {
        // Not a reason to call the VM not ready: off Azure nothing else depends on it.
        ctx.set(ComponentState::Skipped, "asking IMDS who this VM is".to_string());
        match metadata(&imds).await {
            Ok(compute) => break compute,
            Err(err) => {
                // With "auto", anything but instance metadata means not on Azure (a
                // network that intercepts the link-local address answers too) —
                // unless the share's key comes from Azure, which says it is.
                let absent = settings.azure.enabled == AzureEnabled::Auto && key::spec(&settings).is_none();
                let wait = if absent { ABSENT_RETRY } else { on_azure_backoff.next_delay() };
                let again = crate::config::duration::format_rounded(wait);
                azure.update(|r| {
                    r.state = if absent { "absent" } else { "starting" }.into();
                    r.error = Some(err.to_string());
                });
                if key::spec(&settings).is_some() {
                    let mut news = ctx.shared.storage_key();
                    news.error = Some(format!("the key comes from Azure, but IMDS does not answer ({err})"));
                    ctx.shared.publish_storage_key(news);
                }
                if absent {
                    *azure.0.health.lock().await = None;
                    ctx.set(
                        ComponentState::Skipped,
                        format!("absent: not on Azure ({err}); asking again every {again}"),
                    );
                } else {
                    ctx.set_error(
                        ComponentState::Degraded,
                        format!("IMDS failed; asking again in {again}"),
                        err.to_string(),
                    );
                }
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    };
    health_server(&ctx, &azure, &settings).await;
    // Only the real IMDS is guarded (a test's fake on loopback is not).
    let _imds_guard = settings.azure.imds_endpoint.trim_end_matches('/').ends_with(firewall::IMDS_ADDRESS).then(|| {
        let guard = guard_imds(ctx.clone(), azure.clone(), settings.azure.imds_access.clone());
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(guard))
    });
    if settings.instance.name.is_empty() && !compute.name.is_empty() {
        ctx.shared.publish_instance_name(&compute.name);
    }
    publish_user_data(&ctx, &azure, &compute);
    let base = match settings.azure.monitoring_endpoint.as_str() {
        "" => format!("https://{}.monitoring.azure.com", compute.location),
        configured => configured.to_string(),
    };
    let url = format!("{base}{}/metrics", compute.metrics_resource());
    azure.update(|r| {
        r.state = "on-azure".into();
        r.compute = Some(compute.clone());
        r.metrics_url = url.clone();
        r.error = None;
    });
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|err| crate::core::task::TaskError::Failed(format!("cannot build the HTTP client: {err}")))?;
    let supervised = |name: &'static str, keeper| {
        let run = problems::supervise(name, azure.0.problems.clone(), ctx.shutdown.clone(), keeper);
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(run))
    };
    let _key_keeper = key::spec(&settings).map(|spec| {
        *azure.0.key_view.lock().unwrap_or_else(|p| p.into_inner()) =
            key::KeyView { source: spec.source.as_str().to_string(), ..Default::default() };
        let (ctx, view, problems, http, tokens, compute) = (
            ctx.clone(),
            azure.0.key_view.clone(),
            azure.0.problems.clone(),
            http.clone(),
            tokens.clone(),
            compute.clone(),
        );
        let arm_endpoint = settings.azure.arm_endpoint.clone();
        supervised(
            "key",
            Box::new(move || -> Keeper {
                Box::pin(key::keep(
                    ctx.clone(),
                    view.clone(),
                    problems.clone(),
                    http.clone(),
                    tokens.clone(),
                    spec.clone(),
                    compute.clone(),
                    arm_endpoint.clone(),
                ))
            }) as MakeKeeper,
        )
    });
    let _profile_check = (settings.azure.scheduled_events && !compute.vm_scale_set_name.is_empty()).then(|| {
        let url = format!("{}{}", settings.azure.arm_endpoint, compute.metrics_resource());
        let check = events::check_terminate_profile(azure.0.events.clone(), http.clone(), tokens.clone(), url);
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(check))
    });
    let _events = settings.azure.scheduled_events.then(|| {
        let (ctx, view, imds, name) = (ctx.clone(), azure.0.events.clone(), imds.clone(), compute.name.clone());
        let approve = settings.azure.approve.clone();
        supervised(
            "events",
            Box::new(move || -> Keeper {
                Box::pin(events::watch(ctx.clone(), view.clone(), imds.clone(), name.clone(), approve.clone()))
            }) as MakeKeeper,
        )
    });
    let _self_delete = (settings.idle.action == crate::config::IdleAction::DeleteSelf).then(|| {
        let inputs = delete::Inputs {
            http: http.clone(),
            tokens: tokens.clone(),
            compute: compute.clone(),
            arm_endpoint: settings.azure.arm_endpoint.clone(),
            problems: azure.0.problems.clone(),
            protect: settings.azure.protect,
            events: azure.0.events.clone(),
            min_instances: settings.idle.min_instances,
            wait: settings.azure.delete_wait,
        };
        let (ctx, view) = (ctx.clone(), azure.0.self_delete.clone());
        supervised(
            "self-delete",
            Box::new(move || -> Keeper { Box::pin(delete::keep(ctx.clone(), view.clone(), inputs.clone())) })
                as MakeKeeper,
        )
    });
    if settings.azure.protect {
        ctx.shared.publish_protection(crate::core::shared::ProtectionNews::Unknown);
    }
    let _protection = settings.azure.protect.then(|| {
        let (ctx, view, problems, compute) =
            (ctx.clone(), azure.0.protection.clone(), azure.0.problems.clone(), compute.clone());
        let arm = (http.clone(), tokens.clone(), settings.azure.arm_endpoint.clone());
        let (release_after, budget) = (settings.azure.release_after, settings.azure.max_releases_per_hour);
        supervised(
            "protection",
            Box::new(move || -> Keeper {
                Box::pin(protect::keep(
                    ctx.clone(),
                    view.clone(),
                    problems.clone(),
                    arm.clone(),
                    compute.clone(),
                    release_after,
                    budget,
                ))
            }) as MakeKeeper,
        )
    });
    azure.0.problems.ready(format!(
        "on Azure: {} in {}; the verdict goes to Azure Monitor every {}",
        compute.name,
        compute.location,
        crate::config::duration::format(settings.azure.metrics_interval)
    ));
    publish::publish_metrics(&ctx, &azure, &http, &imds, &tokens, &url, &compute).await
}

/// Hands the userData fragment to the daemon, which applies it as the last
/// drop-in (a bad one is refused like any bad drop-in).
fn publish_user_data(ctx: &TaskContext, azure: &Azure, compute: &Compute) {
    match compute.user_data_text() {
        Ok(text) => ctx.shared.publish_user_data(&text),
        Err(why) => {
            tracing::warn!(component = "azure", "{why}; the scale set's config fragment is not applied");
            azure.update(|r| r.error = Some(why));
        }
    }
}

async fn metadata(imds: &Imds) -> Result<Compute, ImdsError> {
    #[derive(serde::Deserialize)]
    struct Instance {
        compute: Compute,
    }
    let body = imds.get("/metadata/instance?api-version=2021-02-01", METADATA_DEADLINE).await?;
    serde_json::from_slice::<Instance>(&body).map(|i| i.compute).map_err(|err| ImdsError::Refused {
        status: 200,
        path: "/metadata/instance".into(),
        body: format!("not instance metadata: {err}"),
    })
}

/// `azure.health_listen`: a plain HTTP answer for the Application Health
/// extension, on loopback only.
/// How often group members are looked up again for `azure.imds_access`.
const IMDS_GROUPS_EVERY: Duration = Duration::from_secs(300);

/// Keeps the nftables table that closes IMDS to everyone but root (and the
/// groups `azure.imds_access` names) until shutdown, then removes it.
async fn guard_imds(ctx: TaskContext, azure: Azure, access: crate::config::fragment::ImdsAccess) {
    let mut installed: Option<String> = None;
    loop {
        let (accounts, asked) = (ctx.accounts.clone(), access.clone());
        let resolved = crate::core::task::blocking("imds access groups", Duration::from_secs(10), move || {
            firewall::allowed(&asked, &accounts)
        })
        .await;
        match resolved {
            Ok(allowed) => {
                let script = allowed.as_ref().map_or_else(firewall::removal, firewall::ruleset);
                if installed.as_ref() != Some(&script) {
                    match firewall::nft(&script).await {
                        Ok(()) => {
                            azure.update(|r| r.imds_access = firewall::describe(&access, allowed.as_ref()));
                            tracing::info!(
                                component = "azure",
                                "IMDS: {}",
                                firewall::describe(&access, allowed.as_ref())
                            );
                            azure.0.imds_closed.store(allowed.is_some(), std::sync::atomic::Ordering::SeqCst);
                            azure.0.problems.set("imds access", None);
                            installed = Some(script);
                        }
                        Err(why) => {
                            let why = format!("IMDS stays open to every local user: {why}");
                            tracing::warn!(component = "azure", "{why}");
                            azure.update(|r| r.imds_access = why.clone());
                            azure.0.problems.set("imds access", Some(why));
                        }
                    }
                }
            }
            Err(err) => {
                azure.0.problems.set("imds access", Some(format!("cannot look up azure.imds_access's groups: {err}")))
            }
        }
        tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            _ = tokio::time::sleep(IMDS_GROUPS_EVERY) => {}
        }
    }
    open_imds(&azure).await;
}

/// Removes the agent's table, if it put one in place.
async fn open_imds(azure: &Azure) {
    if azure.0.imds_closed.swap(false, std::sync::atomic::Ordering::SeqCst) {
        if let Err(why) = firewall::nft(&firewall::removal()).await {
            tracing::warn!(component = "azure", "cannot remove the IMDS table: {why}");
        }
    }
}

/// Answers the Application Health extension on `azure.health_listen` once
/// on Azure; a restart that keeps the address keeps the listener (no gap).
async fn health_server(ctx: &TaskContext, azure: &Azure, settings: &Settings) {
    let listen = settings.azure.health_listen.clone();
    let mut health = azure.0.health.lock().await;
    if health.as_ref().is_some_and(|h| h.addr() == listen) {
        azure.update(|r| r.health_listen = listen.clone());
        return;
    }
    // Another address (or none): the old one stops and frees its port first.
    *health = None;
    if listen.is_empty() {
        return;
    }
    azure.update(|r| r.health_listen = listen.clone());
    let answer_from = azure.clone();
    let answer: listener::Answer = std::sync::Arc::new(move || {
        let healthy = answer_from.health_now().is_none_or(|h| h.healthy);
        serde_json::json!({ "ApplicationHealthState": if healthy { "Healthy" } else { "Unhealthy" } }).to_string()
    });
    match listener::ProbeListener::bind(&listen, "/health", answer, ctx.shutdown.clone()).await {
        Ok(listening) => *health = Some(listening),
        Err(err) => {
            let why = format!("health endpoint {listen}: {}", crate::config::io_text(&err));
            tracing::warn!(component = "azure", "cannot answer health probes: {why}");
            azure.update(|r| r.error = Some(why.clone()));
            azure.0.problems.set("health", Some(why));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ARM template shipped for the pool, read as an admin deploys it.
    fn template() -> serde_json::Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/azure/pool.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn resource<'a>(template: &'a serde_json::Value, kind: &str) -> Vec<&'a serde_json::Value> {
        template["resources"].as_array().unwrap().iter().filter(|r| r["type"] == kind).collect()
    }

    #[test]
    fn the_shipped_template_uses_the_metrics_namespace_and_health_endpoint_the_agent_serves() {
        let template = template();
        let autoscale = resource(&template, "Microsoft.Insights/autoscalesettings")[0];
        let profiles = autoscale["properties"]["profiles"].as_array().unwrap();
        let mut used = std::collections::BTreeSet::new();
        for profile in profiles {
            for rule in profile["rules"].as_array().unwrap() {
                let trigger = &rule["metricTrigger"];
                let name = trigger["metricName"].as_str().unwrap();
                assert!(
                    monitor::METRIC_NAMES.contains(&name),
                    "the template scales on {name}, which the agent never posts"
                );
                assert_eq!(trigger["metricNamespace"], crate::config::settings::DEFAULT_METRICS_NAMESPACE);
                used.insert(name);
            }
            // Scale to zero: no profile keeps a VM outside working hours.
            if profile["name"] != "working hours" {
                assert_eq!(profile["capacity"]["minimum"], "0", "{profile}");
            }
        }
        assert_eq!(used.into_iter().collect::<Vec<_>>(), ["Busy", "Removable"]);
        let set = resource(&template, "Microsoft.Compute/virtualMachineScaleSets")[0];
        let profile = &set["properties"]["virtualMachineProfile"];
        let health = &profile["extensionProfile"]["extensions"][0]["properties"];
        assert_eq!(health["type"], "ApplicationHealthLinux");
        let (host, port) = crate::config::settings::DEFAULT_HEALTH_LISTEN.rsplit_once(':').unwrap();
        assert_eq!(host, "127.0.0.1");
        assert_eq!(health["settings"]["port"], port.parse::<u16>().unwrap());
        assert_eq!(health["settings"]["requestPath"], "/health");
        assert_eq!(health["settings"]["protocol"], "http");
        // Health must not count before boot and the share wait are over.
        let grace = template["parameters"]["healthGracePeriod"]["defaultValue"].as_u64().unwrap();
        assert!(grace >= 300 + crate::config::settings::DEFAULT_SHARE_WAIT.as_secs(), "grace period {grace} s");
        let terminate = &profile["scheduledEventsProfile"]["terminateNotificationProfile"];
        assert_eq!(terminate["enable"], true);
        assert!(["PT5M", "PT10M", "PT15M"].contains(&terminate["notBeforeTimeout"].as_str().unwrap()));
        assert_eq!(set["identity"]["type"], "SystemAssigned");
        assert_eq!(set["sku"]["capacity"], 0);
    }

    #[test]
    fn the_shipped_template_s_config_fragment_loads_and_its_roles_cover_what_the_agent_calls() {
        let template = template();
        let fragment = template["parameters"]["configFragment"]["defaultValue"].as_str().unwrap();
        // The pool's config is a root-owned drop-in written by cloud-init from
        // customData; never userData, which the VM's own identity can rewrite.
        let set = resource(&template, "Microsoft.Compute/virtualMachineScaleSets")[0];
        let profile = &set["properties"]["virtualMachineProfile"];
        assert!(profile.get("userData").is_none(), "the pool's config must not come from userData");
        let custom = profile["osProfile"]["customData"].as_str().unwrap();
        assert!(custom.contains("path: /etc/pool-agent/config.d/50-pool.toml") && custom.contains("owner: root:root"));
        assert!(custom.contains("base64(parameters('configFragment'))"), "{custom}");
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("config.toml");
        std::fs::write(&main, "").unwrap();
        std::fs::create_dir(dir.path().join("config.d")).unwrap();
        std::fs::write(dir.path().join("config.d/50-pool.toml"), fragment).unwrap();
        let settings = crate::config::load(&main).unwrap();
        assert!(key::spec(&settings).is_some(), "the fragment takes the key from Key Vault");
        let role = resource(&template, "Microsoft.Authorization/roleDefinitions")[0];
        let actions = template["variables"]["instanceActions"].as_array().unwrap();
        for needed in [
            "Microsoft.Compute/virtualMachineScaleSets/read",
            "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/read",
            "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/write",
        ] {
            assert!(actions.iter().any(|a| a == needed), "{needed}");
        }
        assert_eq!(
            template["variables"]["deleteActions"][0],
            "Microsoft.Compute/virtualMachineScaleSets/delete/action"
        );
        assert!(role["properties"]["permissions"][0]["actions"].as_str().unwrap().contains("selfDelete"));
        let assigned: Vec<&str> = resource(&template, "Microsoft.Authorization/roleAssignments")
            .iter()
            .map(|a| a["properties"]["roleDefinitionId"].as_str().unwrap())
            .collect();
        assert!(assigned.iter().any(|r| r.contains("monitoringMetricsPublisher")));
        assert!(assigned.iter().any(|r| r.contains("keyVaultSecretsUser")));
        assert!(assigned.iter().any(|r| r.contains("instanceRoleName")));
        assert_eq!(template["variables"]["monitoringMetricsPublisher"], "3913510d-42f4-4e42-8a64-420c390055eb");
    }

    #[test]
    fn metrics_go_to_the_scale_set() {
        let compute = Compute {
            subscription_id: "sub".into(),
            resource_group_name: "rg".into(),
            vm_scale_set_name: "pool".into(),
            resource_id: "/subscriptions/sub/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/pool/virtualMachines/3".into(),
            ..Compute::default()
        };
        assert_eq!(
            compute.metrics_resource(),
            "/subscriptions/sub/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/pool"
        );
    }
}
