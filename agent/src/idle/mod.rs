//! Idle: activity signals sampled into an idle verdict with its reasons, and
//! users' keep-awake holds.
//!
//! Not built yet: the task says so in `pool-agent status`, and its API
//! routes answer 501 with a JSON error.

use crate::core::capability::Capability;
use crate::core::component::ComponentId;
use crate::core::http::{not_built, Access, Route};
use crate::core::task::{TaskContext, TaskResult};
use axum::extract::Path;
use futures_util::future::BoxFuture;

pub struct Idle;

impl Capability for Idle {
    fn id(&self) -> ComponentId {
        ComponentId::Idle
    }

    fn run(&self, ctx: TaskContext) -> BoxFuture<'static, TaskResult> {
        Box::pin(ctx.not_built("the idle verdict"))
    }

    fn routes(&self) -> Vec<Route> {
        vec![
            Route::get("/v1/idle", Access::Read, || not_built("GET /v1/idle", "idle")),
            Route::get("/v1/holds", Access::Read, || not_built("GET /v1/holds", "idle")),
            // Any user holds the VM for themselves; the handler checks ownership.
            Route::post("/v1/holds", Access::SelfService, || not_built("POST /v1/holds", "idle")),
            Route::delete("/v1/holds/{id}", Access::SelfService, |Path(id): Path<String>| {
                not_built(format!("DELETE /v1/holds/{id}"), "idle")
            }),
        ]
    }

    fn config_section(&self) -> &'static str {
        "idle"
    }
}
