//! The control plane's thread: the admin API, the registry's tasks, config
//! reloads, table rebuilds and the sweepers run here, on a runtime of their own, so that a
//! burst of registrations, a large `/metrics` scrape or a rebuild of a
//! 10,000-backend table never holds up a proxy worker. (Envoy splits its
//! main thread from its workers for the same reason.)
//!
//! A thread of its own is not enough when it shares a core with a worker:
//! the kernel lets a running thread finish its time slice (about a
//! millisecond) before a woken worker gets the core, whatever the nice
//! values. So by default (`admin.priority = "background"`) the thread runs
//! under Linux's `SCHED_IDLE` policy, which a woken worker always preempts
//! at once. The price: while every core is 100 % busy with proxy work the
//! control plane gets only crumbs of CPU, and the admin API answers slowly;
//! `"normal"` gives it a fair share instead. Health checks stay on the
//! proxy's runtime either way: a probe must not time out because the
//! control plane was waiting for a core.

use std::future::Future;
use std::io;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

use crate::config::ControlPriority;

/// A running control-plane thread. Dropping it stops the thread's runtime,
/// cancelling whatever still runs there. The thread is not joined: dropping
/// may happen on a runtime thread, which must not block; it ends on its own
/// once its runtime has shut down.
#[derive(Debug)]
pub struct ControlPlane {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
}

impl ControlPlane {
    /// Start the thread and its single-threaded runtime.
    pub fn start(priority: ControlPriority) -> io::Result<ControlPlane> {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("switchyard-control".into())
            .spawn(move || {
                set_priority(priority);
                let runtime = match Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(runtime.handle().clone()));
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        let handle = handle_rx
            .recv()
            .map_err(|_| io::Error::other("the control thread ended before it started"))??;
        Ok(ControlPlane {
            handle,
            stop: Some(stop),
        })
    }

    /// Run `task` on the control thread.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }

    /// Run `work` in the control thread's runtime context (so what it
    /// spawns with `tokio::spawn` lands on the control thread).
    pub fn enter<R>(&self, work: impl FnOnce() -> R) -> R {
        let _guard = self.handle.enter();
        work()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Give this thread (and the blocking-pool threads it will spawn, which
/// inherit the policy) its scheduling priority. Lowering one's own priority
/// needs no privilege; a failure only costs the preference, so it is logged,
/// not fatal.
fn set_priority(priority: ControlPriority) {
    if priority == ControlPriority::Normal {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
            ThreadPriority, ThreadPriorityOsValue, ThreadSchedulePolicy,
        };
        let background = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
        let static_priority = ThreadPriority::Os(ThreadPriorityOsValue::default());
        if let Err(e) =
            set_thread_priority_and_policy(thread_native_id(), static_priority, background)
        {
            tracing::warn!(error = ?e, "cannot lower the control plane's priority; it shares the CPU with the proxy's workers equally");
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use thread_priority::{
        thread_schedule_policy, NormalThreadSchedulePolicy, ThreadSchedulePolicy,
    };

    use super::*;

    async fn policy_of(priority: ControlPriority) -> ThreadSchedulePolicy {
        let control = ControlPlane::start(priority).expect("control thread");
        let on_thread = control.spawn(async {
            let name = std::thread::current().name().map(str::to_owned);
            (name, thread_schedule_policy().expect("policy"))
        });
        let (name, policy) = on_thread.await.expect("task");
        assert_eq!(name.as_deref(), Some("switchyard-control"));
        policy
    }

    #[tokio::test]
    async fn background_yields_to_the_workers_and_normal_does_not() {
        assert_eq!(
            policy_of(ControlPriority::Background).await,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle)
        );
        assert_eq!(
            policy_of(ControlPriority::Normal).await,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other)
        );
        // The test's own thread is untouched.
        assert_eq!(
            thread_schedule_policy().expect("policy"),
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other)
        );
    }

    #[tokio::test]
    async fn dropping_the_control_plane_cancels_its_tasks() {
        let control = ControlPlane::start(ControlPriority::Normal).expect("control thread");
        let forever = control.spawn(std::future::pending::<()>());
        drop(control);
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), forever).await;
        assert!(ended.expect("the task ends").unwrap_err().is_cancelled());
    }
}
