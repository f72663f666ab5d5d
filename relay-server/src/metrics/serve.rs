//! The `--metrics-listen` listener: `GET /metrics` on loopback, served by the same hyper as
//! the relay (no second HTTP stack). Anything else is 404; it never touches the relay's
//! connection slots or admission limits.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::debug;

use crate::shared::Shared;

/// A bound metrics listener, not yet serving.
pub struct MetricsListener {
    listener: TcpListener,
}

impl MetricsListener {
    pub async fn bind(addr: SocketAddr) -> io::Result<MetricsListener> {
        Ok(MetricsListener {
            listener: TcpListener::bind(addr).await?,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves scrapes until shutdown.
    pub async fn run(self, shared: Arc<Shared>) {
        let mut shutdown = shared.shutdown.clone();
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = crate::shared::shutdown_signalled(&mut shutdown) => return,
            };
            let Ok((stream, _)) = accepted else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let svc = {
                    let shared = shared.clone();
                    service_fn(move |req| {
                        std::future::ready(Ok::<_, Infallible>(answer(&req, &shared)))
                    })
                };
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(shared.opts.header_read_timeout)
                    .serve_connection(TokioIo::new(stream), svc);
                if let Err(e) = conn.await {
                    debug!(err = %e, "metrics connection ended with an error");
                }
            });
        }
    }
}

fn answer<B>(req: &Request<B>, shared: &Shared) -> Response<Full<Bytes>> {
    let status = if req.uri().path() != "/metrics" {
        StatusCode::NOT_FOUND
    } else if req.method() != Method::GET && req.method() != Method::HEAD {
        StatusCode::METHOD_NOT_ALLOWED
    } else {
        StatusCode::OK
    };
    if status != StatusCode::OK {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = status;
        return r;
    }
    let mut r = Response::new(Full::new(Bytes::from(super::export::render(shared))));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(super::export::CONTENT_TYPE),
    );
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
