//! Azure reporting: custom metrics, scale-in protection, Scheduled Events and
//! the health endpoint, fed by the idle verdict from the core's shared state.
//!
//! Not built yet: the task says so in `pool-agent status`, and its API
//! routes answer 501 with a JSON error.

use crate::core::capability::Capability;
use crate::core::component::ComponentId;
use crate::core::http::{not_built, Access, Route};
use crate::core::task::{TaskContext, TaskResult};
use futures_util::future::BoxFuture;

pub struct Azure;

impl Capability for Azure {
    fn id(&self) -> ComponentId {
        ComponentId::Azure
    }

    fn run(&self, ctx: TaskContext) -> BoxFuture<'static, TaskResult> {
        Box::pin(ctx.not_built("Azure reporting"))
    }

    fn routes(&self) -> Vec<Route> {
        vec![Route::get("/v1/events", Access::Read, || not_built("GET /v1/events", "Azure reporting"))]
    }

    fn config_section(&self) -> &'static str {
        "azure"
    }
}
