//! Bodies stream both ways and are never buffered whole: the first bytes
//! pass before the rest exist, and 200 MiB bodies (made on the fly) cross the
//! spawned binary complete while its peak RSS stays low.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt;
use support::*;

const MIB: u64 = 1024 * 1024;
/// Generous bound for one 200 MiB transfer through a debug build.
const BIG_WAIT: Duration = Duration::from_secs(180);
/// Peak RSS allowed for the proxy process while moving 200 MiB.
const MAX_HWM_KIB: u64 = 100 * 1024;

async fn app_with(backend: &FakeBackend) -> TestApp {
    let toml = format!(
        "{}{}{}",
        base_toml(),
        service_toml("store", &[backend], ""),
        route_toml(None, "/", "store", false)
    );
    start_app(&toml).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_reaches_the_backend_before_it_ends() {
    let backend = FakeBackend::start("store").await;
    let app = app_with(&backend).await;
    let (tx, body) = channel_body();
    let req = request(Method::POST, app.proxy, "/up?count=1")
        .body(boxed(body))
        .unwrap();
    let pending = tokio::spawn(async move { Http::new().send(req).await });

    tx.send(Bytes::from(vec![b'x'; 16 * 1024])).await.unwrap();
    eventually(WAIT, "the first 16 KiB to reach the backend", || async {
        backend.body_bytes() >= 16 * 1024
    })
    .await;
    assert!(!pending.is_finished(), "answered before the body ended");
    tx.send(Bytes::from(vec![b'y'; 16 * 1024])).await.unwrap();
    drop(tx);

    let resp = tokio::time::timeout(WAIT, pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), (32 * 1024).to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_body_reaches_the_client_before_it_ends() {
    let backend = FakeBackend::start("store").await;
    let app = app_with(&backend).await;
    let resp = Http::new()
        .send_streaming(
            request(Method::GET, app.proxy, "/down?stream_hold=1")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = tokio::time::timeout(WAIT, body.frame())
        .await
        .expect("the first chunk arrives while the backend holds the rest")
        .unwrap()
        .unwrap();
    assert_eq!(first.data_ref().map(|d| &d[..]), Some(&b"first\n"[..]));
    backend.release(1);
    let rest = tokio::time::timeout(WAIT, body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(&rest[..], b"rest\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_upload_and_download_arrive_complete_in_process() {
    let backend = FakeBackend::start("store").await;
    let app = app_with(&backend).await;
    let total = 16 * MIB;

    // Upload of unknown length (chunked), fed from a task.
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        let chunk = Bytes::from(vec![7u8; 64 * 1024]);
        for _ in 0..(total / (64 * 1024)) {
            if tx.send(chunk.clone()).await.is_err() {
                break;
            }
        }
    });
    let req = request(Method::POST, app.proxy, "/up?count=1")
        .body(boxed(body))
        .unwrap();
    let resp = Http::new().send(req).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), total.to_string());

    let resp = Http::new()
        .send_streaming(
            request(
                Method::GET,
                app.proxy,
                &format!("/down?stream_bytes={total}"),
            )
            .body(empty())
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let n = tokio::time::timeout(WAIT, count_body(resp.into_body()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, total);
}

async fn binary_with(backend: &FakeBackend) -> (Proc, ConfigFile) {
    let config = ConfigFile::new(&format!(
        "{}{}{}",
        base_toml(),
        service_toml("store", &[backend], ""),
        route_toml(None, "/", "store", false)
    ));
    (spawn_serve(&config).await, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_of_200_mib_through_the_binary_is_complete_and_rss_stays_low() {
    let backend = FakeBackend::start("store").await;
    let (proc, _config) = binary_with(&backend).await;
    let total = 200 * MIB;
    let req = request(Method::POST, proc.proxy(), "/up?count=1")
        .body(boxed(PatternBody::new(total)))
        .unwrap();
    let resp = Http::new()
        .send_streaming_within(req, BIG_WAIT)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = tokio::time::timeout(WAIT, resp.into_body().collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(String::from_utf8_lossy(&text), total.to_string());
    assert_eq!(backend.body_bytes(), total);
    let hwm = proc.vm_hwm_kib();
    println!("upload 200 MiB: proxy VmHWM {hwm} KiB");
    assert!(
        hwm < MAX_HWM_KIB,
        "proxy peak RSS {hwm} KiB while streaming 200 MiB up (limit {MAX_HWM_KIB} KiB)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_of_200_mib_through_the_binary_is_complete_and_rss_stays_low() {
    let backend = FakeBackend::start("store").await;
    let (proc, _config) = binary_with(&backend).await;
    let total = 200 * MIB;
    let resp = Http::new()
        .send_streaming(
            request(
                Method::GET,
                proc.proxy(),
                &format!("/down?stream_bytes={total}"),
            )
            .body(empty())
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let n = tokio::time::timeout(BIG_WAIT, count_body(resp.into_body()))
        .await
        .expect("200 MiB download finished in time")
        .unwrap();
    assert_eq!(n, total);
    let hwm = proc.vm_hwm_kib();
    println!("download 200 MiB: proxy VmHWM {hwm} KiB");
    assert!(
        hwm < MAX_HWM_KIB,
        "proxy peak RSS {hwm} KiB while streaming 200 MiB down (limit {MAX_HWM_KIB} KiB)"
    );
}
