//! The SIP transport edge: one UDP socket and a TCP listener on the same address,
//! and optionally a TLS listener. Stream connections (TCP or TLS) are read by
//! their own tasks, framed by Content-Length (RFC 3261 §18.3) and handed to the
//! SIP task as whole messages; writes go back through a per-connection bounded
//! queue. A TLS handshake runs in the connection's task under a deadline, so a
//! slow or silent client holds one admitted slot and nothing else.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Notify, mpsc, watch};

use super::message::{Framer, MAX_MESSAGE_LEN};
use super::tls::ServerTls;
use super::{Flow, Transport};

/// Outbound TLS: the client configuration and the name the peer's
/// certificate must carry (also sent as SNI).
#[derive(Clone)]
pub struct TlsConnect {
    pub config: Arc<rustls::ClientConfig>,
    pub name: rustls::pki_types::ServerName<'static>,
}

/// Inbound TLS: the listener's (reloadable) certificate and the deadline for
/// a handshake to finish.
#[derive(Clone)]
pub struct TlsAccept {
    pub server: Arc<ServerTls>,
    pub handshake_timeout: Duration,
}

/// What the transport hands the SIP task.
#[derive(Debug)]
pub enum Inbound {
    Message {
        flow: Flow,
        data: Bytes,
    },
    TcpOpened {
        id: u64,
        writer: mpsc::Sender<Bytes>,
    },
    TcpClosed {
        id: u64,
    },
    /// An outbound TCP connection we opened for `owner` (a registration) is up.
    Connected {
        owner: usize,
        id: u64,
    },
    /// Opening it failed.
    ConnectFailed {
        owner: usize,
        error: String,
    },
}

/// Connection ids, shared by accepted and outbound connections.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Opens a TCP connection to `target` for `owner` in the background, sends
/// `first` on it, and reports it like an accepted one (`TcpOpened`, then
/// `Connected`, messages, `TcpClosed`), so responses flow back on it.
pub fn connect_outbound(target: SocketAddr, owner: usize, first: Bytes, inbound: mpsc::Sender<Inbound>, tls: Option<TlsConnect>) {
    tokio::spawn(async move {
        let stream = match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(target)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let _ = inbound
                    .send(Inbound::ConnectFailed {
                        owner,
                        error: e.to_string(),
                    })
                    .await;
                return;
            }
            Err(_) => {
                let error = "connect timed out".to_owned();
                let _ = inbound.send(Inbound::ConnectFailed { owner, error }).await;
                return;
            }
        };
        let Ok(local) = stream.local_addr() else { return };
        let _ = stream.set_nodelay(true);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let live = Liveness {
            table: None,
            close: Arc::new(Notify::new()),
            limits: TcpLimits::default(),
        };
        let Some(tls) = tls else {
            let flow = Flow {
                transport: Transport::Tcp(id),
                remote: target,
                local,
            };
            return outbound_session(stream, flow, owner, first, inbound, live).await;
        };
        let connector = tokio_rustls::TlsConnector::from(tls.config);
        let handshake = tokio::time::timeout(Duration::from_secs(10), connector.connect(tls.name, stream)).await;
        let stream = match handshake {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let error = format!("TLS handshake failed: {e}");
                let _ = inbound.send(Inbound::ConnectFailed { owner, error }).await;
                return;
            }
            Err(_) => {
                let error = "TLS handshake timed out".to_owned();
                let _ = inbound.send(Inbound::ConnectFailed { owner, error }).await;
                return;
            }
        };
        let flow = Flow {
            transport: Transport::Tls(id),
            remote: target,
            local,
        };
        outbound_session(stream, flow, owner, first, inbound, live).await;
    });
}

/// Runs an outbound connection once it is up: `first` goes out, and the
/// connection is reported like an accepted one.
async fn outbound_session<S>(stream: S, flow: Flow, owner: usize, first: Bytes, inbound: mpsc::Sender<Inbound>, live: Liveness)
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    let Some(id) = flow.transport.connection() else { return };
    let (writer, queue) = mpsc::channel(256);
    let _ = writer.send(first).await;
    if inbound.send(Inbound::TcpOpened { id, writer }).await.is_err() {
        return;
    }
    let _ = inbound.send(Inbound::Connected { owner, id }).await;
    if let Err(e) = connection(stream, flow, inbound.clone(), queue, live).await {
        tracing::debug!(peer = %flow.remote, error = %e, "outbound connection ended");
    }
    let _ = inbound.send(Inbound::TcpClosed { id }).await;
}

