//! Per-run state held by this proxy: today, the step counter.
//!
//! Steps are monotonic per run: two concurrent calls of one run never get the same number. The
//! common path is a read lock and one atomic add; the write lock is taken once per new run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use fleetforge_trust::RunId;

/// The runs this proxy has seen.
#[derive(Debug, Default)]
pub struct Runs {
    steps: RwLock<HashMap<RunId, Arc<AtomicU64>>>,
}

impl Runs {
    /// The next step number of `run`, starting at 1.
    pub fn next_step(&self, run: &RunId) -> u64 {
        // A poisoned lock only means another thread panicked mid-insert; the map is still valid.
        if let Some(counter) = self.steps.read().unwrap_or_else(|e| e.into_inner()).get(run) {
            return counter.fetch_add(1, Ordering::Relaxed) + 1;
        }
        let mut map = self.steps.write().unwrap_or_else(|e| e.into_inner());
        let counter = map.entry(run.clone()).or_default();
        counter.fetch_add(1, Ordering::Relaxed) + 1
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use fleetforge_trust::RunId;

    use super::Runs;

    #[test]
    fn steps_are_unique_and_monotonic_per_run_under_concurrency() {
        let runs = Arc::new(Runs::default());
        let run = RunId::new("r1").unwrap();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (runs, run) = (runs.clone(), run.clone());
                std::thread::spawn(move || (0..1000).map(|_| runs.next_step(&run)).collect::<Vec<_>>())
            })
            .collect();
        let mut all = HashSet::new();
        for h in handles {
            let steps = h.join().unwrap();
            assert!(steps.windows(2).all(|w| w[0] < w[1]));
            all.extend(steps);
        }
        assert_eq!(all.len(), 4000);
        assert_eq!(all.iter().max(), Some(&4000));
        assert_eq!(runs.next_step(&RunId::new("other").unwrap()), 1);
    }
}
