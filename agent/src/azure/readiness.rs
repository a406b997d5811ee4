//! The load balancer's question, "can this VM take a new session?", on
//! `azure.readiness_listen` (`GET /ready`: 200 `ready` or 503 `not ready`,
//! no detail). A VM that says no keeps its established sessions: a Standard
//! Load Balancer sends only new flows elsewhere when one instance's probe is
//! down (<https://learn.microsoft.com/azure/load-balancer/load-balancer-custom-probe-overview>).
//! The probe only answers; it never touches a session. The agent's firewall
//! table lets only the probes' address reach the port.

use super::{demand, listener, Azure};
use crate::config::{Settings, READINESS_PATH};
use crate::core::component::ComponentId;
use crate::core::task::TaskContext;

/// Why the VM is going away, from the events it handles and its self-delete.
pub(super) fn going_away(
    events: &super::events::EventsReport,
    self_delete: &super::delete::DeleteView,
) -> Option<String> {
    let event = events
        .events
        .iter()
        .find(|e| matches!(e.kind.as_str(), "Terminate" | "Preempt") && !e.handling.starts_with("not ours"));
    if let Some(event) = event {
        return Some(format!("{} {} ({})", event.kind, event.id, event.handling));
    }
    // Only a delete Azure accepted: a VM still deciding, or retrying a refused
    // one, stays in service (else a lasting refusal keeps it out for ever).
    match self_delete.state.as_str() {
        "requested" | "deleted" => Some(format!("deleting itself ({})", self_delete.state)),
        _ => None,
    }
}

impl Azure {
    /// What the VM offers the pool now; `None` before the task started.
    pub(super) fn offer_now(&self) -> Option<demand::Offer> {
        let inputs = self.0.inputs.get()?;
        let events = self.0.events.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let self_delete = self.0.self_delete.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let components = inputs.board.components();
        let scripts = components.iter().find(|c| c.name == ComponentId::Scripts.as_str()).map(|c| c.state);
        let (idle, share) = (inputs.shared.idle(), inputs.shared.share());
        Some(demand::judge(&demand::Situation {
            idle: &idle,
            share: &share,
            scripts,
            going_away: going_away(&events, &self_delete),
            healthy: self.health_now().is_none_or(|h| h.healthy),
            max_sessions: inputs.settings.borrow().pool.max_sessions,
            now: self.now(),
        }))
    }
}

/// The readiness port, for the firewall table (`None`: no listener).
pub(super) fn port(settings: &Settings) -> Option<u16> {
    settings.azure.readiness_listen.parse::<std::net::SocketAddr>().ok().map(|a| a.port())
}

/// Opens (or keeps, when the address is the same) the readiness listener.
pub(super) async fn readiness_server(ctx: &TaskContext, azure: &Azure, settings: &Settings) {
    let listen = settings.azure.readiness_listen.clone();
    let mut held = azure.0.readiness.lock().await;
    if held.as_ref().is_some_and(|l| l.addr() == listen) {
        azure.update(|r| r.readiness_listen = listen.clone());
        return;
    }
    *held = None;
    azure.update(|r| r.readiness_listen = listen.clone());
    if listen.is_empty() {
        return;
    }
    let answer_from = azure.clone();
    let answer: listener::Answer = std::sync::Arc::new(move || {
        let ready = answer_from.offer_now().is_some_and(|o| o.ready.is_ok());
        listener::Reply {
            ok: ready,
            content_type: "text/plain",
            body: if ready { "ready\n" } else { "not ready\n" }.to_string(),
        }
    });
    match listener::ProbeListener::bind(&listen, READINESS_PATH, answer, ctx.shutdown.clone()).await {
        Ok(listening) => {
            *held = Some(listening);
            azure.0.problems.set("readiness", None);
        }
        Err(err) => {
            let why = format!("readiness endpoint {listen}: {}", crate::config::io_text(&err));
            tracing::warn!(component = "azure", "cannot answer the load balancer's probes: {why}");
            azure.0.problems.set("readiness", Some(why));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azure::delete::DeleteView;
    use crate::azure::events::{EventView, EventsReport};

    fn event(kind: &str, handling: &str) -> EventView {
        EventView { id: "E-1".into(), kind: kind.into(), handling: handling.into(), ..EventView::default() }
    }

    #[test]
    fn only_this_vm_s_terminate_or_an_accepted_delete_takes_it_out_of_service() {
        let none = EventsReport::default();
        let view = |state: &str| DeleteView { state: state.into(), ..DeleteView::default() };
        // A delete still deciding, or retrying one Azure refused (lost answer, 429, 409):
        // the VM stays in service, else a lasting refusal keeps it out for ever.
        for staying in ["", "waiting", "deciding", "retrying", "off"] {
            assert_eq!(going_away(&none, &view(staying)), None, "{staying}");
        }
        for leaving in ["requested", "deleted"] {
            assert!(going_away(&none, &view(leaving)).is_some_and(|w| w.contains(leaving)), "{leaving}");
        }
        let ours =
            EventsReport { events: vec![event("Preempt", "draining: nobody at work")], ..EventsReport::default() };
        assert!(going_away(&ours, &view("")).is_some_and(|w| w.starts_with("Preempt E-1")));
        let other_vm = EventsReport { events: vec![event("Terminate", "not ours (names pool_7)")], ..none.clone() };
        assert_eq!(going_away(&other_vm, &view("")), None, "another VM's event");
        let freeze = EventsReport { events: vec![event("Freeze", "approved")], ..none };
        assert_eq!(going_away(&freeze, &view("")), None, "a Freeze does not remove the VM");
    }
}