/// Binds UDP and TCP on `listen`. With port 0 the OS picks a UDP port and TCP
/// binds the same one.
pub async fn bind(listen: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let mut last_err = None;
    for _ in 0..16 {
        let udp = UdpSocket::bind(listen).await?;
        let addr = udp.local_addr()?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if listen.port() == 0 => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("could not bind UDP and TCP on one port")))
}

/// Concurrent TCP connections allowed from one address (a PBX needs a few; a
/// scanner opening hundreds gets refused).
pub const MAX_CONNECTIONS_PER_SOURCE: usize = 32;
/// Limits on accepted TCP connections (`sip.max_tcp_connections`,
/// `sip.tcp_message_timeout_seconds`, `sip.tcp_idle_timeout_seconds`).
#[derive(Debug, Clone, Copy)]
pub struct TcpLimits {
    pub max_connections: usize,
    /// A message must be complete this long after its first byte arrived,
    /// however slowly the rest trickles in.
    pub message_timeout: Duration,
    /// A connection that delivers no complete message (nor a CRLF keepalive)
    /// for this long is closed. Stray bytes do not count: only whole messages do.
    pub idle_timeout: Duration,
}

impl Default for TcpLimits {
    fn default() -> Self {
        TcpLimits {
            max_connections: 1024,
            message_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
        }
    }
}
/// When the table is full, a connection idle for at least this long may be
/// closed to make room for a source that holds fewer connections.
pub const EVICTABLE_AFTER: Duration = Duration::from_secs(10);

/// The open TCP connections, shared by the accept loop and the connection
/// tasks: per-source counts and when each connection last delivered a message,
/// so that a full table can make room fairly.
#[derive(Default)]
struct ConnTable {
    conns: HashMap<u64, ConnInfo>,
    per_source: HashMap<IpAddr, usize>,
}

struct ConnInfo {
    ip: IpAddr,
    last_message: Instant,
    close: Arc<Notify>,
}

/// Why a new connection was refused.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    PerSource,
    Full,
}

impl ConnTable {
    /// Admits a connection from `ip`, closing the stalest connection of the
    /// source that holds the most when the table is full: a handful of
    /// addresses holding connections open cannot lock everyone else out.
    fn admit(&mut self, id: u64, ip: IpAddr, now: Instant, max: usize) -> Result<Arc<Notify>, Refused> {
        let mine = self.per_source.get(&ip).copied().unwrap_or(0);
        if mine >= MAX_CONNECTIONS_PER_SOURCE {
            return Err(Refused::PerSource);
        }
        if self.conns.len() >= max {
            let (&hog, &most) = self.per_source.iter().max_by_key(|(_, n)| **n).ok_or(Refused::Full)?;
            if most <= mine + 1 {
                return Err(Refused::Full);
            }
            let victim = self
                .conns
                .iter()
                .filter(|(_, c)| c.ip == hog && now.saturating_duration_since(c.last_message) >= EVICTABLE_AFTER)
                .min_by_key(|(_, c)| c.last_message)
                .map(|(id, _)| *id)
                .ok_or(Refused::Full)?;
            if let Some(c) = self.remove(victim) {
                tracing::info!(peer = %c.ip, "closing an idle TCP connection to make room for another source");
                c.close.notify_one();
            }
        }
        let close = Arc::new(Notify::new());
        *self.per_source.entry(ip).or_default() += 1;
        self.conns.insert(
            id,
            ConnInfo {
                ip,
                last_message: now,
                close: close.clone(),
            },
        );
        Ok(close)
    }

    fn remove(&mut self, id: u64) -> Option<ConnInfo> {
        let c = self.conns.remove(&id)?;
        if let Some(n) = self.per_source.get_mut(&c.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_source.remove(&c.ip);
            }
        }
        Some(c)
    }

    fn touched(&mut self, id: u64, now: Instant) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.last_message = now;
        }
    }
}

type SharedTable = Arc<Mutex<ConnTable>>;

