//! The registry: every capability, in boot order. Adding a capability is its
//! folder, its `ComponentId` variant and one line here (plus its CLI module).

use crate::core::capability::Capability;
use crate::core::clock::SharedClock;
use std::sync::Arc;

pub fn capabilities(clock: &SharedClock) -> Vec<Arc<dyn Capability>> {
    vec![
        Arc::new(crate::share::ShareHandle::system(clock.clone())),
        Arc::new(crate::links::Links::new()),
        Arc::new(crate::scripts::Scripts::new(clock.clone())),
        Arc::new(crate::idle::Idle::new(clock.clone())),
        Arc::new(crate::azure::Azure::new(clock.clone())),
        Arc::new(crate::pool::Pool::new()),
        Arc::new(crate::users::Users::new()),
    ]
}

/// The components `status` lists, in order: the daemon's own, then the registry's.
pub fn component_ids(capabilities: &[Arc<dyn Capability>]) -> Vec<crate::core::component::ComponentId> {
    crate::core::component::ComponentId::DAEMON.into_iter().chain(capabilities.iter().map(|c| c.id())).collect()
}

/// The component names `status` lists, for tests and tools.
pub fn component_names() -> Vec<&'static str> {
    component_ids(&capabilities(&crate::core::clock::system())).into_iter().map(|id| id.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_capability_has_its_own_id_section_and_routes() {
        let all = capabilities(&crate::core::clock::system());
        let ids: HashSet<_> = all.iter().map(|c| c.id()).collect();
        assert_eq!(ids.len(), all.len(), "two capabilities share an id");
        let sections: HashSet<_> = all.iter().map(|c| c.config_section()).collect();
        assert_eq!(sections.len(), all.len(), "two capabilities claim one config section");
        let mut seen = HashSet::new();
        for capability in &all {
            for route in capability.routes() {
                assert!(seen.insert((route.method.clone(), route.path)), "{} {} twice", route.method, route.path);
            }
        }
        assert_eq!(component_names(), ["config", "api", "share", "links", "scripts", "idle", "azure", "pool", "users"]);
    }
}
