//! Setup scripts: the admin's scripts, run once per VM or on every boot.
//!
//! Not built yet: the task says so in `pool-agent status`, and its API
//! routes answer 501 with a JSON error.

use crate::core::capability::Capability;
use crate::core::component::ComponentId;
use crate::core::http::{not_built, Access, Route};
use crate::core::task::{TaskContext, TaskResult};
use axum::extract::Path;
use futures_util::future::BoxFuture;

pub struct Scripts;

impl Capability for Scripts {
    fn id(&self) -> ComponentId {
        ComponentId::Scripts
    }

    fn run(&self, ctx: TaskContext) -> BoxFuture<'static, TaskResult> {
        Box::pin(ctx.not_built("setup scripts"))
    }

    fn routes(&self) -> Vec<Route> {
        vec![
            Route::get("/v1/scripts", Access::Read, || not_built("GET /v1/scripts", "setup scripts")),
            Route::post("/v1/scripts/{name}/run", Access::Admin, |Path(name): Path<String>| {
                not_built(format!("POST /v1/scripts/{name}/run"), "setup scripts")
            }),
            Route::get("/v1/scripts/{name}/log", Access::Read, |Path(name): Path<String>| {
                not_built(format!("GET /v1/scripts/{name}/log"), "setup scripts")
            }),
        ]
    }

    fn config_section(&self) -> &'static str {
        "setup"
    }

    /// Arguments and environment values may carry tokens.
    fn private_config_keys(&self) -> &'static [&'static str] {
        &["scripts.*.args", "scripts.*.env"]
    }
}
