//! The publisher's side of runtime control (`PATCH .../instances/{id}`).
//!
//! A configured backend's [`Overrides`] live here, keyed by service and
//! address, and are laid over the config's declarations at every rebuild;
//! one whose backend a reload removed is forgotten (so it does not come
//! back with the address later). A registered instance's live in its
//! registration; either way the live backend is changed at once, before the
//! admin API answers, so a drain or weight 0 counts from that moment (the
//! rebuild that moves it out of the ready list comes after).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::Publisher;
use crate::backend::{Backend, Source};
use crate::overrides::{Overrides, Patch};
use crate::source::Declared;

/// Overrides of configured backends, by (service, address).
pub(super) type ConfiguredOverrides = HashMap<(Arc<str>, Arc<str>), Overrides>;

/// Lay `overrides` over the config's declarations, and forget those whose
/// backend is no longer in the config.
pub(super) fn apply(overrides: &mut ConfiguredOverrides, declared: &mut [Declared]) {
    if overrides.is_empty() {
        return;
    }
    let mut seen = HashSet::with_capacity(overrides.len());
    for d in declared.iter_mut().filter(|d| d.source == Source::Config) {
        let key = (Arc::clone(&d.service), Arc::clone(&d.id));
        if let Some(o) = overrides.get(&key) {
            d.weight = o.weight(d.weight);
            d.drain = o.drain;
            seen.insert(key);
        }
    }
    overrides.retain(|key, _| seen.contains(key));
}

impl Publisher {
    /// `PATCH` a configured backend of `service` (id = its `host:port` as
    /// written): `None` when the config lists no such backend. Applied to
    /// the live backend at once, then republished.
    pub fn patch_configured(
        &self,
        service: &str,
        id: &str,
        patch: Patch,
    ) -> Option<(Arc<Backend>, Overrides)> {
        let mut state = self.lock();
        let declared = state
            .config
            .services
            .get(service)?
            .backends
            .iter()
            .find(|b| b.address == id)?
            .weight;
        let key: (Arc<str>, Arc<str>) = (Arc::from(service), Arc::from(id));
        let current = state.overrides.get(&key).copied().unwrap_or_default();
        let next = current.patched(patch);
        if next.is_empty() {
            state.overrides.remove(&key);
        } else {
            state.overrides.insert(key, next);
        }
        let backend = state.members.find(service, Source::Config, id).cloned();
        if let Some(backend) = &backend {
            apply_now(backend, next, declared);
        }
        self.publish_rebuilt(&mut state);
        let backend =
            backend.or_else(|| state.members.find(service, Source::Config, id).cloned())?;
        Some((backend, next))
    }

    /// A registered instance's overrides changed: apply them to its live
    /// backend now (the rebuild the registry asks for follows).
    pub fn instance_overrides(&self, service: &str, id: &str, overrides: Overrides, declared: u32) {
        if let Some(backend) = self.lock().members.find(service, Source::Registry, id) {
            apply_now(backend, overrides, declared);
        }
    }
}

fn apply_now(backend: &Backend, overrides: Overrides, declared: u32) {
    backend.set_weight(overrides.weight(declared));
    backend.set_admin_drain(overrides.drain);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;

    fn config(backends: &str) -> Arc<Config> {
        let toml = format!("[services.a]\nbackends = [{backends}]\n");
        let config = Config::from_toml_str(&toml, std::path::Path::new("t.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        Arc::new(config)
    }

    fn ready_ids(p: &Publisher) -> Vec<String> {
        let table = p.table().load_full();
        let service = table.service("a").map(Arc::clone);
        service.map_or_else(Vec::new, |s| {
            s.ready.iter().map(|b| b.id.to_string()).collect()
        })
    }

    #[test]
    fn a_configured_override_lasts_while_the_backend_stays_in_the_config() {
        let both = config("\"127.0.0.1:9001\", \"127.0.0.1:9002\"");
        let p = Publisher::new(Arc::clone(&both), Metrics::new());
        let drain = Patch {
            weight: None,
            drain: Some(true),
        };
        let (backend, o) = p
            .patch_configured("a", "127.0.0.1:9001", drain)
            .expect("configured");
        assert!(o.drain && !backend.takes_new_requests());
        assert_eq!(ready_ids(&p), ["127.0.0.1:9002"]);
        p.apply_config(Arc::clone(&both));
        assert_eq!(ready_ids(&p), ["127.0.0.1:9002"], "a reload keeps it");
        p.apply_config(config("\"127.0.0.1:9002\""));
        p.apply_config(Arc::clone(&both));
        assert_eq!(ready_ids(&p).len(), 2, "removed from the config: forgotten");
        let zero = Patch {
            weight: Some(Some(0)),
            drain: None,
        };
        let (backend, _) = p
            .patch_configured("a", "127.0.0.1:9002", zero)
            .expect("configured");
        assert_eq!(backend.weight(), 0);
        assert_eq!(ready_ids(&p), ["127.0.0.1:9001"]);
        assert!(p.patch_configured("a", "127.0.0.1:9999", zero).is_none());
        assert!(p.patch_configured("b", "127.0.0.1:9001", zero).is_none());
    }
}
