//! Process signals: SIGTERM/SIGINT start a graceful drain, SIGHUP reloads.

use crate::reload::Reloader;

/// Resolves at the first SIGTERM or SIGINT (Ctrl-C).
pub async fn terminate() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the process");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
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
