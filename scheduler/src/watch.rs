//! What the applier hands on after each batch of committed entries: wake-ups for assignments long-polls (each
//! agent waits on its own channel, signalled only when a change touches it, so thousands of waiting agents cost
//! nothing while others' work is committed), and the event stream (a bounded log of recent events plus a
//! broadcast of new ones).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use titan_api::event::Event;
use tokio::sync::{broadcast, watch};

/// Events kept for subscribers that resume from an event id; one who fell further behind is told so (`expired`)
/// and re-reads the state, as a Kubernetes watch does. A burst of 100,000 tasks makes that many events within
/// seconds, so a longer log bought little window for its memory (100,000 kept events were about 30 MiB of a
/// leader's heap; Nomad keeps 100 by default).
pub const EVENTS_KEPT: usize = 32_768;
/// Events a slow subscriber may fall behind before its stream ends (it resumes from its last event id).
pub const EVENTS_BUFFERED: usize = 16_384;

pub struct EventLog {
    inner: Mutex<Kept>,
    tx: broadcast::Sender<Event>,
}

struct Kept {
    events: VecDeque<Event>,
    /// Events with this id or a lower one are no longer kept (or were never seen by this member).
    forgotten: u64,
}

impl EventLog {
    /// A log that knows no event up to `made`, the last event id of the state it starts from.
    pub fn new(made: u64) -> EventLog {
        EventLog {
            inner: Mutex::new(Kept { events: VecDeque::new(), forgotten: made }),
            tx: broadcast::channel(EVENTS_BUFFERED).0,
        }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn publish(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let mut kept = self.kept();
        for e in events {
            if kept.events.len() == EVENTS_KEPT {
                if let Some(old) = kept.events.pop_front() {
                    kept.forgotten = kept.forgotten.max(old.event_id);
                }
            }
            // Sent under the lock, so a subscriber never misses one between its backlog and its receiver.
            let _ = self.tx.send(e.clone());
            kept.events.push_back(e);
        }
    }

    /// After a snapshot replaced the state: the events up to its last one, `made`, are not kept.
    pub fn reset(&self, made: u64) {
        let mut kept = self.kept();
        kept.events.clear();
        kept.forgotten = made;
    }

    /// The kept events after event id `from` and a receiver of new ones; `Err(oldest)` when events after `from`
    /// were already forgotten (resume from `oldest` or re-read the state).
    pub fn subscribe(&self, from: Option<u64>) -> Result<(Vec<Event>, broadcast::Receiver<Event>), u64> {
        let kept = self.kept();
        let rx = self.tx.subscribe();
        let Some(from) = from else { return Ok((Vec::new(), rx)) };
        if from < kept.forgotten {
            return Err(kept.forgotten);
        }
        let start = kept.events.partition_point(|e| e.event_id <= from);
        Ok((kept.events.range(start..).cloned().collect(), rx))
    }
}

#[derive(Default)]
pub struct Watchers {
    agents: Mutex<Channels>,
}

#[derive(Default)]
struct Channels {
    by_agent: HashMap<String, watch::Sender<u64>>,
    /// How many channels were left after the last sweep of unwatched ones: the next sweep waits until there are
    /// twice as many, so sweeping costs O(1) per notification however many agents there are.
    swept: usize,
}

impl Watchers {
    /// A receiver that changes whenever the agent's assignments version does.
    pub fn subscribe(&self, agent: &str) -> watch::Receiver<u64> {
        let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        agents.by_agent.entry(agent.to_string()).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    /// Signals the agents a batch of applied commands touched.
    pub fn notify(&self, touched: impl IntoIterator<Item = (String, u64)>) {
        let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        for (agent, version) in touched {
            if let Some(tx) = agents.by_agent.get(&agent) {
                tx.send_replace(version);
            }
        }
        // Channels nobody listens to any more are dropped; a later subscribe makes a new one. Counting the
        // unwatched ones on every notification was a pass over every agent per applied batch.
        if agents.by_agent.len() > 64.max(2 * agents.swept) {
            agents.by_agent.retain(|_, t| t.receiver_count() > 0);
            agents.swept = agents.by_agent.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Event `event_id`, made by Raft entry `index`.
    fn event(event_id: u64, index: u64) -> Event {
        Event {
            event_id,
            index,
            topic: titan_api::event::Topic::Job,
            kind: "created".into(),
            id: format!("j{event_id}"),
            job_id: None,
            agent_id: None,
            reason: None,
            at_ms: 0,
            cell: None,
            who: None,
        }
    }

    fn ids(events: &[Event]) -> Vec<u64> {
        events.iter().map(|e| e.event_id).collect()
    }

    #[tokio::test]
    async fn subscribers_resume_from_an_event_id_and_get_what_follows() {
        let log = EventLog::new(10);
        assert_eq!(log.subscribe(Some(5)).map(|_| ()), Err(10), "before the log's start");
        log.publish(vec![event(11, 3), event(12, 4), event(13, 4), event(14, 5)]);
        let (backlog, mut rx) = log.subscribe(Some(11)).expect("kept");
        assert_eq!(ids(&backlog), vec![12, 13, 14]);
        log.publish(vec![event(15, 6)]);
        assert_eq!(rx.recv().await.map(|e| e.event_id).ok(), Some(15));
        log.reset(20);
        assert_eq!(log.subscribe(Some(14)).map(|_| ()), Err(20));
    }

    #[test]
    fn resuming_inside_one_entrys_events_gets_the_rest_of_them() {
        let log = EventLog::new(0);
        // One Raft entry (index 4) made four events, as a batch of commands does.
        log.publish(vec![event(1, 2), event(2, 4), event(3, 4), event(4, 4), event(5, 4), event(6, 7)]);
        for from in 0..=6 {
            let (backlog, _) = log.subscribe(Some(from)).expect("kept");
            assert_eq!(ids(&backlog), (from + 1..=6).collect::<Vec<_>>(), "from {from}");
        }
    }

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

    #[test]
    fn unwatched_channels_are_swept_once_they_double_and_watched_ones_stay() {
        let w = Watchers::default();
        let kept: Vec<_> = (0..10).map(|i| w.subscribe(&format!("kept-{i}"))).collect();
        for i in 0..1000 {
            drop(w.subscribe(&format!("gone-{i}")));
            w.notify([]);
            let len = w.agents.lock().expect("channels").by_agent.len();
            assert!(len <= 130, "swept as the map doubles: {len} after {i}");
        }
        w.notify([("kept-3".to_string(), 5)]);
        assert_eq!(*kept[3].borrow(), 5, "a watched channel survives every sweep");
        assert!(kept.iter().all(|k| k.has_changed().is_ok()));
    }
}
