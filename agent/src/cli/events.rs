//! `pool-agent events`: Azure Scheduled Events seen and handled.

use super::Call;

pub fn call() -> Call {
    Call::get("/v1/events")
}
