//! [`Dependency`]: a small handle through which a simulation injects outages and slowness into
//! the user's own downstream (a database, a payment API), from inside the user's handler.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop_engine::runtime::HandlerError;

type Listener = Box<dyn Fn(bool) + Send + Sync>;

#[derive(Default)]
struct State {
    down: u32,
    slow: Vec<Duration>,
    calls: u64,
    failed: u64,
    listeners: Vec<Listener>,
}

/// One of the user's downstream dependencies, as the simulation sees it: the fault schedule
/// takes it down (every [`call`](Self::call) fails with a connection error) or slows it down
/// (every call waits longer), and heals it. Clone it into the handler and call it where the
/// real dependency is called.
///
/// ```
/// use backstop_testkit::Simulation;
/// let mut sim = Simulation::new(7);
/// let store = sim.dependency("user store");
/// let handler = move |_m: serde_json::Value| {
///     let store = store.clone();
///     async move {
///         store.call().await?; // fails while the simulated store is down
///         Ok::<(), backstop_engine::runtime::HandlerError>(())
///     }
/// };
/// # let _ = handler;
/// ```
#[derive(Clone)]
pub struct Dependency {
    name: Arc<str>,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for Dependency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dependency")
            .field("name", &self.name)
            .field("down", &self.is_down())
            .finish()
    }
}

impl Dependency {
    pub(crate) fn new(name: &str) -> Dependency {
        Dependency {
            name: Arc::from(name),
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether an outage is under way.
    pub fn is_down(&self) -> bool {
        self.lock().down > 0
    }

    /// Calls made so far, and how many of them the simulation failed.
    pub fn calls(&self) -> (u64, u64) {
        let s = self.lock();
        (s.calls, s.failed)
    }

    /// One call to the dependency: waits as long as a slow window says, then fails with a
    /// connection error while an outage is under way.
    pub async fn call(&self) -> Result<(), HandlerError> {
        let delay = self.lock().slow.iter().copied().max();
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let mut s = self.lock();
        s.calls += 1;
        if s.down > 0 {
            s.failed += 1;
            return Err(HandlerError::connection(format!(
                "{} unavailable (simulated outage)",
                self.name
            )));
        }
        Ok(())
    }

    /// Also tells `f` when an outage starts (`true`) and ends (`false`): for code that checks a
    /// switch of its own instead of calling [`call`](Self::call).
    pub fn on_outage(self, f: impl Fn(bool) + Send + Sync + 'static) -> Dependency {
        self.lock().listeners.push(Box::new(f));
        self
    }

    pub(crate) fn outage(&self, on: bool) {
        let mut s = self.lock();
        let was = s.down > 0;
        if on {
            s.down += 1;
        } else {
            s.down = s.down.saturating_sub(1);
        }
        let now = s.down > 0;
        if was != now {
            for l in &s.listeners {
                l(now);
            }
        }
    }

    pub(crate) fn slow(&self, extra: Duration, on: bool) {
        let mut s = self.lock();
        if on {
            s.slow.push(extra);
        } else if let Some(i) = s.slow.iter().position(|d| *d == extra) {
            s.slow.remove(i);
        }
    }

    pub(crate) fn heal(&self) {
        let mut s = self.lock();
        s.slow.clear();
        if s.down > 0 {
            s.down = 0;
            for l in &s.listeners {
                l(false);
            }
        }
    }
}
