//! Fetching a provider's signing keys over HTTP(S): the JWKS at `jwks_url`, or the one an OIDC
//! discovery document (`{issuer}/.well-known/openid-configuration`) names. One GET per document,
//! 5 s for the whole exchange, bodies capped at 1 MiB, only a 200 counts. Errors are strings for
//! the log: they name the URL without its query and never carry key material.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{HeaderValue, ACCEPT, USER_AGENT};
use hyper::{Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Deserialize;

use super::keys::KeySet;
use crate::gateway::error::error_chain;
use crate::gateway::upstream_tls;
use crate::resources::jwt_provider::check_http_url;
use crate::resources::service::UpstreamProtocol;

/// Longest a fetch (connect, request, whole body) may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS or discovery document read.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

type FetchClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Where the JWKS comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// `jwks_url`.
    JwksUrl(Uri),
    /// `oidc_discovery`: the configured issuer and its discovery document's URL.
    Discovery { issuer: String, config_url: Uri },
}

impl Source {
    /// The discovery document of `issuer`: `{issuer}/.well-known/openid-configuration`, with a
    /// trailing slash of the issuer not doubled.
    pub fn discovery(issuer: &str) -> Result<Source, String> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let config_url = check_http_url(&url)?;
        Ok(Source::Discovery {
            issuer: issuer.to_string(),
            config_url,
        })
    }
}

/// Fetches one provider's JWKS; remembers the discovered `jwks_uri` until a fetch with it fails.
pub struct JwksFetcher {
    client: FetchClient,
    source: Source,
    discovered: Option<Uri>,
}

impl JwksFetcher {
    /// A fetcher with its own client: HTTP and HTTPS (rustls with ring, the system's CA store,
    /// as for upstream targets), no pooled connections between fetches.
    pub fn new(source: Source) -> Result<JwksFetcher, String> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(FETCH_TIMEOUT));
        http.set_nodelay(true);
        // The HTTPS wrapper decides by scheme; http:// URLs pass through untouched.
        http.enforce_http(false);
        let connector = upstream_tls::connector(http, None, UpstreamProtocol::Http1)?;
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        Ok(JwksFetcher {
            client,
            source,
            discovered: None,
        })
    }

    /// Fetches the JWKS (after discovery, when needed) and parses its usable keys; also returns
    /// a note per key skipped. An error means the caller keeps the keys it has.
    pub async fn fetch(&mut self) -> Result<(KeySet, Vec<String>), String> {
        let jwks_uri = match (&self.source, &self.discovered) {
            (Source::JwksUrl(uri), _) => uri.clone(),
            (Source::Discovery { .. }, Some(uri)) => uri.clone(),
            (Source::Discovery { issuer, config_url }, None) => {
                let uri = discover(&self.client, issuer, config_url).await?;
                self.discovered = Some(uri.clone());
                uri
            }
        };
        let result = get(&self.client, &jwks_uri)
            .await
            .and_then(|body| KeySet::from_document(&body))
            .map_err(|e| format!("JWKS {}: {e}", for_log(&jwks_uri)));
        if result.is_err() {
            // The IdP may have moved its keys: discover again next time.
            self.discovered = None;
        }
        result
    }
}

/// Reads the discovery document: its `issuer` must be the configured one, its `jwks_uri` an
/// http(s) URL.
async fn discover(client: &FetchClient, issuer: &str, config_url: &Uri) -> Result<Uri, String> {
    #[derive(Deserialize)]
    struct Discovery {
        issuer: String,
        jwks_uri: String,
    }
    let at = || format!("discovery document {}", for_log(config_url));
    let body = get(client, config_url)
        .await
        .map_err(|e| format!("{}: {e}", at()))?;
    let doc: Discovery = serde_json::from_slice(&body)
        .map_err(|e| format!("{}: not an OpenID configuration: {e}", at()))?;
    if doc.issuer != issuer {
        return Err(format!(
            "{}: it names issuer {:?}, not the configured {issuer:?}",
            at(),
            doc.issuer
        ));
    }
    check_http_url(&doc.jwks_uri).map_err(|e| format!("{}: jwks_uri: {e}", at()))
}

/// `GET uri`; the body of a 200 answer, whole, within `FETCH_TIMEOUT` and `MAX_DOCUMENT_BYTES`.
async fn get(client: &FetchClient, uri: &Uri) -> Result<Bytes, String> {
    let mut req = Request::get(uri.clone())
        .body(Empty::new())
        .map_err(|e| format!("cannot build the request: {e}"))?;
    req.headers_mut()
        .insert(ACCEPT, HeaderValue::from_static("application/json"));
    req.headers_mut()
        .insert(USER_AGENT, HeaderValue::from_static("konnect"));
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| {
            if e.is_connect() {
                format!("connect failed: {}", error_chain(&e))
            } else {
                format!("request failed: {}", error_chain(&e))
            }
        })?;
        if resp.status() != StatusCode::OK {
            return Err(format!("answered {}, not 200", resp.status()));
        }
        let body = Limited::new(resp.into_body(), MAX_DOCUMENT_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    format!("the document is larger than {MAX_DOCUMENT_BYTES} bytes")
                } else {
                    format!("reading the body failed: {e}")
                }
            })?;
        Ok(body.to_bytes())
    };
    tokio::time::timeout(FETCH_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no complete answer within {FETCH_TIMEOUT:?}"))?
}

/// The URL without its query, for logs.
fn for_log(uri: &Uri) -> String {
    format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or("?"),
        uri.authority().map_or("", |a| a.as_str()),
        uri.path()
    )
}
