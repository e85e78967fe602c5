//! Process signals: SIGTERM/SIGINT start a graceful drain, SIGHUP reloads,
//! SIGUSR1 reopens the access log file.

use std::sync::Arc;

use crate::access_log::AccessLogSwitch;
use crate::reload::Reloader;

/// Installs the SIGTERM and SIGINT handlers *now* (so a signal that arrives
/// while listeners are still being set up is not lost to the default action)
/// and returns a future that resolves at the first of them. Must be called
/// inside the runtime.
pub fn terminate() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            },
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM/SIGINT; stop the process with SIGKILL");
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Reload the config on every SIGHUP, for as long as the process runs.
pub fn reload_on_hangup(reloader: Reloader) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reload through the admin API");
            return;
        }
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let _ = reloader.reload("SIGHUP").await;
        }
    });
}

/// Reopen the access log file on every SIGUSR1, for as long as the process runs.
pub fn reopen_log_on_user1(access_log: Arc<AccessLogSwitch>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut usr1 = match signal(SignalKind::user_defined1()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGUSR1; the access log file is never reopened");
            return;
        }
    };
    tokio::spawn(async move {
        while usr1.recv().await.is_some() {
            access_log.reopen();
        }
    });
}
