//! The client side of the registry: what `switchyard register` runs.
//!
//! It registers one instance through the admin API and, with `--heartbeat`,
//! keeps its lease alive (a heartbeat every ttl/3, so two may be lost before
//! the lease ends) until SIGINT/SIGTERM, then deregisters. A heartbeat that
//! gets 404 means the lease ended (or Switchyard restarted without a durable
//! store): the instance registers again, as Eureka clients do. While the
//! admin API is unreachable it keeps trying; a refusal (400, 401, 403, 429)
//! ends the command with the server's one-line reason.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use super::error::{NameKind, RegistryError, Shown};
use super::instance::check_name;

/// Each admin request must answer within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Never heartbeat more often than this, whatever the ttl.
const MIN_INTERVAL: Duration = Duration::from_millis(200);

/// What `switchyard register` was asked to do.
#[derive(Debug, Clone)]
pub struct RegisterOptions {
    /// `http://host:port` of the admin listener.
    pub admin: String,
    pub service: String,
    pub id: String,
    pub address: String,
    /// Sent as is; `None` = the registry's default_ttl.
    pub ttl: Option<String>,
    /// `None` = the registry's default (1).
    pub weight: Option<u32>,
    pub token: Option<String>,
    /// Keep renewing until a signal, then deregister.
    pub heartbeat: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--admin {0} must be an http:// URL like http://127.0.0.1:9091")]
    BadUrl(Shown),
    #[error(transparent)]
    BadName(#[from] RegistryError),
    #[error("cannot reach the admin API at {url}: {}", root_cause(.source))]
    Unreachable {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("the admin API at {url} did not answer within {}s", REQUEST_TIMEOUT.as_secs())]
    Timeout { url: String },
    #[error("the admin API at {url} broke off its answer")]
    Body {
        url: String,
        #[source]
        source: hyper::Error,
    },
    #[error("the admin API refused to {action} {service}/{id} ({status}): {message}")]
    Refused {
        action: &'static str,
        service: String,
        id: String,
        status: StatusCode,
        message: String,
    },
}

impl ClientError {
    /// Worth retrying later: the admin API may be restarting.
    fn is_transient(&self) -> bool {
        matches!(
            self,
            ClientError::Unreachable { .. }
                | ClientError::Timeout { .. }
                | ClientError::Body { .. }
        )
    }
}

/// The innermost cause, which says what actually happened ("Connection refused").
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Register, and with `heartbeat` renew until `shutdown`, then deregister.
pub async fn run(
    options: RegisterOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ClientError> {
    let client = AdminClient::new(&options)?;
    let instance = client.register().await?;
    tracing::info!(service = %options.service, id = %options.id, address = %options.address, expires_at = %instance["expires_at"], "registered");
    if !options.heartbeat {
        return Ok(());
    }
    let interval = heartbeat_interval(&instance);
    tokio::pin!(shutdown);
    loop {
        let tick = async {
            match interval {
                Some(every) => tokio::time::sleep(every).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick => {}
        }
        client.renew().await?;
    }
    client.deregister().await
}

/// A third of the lease, so two lost heartbeats still leave time for a third;
/// `None` for a lease without expiry.
fn heartbeat_interval(instance: &Value) -> Option<Duration> {
    let ttl = instance["ttl"].as_str()?;
    let ttl = humantime::parse_duration(ttl).ok()?;
    (!ttl.is_zero()).then(|| (ttl / 3).max(MIN_INTERVAL))
}

/// The admin API, for one instance.
struct AdminClient {
    http: Client<HttpConnector, Full<Bytes>>,
    /// `http://host:port/v1/services/S/instances/I`.
    url: String,
    token: Option<String>,
    options: RegisterOptions,
}

impl AdminClient {
    fn new(options: &RegisterOptions) -> Result<AdminClient, ClientError> {
        check_name(NameKind::Service, &options.service)?;
        check_name(NameKind::Instance, &options.id)?;
        let base = admin_base(&options.admin)?;
        Ok(AdminClient {
            http: Client::builder(TokioExecutor::new()).build_http(),
            url: format!(
                "{base}/v1/services/{}/instances/{}",
                options.service, options.id
            ),
            token: options.token.clone(),
            options: options.clone(),
        })
    }

    async fn register(&self) -> Result<Value, ClientError> {
        let mut body = json!({ "address": self.options.address });
        if let Some(ttl) = &self.options.ttl {
            body["ttl"] = json!(ttl);
        }
        if let Some(weight) = self.options.weight {
            body["weight"] = json!(weight);
        }
        let (status, answer) = self.send(Method::PUT, &self.url, Some(body)).await?;
        match status {
            StatusCode::OK => Ok(answer),
            _ => Err(self.refused("register", status, &answer)),
        }
    }

    /// One heartbeat; re-register when the lease is gone; ride out outages.
    async fn renew(&self) -> Result<(), ClientError> {
        let url = format!("{}/heartbeat", self.url);
        let (status, answer) = match self.send(Method::PUT, &url, None).await {
            Ok(answer) => answer,
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "heartbeat failed; will retry");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        match status {
            StatusCode::OK => Ok(()),
            StatusCode::NOT_FOUND => {
                tracing::warn!("the lease is gone (404); registering again");
                match self.register().await {
                    Err(e) if e.is_transient() => Ok(()),
                    other => other.map(drop),
                }
            }
            _ => Err(self.refused("renew", status, &answer)),
        }
    }

    async fn deregister(&self) -> Result<(), ClientError> {
        let (status, answer) = self.send(Method::DELETE, &self.url, None).await?;
        match status {
            StatusCode::NO_CONTENT | StatusCode::NOT_FOUND => {
                tracing::info!(service = %self.options.service, id = %self.options.id, "deregistered");
                Ok(())
            }
            _ => Err(self.refused("deregister", status, &answer)),
        }
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value), ClientError> {
        let bytes = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let mut req = Request::builder().method(method).uri(url);
        if let Some(token) = &self.token {
            req = req.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(bytes))
            .map_err(|_| ClientError::BadUrl(Shown::new(url)))?;
        let timeout = |_| ClientError::Timeout {
            url: url.to_owned(),
        };
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, self.http.request(req))
            .await
            .map_err(timeout)?
            .map_err(|source| ClientError::Unreachable {
                url: url.to_owned(),
                source,
            })?;
        let status = resp.status();
        let body = tokio::time::timeout(REQUEST_TIMEOUT, resp.into_body().collect())
            .await
            .map_err(timeout)?
            .map_err(|source| ClientError::Body {
                url: url.to_owned(),
                source,
            })?;
        let answer = serde_json::from_slice(&body.to_bytes()).unwrap_or(Value::Null);
        Ok((status, answer))
    }

    fn refused(&self, action: &'static str, status: StatusCode, answer: &Value) -> ClientError {
        let message = answer["error"]
            .as_str()
            .unwrap_or("no reason given")
            .to_owned();
        ClientError::Refused {
            action,
            service: self.options.service.clone(),
            id: self.options.id.clone(),
            status,
            message,
        }
    }
}

/// `http://host:port` from the `--admin` argument (a trailing `/` is fine).
fn admin_base(admin: &str) -> Result<String, ClientError> {
    let bad = || ClientError::BadUrl(Shown::new(admin));
    let uri: Uri = admin.parse().map_err(|_| bad())?;
    let authority = uri.authority().ok_or_else(bad)?;
    let plain_root = matches!(uri.path(), "" | "/") && uri.query().is_none();
    if uri.scheme_str() != Some("http") || !plain_root || authority.as_str().contains('@') {
        return Err(bad());
    }
    Ok(format!("http://{authority}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_urls_are_checked() {
        assert_eq!(
            admin_base("http://127.0.0.1:9091").ok().as_deref(),
            Some("http://127.0.0.1:9091")
        );
        assert_eq!(
            admin_base("http://localhost:9091/").ok().as_deref(),
            Some("http://localhost:9091")
        );
        for bad in [
            "127.0.0.1:9091",
            "https://h:1",
            "http://h:1/x",
            "ftp://h",
            "",
            "http://u@h:1",
        ] {
            assert!(admin_base(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn heartbeats_come_at_a_third_of_the_ttl() {
        let every = |ttl: &str| heartbeat_interval(&json!({ "ttl": ttl }));
        assert_eq!(every("30s"), Some(Duration::from_secs(10)));
        assert_eq!(every("1s"), Some(Duration::from_secs(1) / 3));
        assert_eq!(every("0s"), None);
        assert_eq!(heartbeat_interval(&json!({})), None);
    }

    #[test]
    fn the_root_cause_is_reported() {
        let inner =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let outer = std::io::Error::other(inner);
        assert_eq!(root_cause(&outer), "Connection refused");
    }

    #[tokio::test]
    async fn an_unreachable_admin_is_a_clear_error() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let options = RegisterOptions {
            admin: format!("http://127.0.0.1:{port}"),
            service: "users".into(),
            id: "a".into(),
            address: "127.0.0.1:9001".into(),
            ttl: None,
            weight: None,
            token: None,
            heartbeat: false,
        };
        let err = run(options, std::future::pending())
            .await
            .expect_err("nothing listens");
        assert!(err.is_transient());
        let text = err.to_string();
        assert!(text.contains("cannot reach the admin API"), "{text}");
        assert!(text.to_lowercase().contains("refused"), "{text}");
    }
}
