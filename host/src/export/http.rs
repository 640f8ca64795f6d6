//! OTLP/HTTP (protobuf): one kept-alive HTTP/1.1 connection (hyper's client, over the shared
//! connector, so `https://` is TLS with the configured roots and client certificate), one
//! request at a time. An exporter sends from one thread, one batch after another, so a pool
//! would only hold more idle sockets.
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;

use super::config::{Compression, Target};
use super::connect::{error_chain, Connector};
use super::transport::{classify, parse_retry_after, Outcome};
use super::ExportError;

/// How much of a response body we read: enough for any status message.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

pub(crate) struct HttpTransport {
    connector: Connector,
    uri: Uri,
    headers: HeaderMap,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl HttpTransport {
    pub fn new(
        target: &Target,
        connector: Connector,
        headers: &[(String, String)],
        compression: Compression,
    ) -> Result<Self, ExportError> {
        let uri: Uri = target
            .url
            .parse()
            .map_err(|e| ExportError::Endpoint(format!("`{}`: {e}", target.url)))?;
        let authority = uri
            .authority()
            .ok_or_else(|| ExportError::Endpoint(format!("`{}`: no host", target.url)))?;
        let mut map = HeaderMap::new();
        let value = |v: &str| {
            HeaderValue::from_str(v).map_err(|e| ExportError::Header(format!("`{v}`: {e}")))
        };
        map.insert(header::HOST, value(authority.as_str())?);
        map.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        map.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("zerostep/", env!("CARGO_PKG_VERSION"))),
        );
        if compression == Compression::Gzip {
            map.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        for (k, v) in headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| ExportError::Header(format!("name `{k}`: {e}")))?;
            map.insert(name, value(v)?);
        }
        Ok(Self {
            connector,
            uri,
            headers: map,
            sender: None,
        })
    }

    pub async fn send(
        &mut self,
        body: &Bytes,
        timeout: Duration,
        max_retry_after: Duration,
    ) -> Outcome {
        match tokio::time::timeout(timeout, self.attempt(body, max_retry_after)).await {
            Ok(outcome) => outcome,
            Err(_) => {
                // The connection is in an unknown state: start afresh next time.
                self.sender = None;
                Outcome::Retry {
                    reason: format!("POST {}: no answer within {timeout:?}", self.uri),
                    after: None,
                }
            }
        }
    }

    async fn attempt(&mut self, body: &Bytes, max_retry_after: Duration) -> Outcome {
        // A kept-alive connection the receiver has closed meanwhile fails at once: then one
        // more try on a new connection, which is what the error means, not an outage.
        for fresh_only in [false, true] {
            let (mut sender, reused) = match self.sender.take() {
                Some(s) if !fresh_only && !s.is_closed() => (s, true),
                _ => match self.open().await {
                    Ok(s) => (s, false),
                    Err(reason) => {
                        return Outcome::Retry {
                            reason,
                            after: None,
                        }
                    }
                },
            };
            if sender.ready().await.is_err() {
                if reused {
                    continue;
                }
                return Outcome::Retry {
                    reason: format!("POST {}: connection closed", self.uri),
                    after: None,
                };
            }
            let mut req = Request::new(Full::new(body.clone()));
            *req.method_mut() = Method::POST;
            *req.uri_mut() = self
                .uri
                .path_and_query()
                .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()));
            *req.headers_mut() = self.headers.clone();
            let resp = match sender.send_request(req).await {
                Ok(resp) => resp,
                Err(_) if reused => continue,
                Err(e) => {
                    return Outcome::Retry {
                        reason: format!("POST {}: {}", self.uri, error_chain(&e)),
                        after: None,
                    }
                }
            };
            let status = resp.status().as_u16();
            let headers = resp.headers();
            let retry_after = headers
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after)
                .map(|d| d.min(max_retry_after));
            let is_protobuf = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.starts_with("application/x-protobuf"));
            // A body we cannot read is treated as empty: the status alone decides. The
            // connection is reused only after a whole answer.
            match Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
            {
                Ok(collected) => {
                    self.sender = Some(sender);
                    return classify(status, &collected.to_bytes(), is_protobuf, retry_after);
                }
                Err(_) => return classify(status, b"", false, retry_after),
            }
        }
        Outcome::Retry {
            reason: format!("POST {}: connection closed", self.uri),
            after: None,
        }
    }

    async fn open(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let io = self
            .connector
            .connect()
            .await
            .map_err(|e| format!("POST {}: {e}", self.uri))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("POST {}: {}", self.uri, error_chain(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("OTLP/HTTP connection ended: {e}");
            }
        });
        Ok(sender)
    }
}
