//! One connector for both transports: TCP to the endpoint, then TLS (tokio-rustls) when the
//! endpoint is `https://`. Clear text is used only for an `http://` endpoint, never as a fallback.
//! A failed handshake is counted here, including a refusal the server sends as an alert right
//! after the handshake (TLS 1.3 checks the client certificate then), so `/metrics` can tell a
//! certificate problem from an endpoint that is down.
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// What the connector saw, read by the exporter's stats.
#[derive(Debug, Default)]
pub(crate) struct ConnectCounters {
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
}

#[derive(Clone)]
pub(crate) struct Connector {
    inner: Arc<Inner>,
}

struct Inner {
    host: String,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    counters: Arc<ConnectCounters>,
}

impl Connector {
    pub fn new(
        host: String,
        port: u16,
        tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
        counters: Arc<ConnectCounters>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                host,
                port,
                tls: tls.map(|(config, name)| (TlsConnector::from(config), name)),
                counters,
            }),
        }
    }

    pub async fn connect(&self) -> io::Result<TokioIo<Conn>> {
        let inner = &self.inner;
        let addr = format!("{}:{}", inner.host, inner.port);
        let tcp = match TcpStream::connect((inner.host.as_str(), inner.port)).await {
            Ok(tcp) => tcp,
            Err(e) => {
                inner
                    .counters
                    .connect_failures
                    .fetch_add(1, Ordering::Relaxed);
                return Err(io::Error::new(
                    e.kind(),
                    format!("connecting to {addr}: {e}"),
                ));
            }
        };
        // Small requests and answers: do not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        inner.counters.connects.fetch_add(1, Ordering::Relaxed);
        let Some((tls, name)) = &inner.tls else {
            return Ok(TokioIo::new(Conn::Plain(tcp)));
        };
        match tls.connect(name.clone(), tcp).await {
            Ok(stream) => Ok(TokioIo::new(Conn::Tls {
                stream: Box::new(stream),
                counters: inner.counters.clone(),
                got_data: false,
            })),
            Err(e) => {
                inner
                    .counters
                    .tls_handshake_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%addr, "OTLP TLS handshake failed: {e}");
                Err(io::Error::new(
                    e.kind(),
                    format!("TLS handshake with {addr} failed: {e}"),
                ))
            }
        }
    }
}

/// tonic's channel and hyper's client call the connector as a tower service of the URI; the URI
/// is the configured endpoint's, so it is not looked at again.
impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<Conn>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<Conn>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect().await })
    }
}

pub(crate) enum Conn {
    Plain(TcpStream),
    Tls {
        stream: Box<TlsStream<TcpStream>>,
        counters: Arc<ConnectCounters>,
        /// Application data has arrived: a TLS error now is no handshake failure.
        got_data: bool,
    },
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls {
                stream,
                counters,
                got_data,
            } => {
                let before = buf.filled().len();
                let room = buf.remaining() > 0;
                let res = Pin::new(stream.as_mut()).poll_read(cx, buf);
                let refused = match &res {
                    Poll::Ready(Ok(())) if buf.filled().len() > before => {
                        *got_data = true;
                        false
                    }
                    // The session ended before the server said anything: with TLS 1.3 that is
                    // how a server refuses our certificate (an alert, or just a close), since
                    // the client's handshake is already over by then. An accepted session always
                    // gets an answer first (h2 SETTINGS, or the HTTP response to our request).
                    Poll::Ready(Ok(())) => room && !*got_data,
                    Poll::Ready(Err(e)) => {
                        !*got_data && (is_tls_error(e) || e.kind() == io::ErrorKind::UnexpectedEof)
                    }
                    Poll::Pending => false,
                };
                if refused {
                    refuse(got_data, counters);
                }
                res
            }
        }
    }
}

fn refuse(got_data: &mut bool, counters: &ConnectCounters) {
    *got_data = true;
    counters
        .tls_handshake_failures
        .fetch_add(1, Ordering::Relaxed);
    tracing::debug!("OTLP TLS session refused by the server before any answer");
}

/// A write that fails before the server said anything: the server dropped the session it had
/// just completed (a refused client certificate, when its alert is not read first).
fn refused_on_write<T>(res: &Poll<io::Result<T>>, got_data: &mut bool, counters: &ConnectCounters) {
    if let Poll::Ready(Err(e)) = res {
        let dropped = matches!(
            e.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        );
        if !*got_data && (dropped || is_tls_error(e)) {
            refuse(got_data, counters);
        }
    }
}

fn is_tls_error(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls {
                stream,
                counters,
                got_data,
            } => {
                let res = Pin::new(stream.as_mut()).poll_write(cx, buf);
                refused_on_write(&res, got_data, counters);
                res
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls {
                stream,
                counters,
                got_data,
            } => {
                let res = Pin::new(stream.as_mut()).poll_flush(cx);
                refused_on_write(&res, got_data, counters);
                res
            }
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls {
                stream,
                counters,
                got_data,
            } => {
                let res = Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs);
                refused_on_write(&res, got_data, counters);
                res
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls { stream, .. } => stream.is_write_vectored(),
        }
    }
}

/// The full chain of an error's messages, `a: b: c`, for reasons shown in the log and stats
/// (hyper's and tonic's top-level messages alone say little, e.g. "transport error").
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        source = s.source();
    }
    out
}