fn lock(t: &SharedTable) -> std::sync::MutexGuard<'_, ConnTable> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// Accepts TCP connections until shutdown, at most `max_connections` at a time
/// and [`MAX_CONNECTIONS_PER_SOURCE`] from one address. A failing `accept`
/// (out of file descriptors) backs off exponentially up to a second instead of
/// spinning, and is logged at most once per backoff cycle.
pub async fn accept_loop(
    listener: TcpListener,
    inbound: mpsc::Sender<Inbound>,
    limits: TcpLimits,
    mut shutdown: watch::Receiver<bool>,
    tls: Option<TlsAccept>,
) {
    let table: SharedTable = Arc::default();
    let (name, errors) = if tls.is_some() {
        ("sip-tls", "precall_sip_tls_accept_errors_total")
    } else {
        ("sip-tcp", "precall_sip_tcp_accept_errors_total")
    };
    let mut backoff = crate::accept::AcceptBackoff::new(name, errors);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => return,
        };
        let (stream, remote) = match accepted {
            Ok(pair) => {
                backoff.accepted();
                pair
            }
            Err(e) => {
                backoff.failed(&e).await;
                continue;
            }
        };
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let admitted = lock(&table).admit(id, remote.ip(), Instant::now(), limits.max_connections);
        let close = match admitted {
            Ok(close) => close,
            Err(why) => {
                metrics::counter!("precall_sip_tcp_refused_total").increment(1);
                tracing::debug!(peer = %remote, ?why, "refusing TCP connection");
                continue;
            }
        };
        let Ok(local) = stream.local_addr() else {
            lock(&table).remove(id);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (writer, queue) = mpsc::channel(256);
        if inbound.send(Inbound::TcpOpened { id, writer }).await.is_err() {
            return;
        }
        let table = table.clone();
        let inbound = inbound.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let watch = Liveness {
                table: Some((table.clone(), id)),
                close,
                limits,
            };
            let ended = match tls {
                None => {
                    let flow = Flow {
                        transport: Transport::Tcp(id),
                        remote,
                        local,
                    };
                    connection(stream, flow, inbound.clone(), queue, watch).await
                }
                Some(tls) => {
                    let flow = Flow {
                        transport: Transport::Tls(id),
                        remote,
                        local,
                    };
                    accept_tls(stream, flow, &tls, inbound.clone(), queue, watch).await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(peer = %remote, error = %e, "SIP connection ended");
            }
            lock(&table).remove(id);
            let _ = inbound.send(Inbound::TcpClosed { id }).await;
        });
    }
}

/// The server side of a TLS connection: the handshake under its deadline (a
/// client that sends nothing, or trickles, loses its slot when it expires, or
/// sooner when the table needs room), then the same framing as TCP.
async fn accept_tls(
    stream: TcpStream,
    flow: Flow,
    tls: &TlsAccept,
    inbound: mpsc::Sender<Inbound>,
    queue: mpsc::Receiver<Bytes>,
    live: Liveness,
) -> io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server.current());
    let handshake = tokio::select! {
        r = tokio::time::timeout(tls.handshake_timeout, acceptor.accept(stream)) => r,
        _ = live.close.notified() => return Ok(()),
    };
    match handshake {
        Ok(Ok(stream)) => {
            metrics::counter!("precall_sip_tls_handshakes_total", "result" => "ok").increment(1);
            connection(stream, flow, inbound, queue, live).await
        }
        Ok(Err(e)) => {
            metrics::counter!("precall_sip_tls_handshakes_total", "result" => "failed").increment(1);
            tracing::info!(peer = %flow.remote, error = %e, "TLS handshake failed");
            Ok(())
        }
        Err(_) => {
            metrics::counter!("precall_sip_tls_handshakes_total", "result" => "timeout").increment(1);
            tracing::info!(peer = %flow.remote, timeout_s = tls.handshake_timeout.as_secs(), "closing TLS connection: the handshake took too long");
            Ok(())
        }
    }
}

/// How a connection reports that it delivered a message, and is told to close.
struct Liveness {
    table: Option<(SharedTable, u64)>,
    close: Arc<Notify>,
    limits: TcpLimits,
}

