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
pub mod demand;
pub mod drain;
pub mod events;
pub mod firewall;
pub mod health;
pub mod imds;
mod imds_guard;
pub mod key;
pub mod listener;
pub mod monitor;
pub mod problems;
pub mod protect;
mod publish;
mod readiness;
mod report;
pub mod token;

pub use problems::Problems;
pub use report::{AzureReport, Compute, LastPost};

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
use health::health_server;
use imds::{Imds, ImdsCounters, ImdsError};
use imds_guard::{guard_imds, open_imds};
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
    /// The load balancer's readiness probe's listener, kept the same way.
    readiness: tokio::sync::Mutex<Option<listener::ProbeListener>>,
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
            readiness: tokio::sync::Mutex::new(None),
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
        if let Some(offer) = self.offer_now() {
            report.readiness = Some(match &offer.ready {
                Ok(()) => "ready: can take a new session".to_string(),
                Err(why) => format!("not ready: {why}"),
            });
            report.offer = Some(report::OfferView { in_use: offer.in_use, booting: offer.booting, free: offer.free });
        }
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
        *azure.0.readiness.lock().await = None;
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
                    *azure.0.readiness.lock().await = None;
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
    readiness::readiness_server(&ctx, &azure, &settings).await;
    // Only the real IMDS is guarded (a test's fake on loopback is not); the
    // readiness port with it, since only on Azure do probes come from the LB.
    let _imds_guard = settings.azure.imds_endpoint.trim_end_matches('/').ends_with(firewall::IMDS_ADDRESS).then(|| {
        let readiness_port = readiness::port(&settings);
        let guard = guard_imds(ctx.clone(), azure.clone(), settings.azure.imds_access.clone(), readiness_port);
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

#[cfg(test)]
mod template_tests;
