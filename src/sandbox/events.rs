//! Lifecycle events of pods and containers, as kubelet's evented PLEG consumes them
//! through CRI `GetContainerEvents`: each change of state is announced once, to
//! every subscriber, in the order it was recorded. A pod sandbox announces its own
//! changes under its id, as containerd does.

use tokio::sync::broadcast;

/// How many events a slow subscriber may fall behind before it misses some (and is
/// told so); kubelet then relists, as it does on any gap.
const BACKLOG: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleChange {
    Created,
    Started,
    Stopped,
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleEvent {
    /// The container's id, or the pod's for a change of the sandbox itself.
    pub id: String,
    pub pod_id: String,
    pub change: LifecycleChange,
    pub at_nanos: i64,
}

pub struct LifecycleEvents {
    sender: broadcast::Sender<LifecycleEvent>,
}

impl Default for LifecycleEvents {
    fn default() -> Self {
        LifecycleEvents { sender: broadcast::channel(BACKLOG).0 }
    }
}

impl LifecycleEvents {
    pub fn announce(&self, id: &str, pod_id: &str, change: LifecycleChange, at_nanos: i64) {
        // No subscriber is not an error: events are not kept for later ones.
        let _ = self.sender.send(LifecycleEvent { id: id.to_string(), pod_id: pod_id.to_string(), change, at_nanos });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<LifecycleEvent> {
        self.sender.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_subscriber_gets_every_event_in_order() {
        let events = LifecycleEvents::default();
        let (mut first, mut second) = (events.subscribe(), events.subscribe());
        events.announce("c1", "p1", LifecycleChange::Created, 1);
        events.announce("c1", "p1", LifecycleChange::Started, 2);
        for receiver in [&mut first, &mut second] {
            assert_eq!(receiver.recv().await.unwrap().change, LifecycleChange::Created);
            assert_eq!(receiver.recv().await.unwrap().change, LifecycleChange::Started);
        }
    }

    #[tokio::test]
    async fn a_subscriber_too_far_behind_learns_it_missed_events() {
        let events = LifecycleEvents::default();
        let mut late = events.subscribe();
        for at in 0..(BACKLOG as i64 + 5) {
            events.announce("c", "p", LifecycleChange::Stopped, at);
        }
        assert!(matches!(late.recv().await, Err(broadcast::error::RecvError::Lagged(5))));
    }
}
