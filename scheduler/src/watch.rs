//! Wake-ups for long-polls: an agent's assignments long-poll waits on its own channel, which is signalled only
//! when a committed change touches that agent, so thousands of waiting agents cost nothing while others' work
//! is committed.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

#[derive(Default)]
pub struct Watchers {
    agents: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Watchers {
    /// A receiver that changes whenever the agent's assignments version does.
    pub fn subscribe(&self, agent: &str) -> watch::Receiver<u64> {
        let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        agents.entry(agent.to_string()).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    /// Signals the agents a batch of applied commands touched.
    pub fn notify(&self, touched: impl IntoIterator<Item = (String, u64)>) {
        let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        for (agent, version) in touched {
            if let Some(tx) = agents.get(&agent) {
                tx.send_replace(version);
            }
        }
        // Channels nobody listens to any more are dropped; a later subscribe makes a new one.
        if agents.len() > 64 && agents.values().filter(|t| t.receiver_count() == 0).count() > agents.len() / 2 {
            agents.retain(|_, t| t.receiver_count() > 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_touched_agent_wakes() {
        let w = Watchers::default();
        let mut a = w.subscribe("a");
        let mut b = w.subscribe("b");
        w.notify([("a".to_string(), 7)]);
        assert!(a.has_changed().expect("open"));
        assert_eq!(*a.borrow_and_update(), 7);
        assert!(!b.has_changed().expect("open"));
        w.notify([("b".to_string(), 9)]);
        b.changed().await.expect("woken");
        assert_eq!(*b.borrow(), 9);
    }
}
