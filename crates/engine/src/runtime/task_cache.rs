//! One [`Task`] per context for a macro-generated task, so every call shares one breaker.

use std::sync::{Arc, Mutex, Weak};

use crate::core::ConfigError;

use super::backstop::{Backstop, Inner};
use super::spec::TaskSpec;
use super::task::Task;

/// A lazily filled map from context to task, for `static` use by the `task` macro.
#[derive(Debug, Default)]
pub struct TaskCache {
    tasks: Mutex<Vec<(Weak<Inner>, Task)>>,
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("topic", &self.spec().topic())
            .finish()
    }
}

impl TaskCache {
    /// An empty cache (usable in a `static`).
    pub const fn new() -> TaskCache {
        TaskCache {
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// The task for `bs`, built from `spec` on first use.
    pub fn get_or_try_init(
        &self,
        bs: &Backstop,
        spec: impl FnOnce() -> Result<TaskSpec, ConfigError>,
    ) -> Result<Task, ConfigError> {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|(w, _)| w.strong_count() > 0);
        if let Some((_, t)) = tasks
            .iter()
            .find(|(w, _)| w.upgrade().is_some_and(|i| Arc::ptr_eq(&i, &bs.inner)))
        {
            return Ok(t.clone());
        }
        let task = Task::new(bs, spec()?)?;
        tasks.push((Arc::downgrade(&bs.inner), task.clone()));
        Ok(task)
    }
}
