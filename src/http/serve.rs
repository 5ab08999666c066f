//! The HTTP listener's connection layer: what axum's `serve` leaves out and a
//! public port needs. A global and a per-address connection cap, a deadline for
//! the request head (which also closes idle keep-alive connections: hyper's
//! timer runs whenever a connection waits for a request), a deadline for the
//! whole request, a minimum body rate, and an accept loop that backs off when
//! the process is out of file descriptors instead of spinning.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::accept::AcceptBackoff;
use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode};
use axum::response::IntoResponse;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// `[http]` limits on connections and requests.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// The request head must arrive within this; an idle keep-alive connection
    /// is closed after it too.
    pub header_timeout: Duration,
    /// The whole request, body and handler included (a WebSocket upgrade only
    /// counts until it is accepted).
    pub request_timeout: Duration,
    /// After [`BODY_GRACE`], a body must keep arriving at this many bytes per second.
    pub min_body_rate: u64,
}

/// A body may start slowly for this long before the minimum rate applies.
pub const BODY_GRACE: Duration = Duration::from_secs(5);

/// Accepts connections until `shutdown` turns true, then lets the open ones
/// finish their current request.
pub async fn serve(listener: TcpListener, app: Router, limits: ServeLimits, mut shutdown: watch::Receiver<bool>) {
    let global = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip: PerIp = Arc::default();
    let mut backoff = AcceptBackoff::new("http", "precall_http_accept_errors_total");
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = async { shutdown.wait_for(|s| *s).await.is_ok() } => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => {
                backoff.accepted();
                pair
            }
            Err(e) => {
                backoff.failed(&e).await;
                continue;
            }
        };
        let Ok(permit) = global.clone().try_acquire_owned() else {
            metrics::counter!("precall_http_connections_refused_total", "why" => "global").increment(1);
            continue;
        };
        let Some(slot) = IpSlot::take(&per_ip, peer.ip(), limits.max_connections_per_ip) else {
            metrics::counter!("precall_http_connections_refused_total", "why" => "per_ip").increment(1);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(connection(stream, peer, app, limits, shutdown, permit, slot));
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: ServeLimits,
    mut shutdown: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
    _slot: IpSlot,
) {
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let app = app.clone();
        async move {
            let mut req = req.map(|b| Body::new(MinRateBody::new(b, limits.min_body_rate)));
            req.extensions_mut().insert(ConnectInfo(peer));
            match tokio::time::timeout(limits.request_timeout, app.oneshot(req)).await {
                Ok(r) => r,
                Err(_) => Ok::<Response<Body>, Infallible>(
                    (StatusCode::REQUEST_TIMEOUT, "Request Timeout: the request took too long\n").into_response(),
                ),
            }
        }
    });
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), service).with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "HTTP connection ended");
            }
        }
        _ = async { shutdown.wait_for(|s| *s).await.is_ok() } => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}

type PerIp = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// One connection's place in its address's count, given back on drop.
struct IpSlot {
    map: PerIp,
    ip: IpAddr,
}

impl IpSlot {
    fn take(map: &PerIp, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot { map: map.clone(), ip })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// A request body that fails when it arrives slower than `rate` bytes per
/// second (after [`BODY_GRACE`]): a client cannot hold a handler, and the bytes
/// it buffered, by trickling.
pub struct MinRateBody<B> {
    inner: B,
    rate: u64,
    started: Instant,
    received: u64,
    deadline: Pin<Box<Sleep>>,
}

impl<B> MinRateBody<B> {
    pub fn new(inner: B, rate: u64) -> Self {
        let started = Instant::now();
        MinRateBody {
            inner,
            rate: rate.max(1),
            started,
            received: 0,
            deadline: Box::pin(tokio::time::sleep_until(started + BODY_GRACE)),
        }
    }

    fn rearm(&mut self) {
        // Whole seconds' worth of bytes received buys that much more time.
        let earned = Duration::from_secs(self.received / self.rate);
        let at = self.started + BODY_GRACE + earned.min(Duration::from_secs(86_400));
        self.deadline.as_mut().reset(at);
    }
}

impl<B> HttpBody for MinRateBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received = this.received.saturating_add(data.len() as u64);
                    this.rearm();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    metrics::counter!("precall_http_slow_bodies_total").increment(1);
                    Poll::Ready(Some(Err("request body arrived slower than the minimum rate".into())))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_address_slots_are_counted_and_returned() {
        let map: PerIp = Arc::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = IpSlot::take(&map, ip, 2).expect("first");
        let b = IpSlot::take(&map, ip, 2).expect("second");
        assert!(IpSlot::take(&map, ip, 2).is_none());
        drop(a);
        let c = IpSlot::take(&map, ip, 2).expect("freed");
        drop((b, c));
        assert!(map.lock().unwrap().is_empty());
    }
}
