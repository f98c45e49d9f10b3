//! Sign-in throttling: after a few failures for one email from one client address, each
//! further attempt waits a delay that doubles up to a cap. Keying on the address as well
//! means a stranger hammering someone's email does not lock its owner out, and the cap
//! means nobody is ever locked out for longer than it.
//!
//! The state lives in the process: with several auth replicas each keeps its own counts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use llmesh_kit::Clock;

/// How the throttle behaves.
#[derive(Debug, Clone, Copy)]
pub struct ThrottlePolicy {
    pub free_failures: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    pub window: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last_failure: DateTime<Utc>,
    blocked_until: DateTime<Utc>,
}

/// Tracks recent failures per (email, client address).
pub struct LoginThrottle {
    policy: ThrottlePolicy,
    clock: Arc<dyn Clock>,
    entries: Mutex<HashMap<(String, String), Entry>>,
}

/// Entries kept before old ones are swept.
const SWEEP_AT: usize = 10_000;

impl LoginThrottle {
    pub fn new(policy: ThrottlePolicy, clock: Arc<dyn Clock>) -> Self {
        LoginThrottle {
            policy,
            clock,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Returns how long to wait when an attempt is not allowed now.
    pub fn check(&self, email: &str, client: &str) -> Option<StdDuration> {
        let now = self.clock.now();
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.get(&(email.to_owned(), client.to_owned()))?;
        (entry.blocked_until > now).then(|| {
            (entry.blocked_until - now)
                .to_std()
                .unwrap_or(StdDuration::from_secs(1))
        })
    }

    /// Counts a failed attempt.
    pub fn failed(&self, email: &str, client: &str) {
        let now = self.clock.now();
        let policy = self.policy;
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= SWEEP_AT {
            entries.retain(|_, e| now - e.last_failure < policy.window);
        }
        let entry = entries
            .entry((email.to_owned(), client.to_owned()))
            .or_insert(Entry {
                failures: 0,
                last_failure: now,
                blocked_until: now,
            });
        if now - entry.last_failure >= policy.window {
            entry.failures = 0;
        }
        entry.failures += 1;
        entry.last_failure = now;
        if entry.failures > policy.free_failures {
            let doublings = (entry.failures - policy.free_failures - 1).min(20);
            let delay = policy.base_delay * (1i32 << doublings);
            entry.blocked_until = now + delay.min(policy.max_delay);
        }
    }

    /// Forgets the failures after a successful sign-in.
    pub fn succeeded(&self, email: &str, client: &str) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(email.to_owned(), client.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmesh_kit::ManualClock;

    fn throttle() -> (Arc<ManualClock>, LoginThrottle) {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let policy = ThrottlePolicy {
            free_failures: 3,
            base_delay: Duration::seconds(2),
            max_delay: Duration::seconds(10),
            window: Duration::minutes(15),
        };
        (clock.clone(), LoginThrottle::new(policy, clock))
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let (clock, t) = throttle();
        for _ in 0..3 {
            assert!(t.check("a@x", "ip1").is_none());
            t.failed("a@x", "ip1");
        }
        assert!(t.check("a@x", "ip1").is_none());
        t.failed("a@x", "ip1");
        assert_eq!(t.check("a@x", "ip1"), Some(StdDuration::from_secs(2)));
        clock.advance(Duration::seconds(2));
        assert!(t.check("a@x", "ip1").is_none());
        t.failed("a@x", "ip1");
        assert_eq!(t.check("a@x", "ip1"), Some(StdDuration::from_secs(4)));
        for _ in 0..10 {
            clock.advance(Duration::seconds(60));
            t.failed("a@x", "ip1");
        }
        assert_eq!(t.check("a@x", "ip1"), Some(StdDuration::from_secs(10)));
    }

    #[test]
    fn other_clients_and_successes_are_not_affected() {
        let (_clock, t) = throttle();
        for _ in 0..6 {
            t.failed("a@x", "attacker");
        }
        assert!(t.check("a@x", "attacker").is_some());
        assert!(t.check("a@x", "owner").is_none());
        t.succeeded("a@x", "attacker");
        assert!(t.check("a@x", "attacker").is_none());
    }

    #[test]
    fn old_failures_are_forgotten() {
        let (clock, t) = throttle();
        for _ in 0..3 {
            t.failed("a@x", "ip");
        }
        clock.advance(Duration::minutes(16));
        t.failed("a@x", "ip");
        assert!(t.check("a@x", "ip").is_none());
    }
}
