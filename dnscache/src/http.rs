//! Minimal HTTP/1.1 client requests (`http://`, `https://`) dialled
//! through the cache, e.g. `GET /api/v10/gateway/bot`.
//!
//! # Algorithm
//! One connection per request: resolve and connect through [`Resolver`],
//! TLS with SNI = the URL's host for `https`, then hyper's
//! `client::conn::http1::handshake` over that stream. The connection task
//! runs until the response body is read. `Host` is set from the URL when
//! the caller did not set it. The whole exchange has one deadline. No
//! pooling: these calls are rare (gateway discovery, health checks).

use crate::Resolver;
use crate::error::ConnectError;
use crate::stream::Target;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HOST, HeaderValue};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::time::Duration;

impl Resolver {
    /// Sends `request` (absolute URI, `http` or `https`) and reads the whole
    /// response, within `timeout`.
    pub async fn http_request(
        &self,
        request: Request<Bytes>,
        timeout: Duration,
    ) -> Result<Response<Bytes>, ConnectError> {
        let url = request.uri().to_string();
        match tokio::time::timeout(timeout, self.http_exchange(request, &url)).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::HttpTimeout { url, timeout }),
        }
    }

    /// `GET url` with extra `headers` (e.g. `Authorization: Bot ...`).
    pub async fn http_get(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Response<Bytes>, ConnectError> {
        let mut builder = Request::get(url);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let request = builder
            .body(Bytes::new())
            .map_err(|e| ConnectError::InvalidUrl {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
        self.http_request(request, timeout).await
    }

    async fn http_exchange(
        &self,
        request: Request<Bytes>,
        url: &str,
    ) -> Result<Response<Bytes>, ConnectError> {
        let (uri, target) = Target::parse(url)?;
        let stream = self.dial(&target).await?;
        let http_err = |source| ConnectError::Http {
            url: url.to_owned(),
            source,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http_err)?;
        let conn = tokio::spawn(conn);
        let (mut parts, body) = request.into_parts();
        if !parts.headers.contains_key(HOST) {
            let default_port = if target.tls { 443 } else { 80 };
            let host = if target.port == default_port {
                target.host.clone()
            } else {
                format!("{}:{}", target.host, target.port)
            };
            if let Ok(v) = HeaderValue::from_str(&host) {
                parts.headers.insert(HOST, v);
            }
        }
        // HTTP/1.1 request line: origin-form (path and query only).
        parts.uri = uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), ToString::to_string)
            .parse()
            .unwrap_or_default();
        let response = sender
            .send_request(Request::from_parts(parts, Full::new(body)))
            .await
            .map_err(http_err)?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(http_err)?.to_bytes();
        conn.abort();
        Ok(Response::from_parts(parts, body))
    }
}
