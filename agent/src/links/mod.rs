//! Links: every user's `$HOME/notebooks/remote` pointing at their folder on the share.
//!
//! Not built yet: the task says so in `pool-agent status`, and its API
//! routes answer 501 with a JSON error.

use crate::core::capability::Capability;
use crate::core::component::ComponentId;
use crate::core::http::{not_built, Access, Route};
use crate::core::task::{TaskContext, TaskResult};
use futures_util::future::BoxFuture;

pub struct Links;

impl Capability for Links {
    fn id(&self) -> ComponentId {
        ComponentId::Links
    }

    fn run(&self, ctx: TaskContext) -> BoxFuture<'static, TaskResult> {
        Box::pin(ctx.not_built("user links"))
    }

    fn routes(&self) -> Vec<Route> {
        vec![
            Route::get("/v1/links", Access::Read, || not_built("GET /v1/links", "links")),
            Route::post("/v1/links/sync", Access::Admin, || not_built("POST /v1/links/sync", "links")),
        ]
    }

    fn config_section(&self) -> &'static str {
        "links"
    }
}
