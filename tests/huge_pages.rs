//! `switchyard serve` declines transparent huge pages (they inflated the
//! resident size per registered instance ~2.3×, issue 13 item 3), unless
//! `MIMALLOC_ALLOW_THP=1` keeps them; the kernel reports the process's
//! choice as `THP_enabled` in /proc/PID/status.

mod support;

use support::*;

fn thp_enabled(pid: u32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(|v| v.trim().to_owned())
}

#[tokio::test]
async fn serve_declines_transparent_huge_pages_unless_asked_to_keep_them() {
    if thp_enabled(std::process::id()).is_none() {
        panic!("this kernel does not report THP_enabled in /proc/PID/status (Linux 5.0+ does)");
    }
    let config = ConfigFile::new(&base_toml());
    let path = config.path_str();
    let proc = spawn_binary(&["serve", "--config", &path], 1).await;
    assert_eq!(thp_enabled(proc.pid).as_deref(), Some("0"));
    drop(proc);

    let kept = spawn_binary_under(
        &["env", "MIMALLOC_ALLOW_THP=1"],
        &["serve", "--config", &path],
        1,
    )
    .await;
    assert_eq!(thp_enabled(kept.pid).as_deref(), Some("1"));
}