async fn connection<S>(
    stream: S,
    flow: Flow,
    inbound: mpsc::Sender<Inbound>,
    mut queue: mpsc::Receiver<Bytes>,
    live: Liveness,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut buf = BytesMut::with_capacity(8192);
    let mut framer = Framer::default();
    let TcpLimits {
        idle_timeout,
        message_timeout,
        ..
    } = live.limits;
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    // Armed by the first byte of a message, disarmed when it is complete.
    let partial = tokio::time::sleep(Duration::from_secs(86_400));
    tokio::pin!(partial);
    let mut partial_armed = false;
    loop {
        tokio::select! {
            _ = &mut idle => {
                tracing::debug!(peer = %flow.remote, "closing idle TCP connection");
                return Ok(());
            }
            _ = &mut partial, if partial_armed => {
                tracing::info!(peer = %flow.remote, timeout_s = message_timeout.as_secs(), "closing TCP connection: a message took too long to arrive");
                metrics::counter!("precall_sip_tcp_slow_messages_total").increment(1);
                return Ok(());
            }
            _ = live.close.notified() => return Ok(()),
            n = reader.read_buf(&mut buf) => {
                if n? == 0 {
                    return Ok(());
                }
                let mut delivered = false;
                let mut pinged = false;
                loop {
                    // RFC 5626 §4.4.1 keepalive: a double CRLF ping gets a CRLF pong;
                    // stray CRLFs between messages are skipped (RFC 3261 §7.5).
                    if buf.starts_with(b"\r\n\r\n") {
                        buf.advance(4);
                        framer.consume();
                        writer.write_all(b"\r\n").await?;
                        writer.flush().await?;
                        pinged = true;
                        continue;
                    }
                    let skip = buf.iter().take_while(|b| **b == b'\r' || **b == b'\n').count();
                    if skip > 0 && skip < buf.len() {
                        buf.advance(skip);
                        framer.consume();
                    }
                    if buf.iter().all(|b| *b == b'\r' || *b == b'\n') {
                        break;
                    }
                    match framer.next(&buf) {
                        Ok(Some(len)) => {
                            let data = buf.split_to(len).freeze();
                            framer.consume();
                            delivered = true;
                            if inbound.send(Inbound::Message { flow, data }).await.is_err() {
                                return Ok(());
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            // Framing is lost; nothing after this can be trusted.
                            tracing::info!(peer = %flow.remote, error = %e, "closing TCP connection: unframeable SIP stream");
                            return Ok(());
                        }
                    }
                }
                let now = tokio::time::Instant::now();
                if delivered || pinged {
                    idle.as_mut().reset(now + idle_timeout);
                }
                // Only real messages make a connection worth keeping when the table is full.
                if delivered && let Some((table, id)) = &live.table {
                    lock(table).touched(*id, now.into_std());
                }
                let pending = buf.iter().any(|b| *b != b'\r' && *b != b'\n');
                if !pending {
                    partial_armed = false;
                } else if delivered || pinged || !partial_armed {
                    // A new message began in this read.
                    partial.as_mut().reset(now + message_timeout);
                    partial_armed = true;
                }
                if buf.capacity() > 2 * MAX_MESSAGE_LEN && buf.is_empty() {
                    buf = BytesMut::with_capacity(8192);
                }
            }
            out = queue.recv() => match out {
                Some(data) => {
                    writer.write_all(&data).await?;
                    // TLS buffers records; TCP's flush is a no-op.
                    writer.flush().await?;
                }
                None => return Ok(()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn a_full_table_makes_room_from_the_biggest_holder() {
        let t0 = Instant::now();
        let mut t = ConnTable::default();
        for id in 0..4 {
            t.admit(id, ip(1), t0 + Duration::from_millis(id), 4).expect("room");
        }
        // Too fresh to evict.
        assert_eq!(t.admit(10, ip(2), t0, 4).err(), Some(Refused::Full));
        let later = t0 + EVICTABLE_AFTER + Duration::from_millis(10);
        t.touched(0, later);
        t.touched(2, later);
        assert!(t.admit(11, ip(2), later, 4).is_ok(), "the hog gives up its stalest connection");
        assert_eq!(t.conns.len(), 4);
        assert!(!t.conns.contains_key(&1), "the stalest went first");
        assert!(t.conns.contains_key(&0), "a connection that delivered a message recently stays");
        assert_eq!(t.per_source[&ip(1)], 3);
    }

    #[test]
    fn per_source_cap_holds() {
        let t0 = Instant::now();
        let mut t = ConnTable::default();
        for id in 0..MAX_CONNECTIONS_PER_SOURCE as u64 {
            t.admit(id, ip(1), t0, 1000).expect("room");
        }
        assert_eq!(t.admit(99, ip(1), t0, 1000).err(), Some(Refused::PerSource));
        t.remove(3);
        assert!(t.admit(99, ip(1), t0, 1000).is_ok());
    }
}
