//! Names reserved before any work, as containerd's name registrar does: a pod's
//! (name, namespace, uid, attempt) and a container's (pod, name, attempt) belong to
//! one id from the moment a create call starts. Two calls racing for one name
//! cannot both get past the reservation, and a failed create gives its name back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Name → id of every pod and container that exists or is being created.
#[derive(Clone, Default)]
pub struct NameRegistry {
    names: Arc<Mutex<HashMap<String, String>>>,
}

/// A name held for a create that is under way. Dropped without [`Reservation::keep`]
/// (the create failed, or its task was cancelled), it frees the name again.
#[must_use = "a reservation dropped at once frees its name again"]
pub struct Reservation {
    registry: NameRegistry,
    name: String,
    kept: bool,
}

impl Reservation {
    /// The create succeeded: the name stays taken until [`NameRegistry::release`].
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.kept {
            self.registry.release(&self.name);
        }
    }
}

impl NameRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        // The map holds plain strings; a panic elsewhere cannot leave it half-changed.
        self.names.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes `name` for `id`, or answers the id that already holds it.
    pub fn reserve(&self, name: String, id: &str) -> Result<Reservation, String> {
        let mut names = self.lock();
        if let Some(holder) = names.get(&name) {
            return Err(holder.clone());
        }
        names.insert(name.clone(), id.to_string());
        Ok(Reservation { registry: self.clone(), name, kept: false })
    }

    /// Records a name that already belongs to an existing object (at start-up).
    pub fn claim(&self, name: String, id: &str) {
        self.lock().insert(name, id.to_string());
    }

    /// Frees `name`, once the object holding it was removed.
    pub fn release(&self, name: &str) {
        self.lock().remove(name);
    }
}

/// The registry key of a pod: containerd's sandbox name.
pub fn pod_name(name: &str, namespace: &str, uid: &str, attempt: u32) -> String {
    format!("pod\0{name}\0{namespace}\0{uid}\0{attempt}")
}

/// The registry key of a container of `pod_id`.
pub fn container_name(pod_id: &str, name: &str, attempt: u32) -> String {
    format!("container\0{pod_id}\0{name}\0{attempt}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_has_one_holder_until_released() {
        let registry = NameRegistry::default();
        let name = pod_name("web", "default", "u1", 0);
        let held = registry.reserve(name.clone(), "a").unwrap();
        assert_eq!(registry.reserve(name.clone(), "b").err().as_deref(), Some("a"));
        held.keep();
        assert_eq!(registry.reserve(name.clone(), "b").err().as_deref(), Some("a"));
        registry.release(&name);
        registry.reserve(name, "b").unwrap().keep();
    }

    #[test]
    fn a_dropped_reservation_frees_its_name() {
        let registry = NameRegistry::default();
        let name = container_name("pod", "app", 1);
        drop(registry.reserve(name.clone(), "a").unwrap());
        assert!(registry.reserve(name, "b").is_ok());
    }

    #[test]
    fn fields_cannot_run_into_each_other() {
        assert_ne!(pod_name("a_b", "c", "u", 0), pod_name("a", "b_c", "u", 0));
        assert_ne!(container_name("p", "x", 1), container_name("p", "x", 11));
    }
}
