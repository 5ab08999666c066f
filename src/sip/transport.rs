//! The SIP transport edge: one UDP socket and a TCP listener on the same address.
//! TCP connections are read by their own tasks, framed by Content-Length
//! (RFC 3261 §18.3) and handed to the SIP task as whole messages; writes go back
//! through a per-connection bounded queue.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};

use super::message::{self, MAX_MESSAGE_LEN};
use super::{Flow, Transport};

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
pub fn connect_outbound(target: SocketAddr, owner: usize, first: Bytes, inbound: mpsc::Sender<Inbound>) {
    tokio::spawn(async move {
        let stream = match tokio::time::timeout(std::time::Duration::from_secs(5), TcpStream::connect(target)).await {
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
        let (writer, queue) = mpsc::channel(256);
        let _ = writer.send(first).await;
        if inbound.send(Inbound::TcpOpened { id, writer }).await.is_err() {
            return;
        }
        let _ = inbound.send(Inbound::Connected { owner, id }).await;
        let flow = Flow {
            transport: Transport::Tcp(id),
            remote: target,
            local,
        };
        if let Err(e) = connection(stream, flow, inbound.clone(), queue).await {
            tracing::debug!(peer = %target, error = %e, "outbound TCP connection ended");
        }
        let _ = inbound.send(Inbound::TcpClosed { id }).await;
    });
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
/// A TCP connection with no traffic (not even a CRLF keepalive) for this long is closed.
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Accepts TCP connections until shutdown, at most `max_connections` at a time
/// and [`MAX_CONNECTIONS_PER_SOURCE`] from one address.
pub async fn accept_loop(
    listener: TcpListener,
    inbound: mpsc::Sender<Inbound>,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let open = Arc::new(AtomicUsize::new(0));
    let per_source: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>> = Arc::default();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => return,
        };
        let (stream, remote) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "TCP accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        if open.load(Ordering::Relaxed) >= max_connections {
            tracing::warn!(peer = %remote, max_connections, "refusing TCP connection: limit reached");
            continue;
        }
        {
            let mut counts = per_source.lock().unwrap_or_else(|p| p.into_inner());
            let n = counts.entry(remote.ip()).or_default();
            if *n >= MAX_CONNECTIONS_PER_SOURCE {
                tracing::warn!(peer = %remote, "refusing TCP connection: too many from this address");
                continue;
            }
            *n += 1;
        }
        let local = match stream.local_addr() {
            Ok(a) => a,
            Err(_) => continue,
        };
        let _ = stream.set_nodelay(true);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let (writer, queue) = mpsc::channel(256);
        if inbound.send(Inbound::TcpOpened { id, writer }).await.is_err() {
            return;
        }
        open.fetch_add(1, Ordering::Relaxed);
        let open = open.clone();
        let per_source = per_source.clone();
        let inbound = inbound.clone();
        tokio::spawn(async move {
            let flow = Flow {
                transport: Transport::Tcp(id),
                remote,
                local,
            };
            if let Err(e) = connection(stream, flow, inbound.clone(), queue).await {
                tracing::debug!(peer = %remote, error = %e, "TCP connection ended");
            }
            open.fetch_sub(1, Ordering::Relaxed);
            {
                let mut counts = per_source.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(n) = counts.get_mut(&remote.ip()) {
                    *n -= 1;
                    if *n == 0 {
                        counts.remove(&remote.ip());
                    }
                }
            }
            let _ = inbound.send(Inbound::TcpClosed { id }).await;
        });
    }
}

async fn connection(stream: TcpStream, flow: Flow, inbound: mpsc::Sender<Inbound>, mut queue: mpsc::Receiver<Bytes>) -> io::Result<()> {
    let (mut reader, mut writer) = stream.into_split();
    let mut buf = BytesMut::with_capacity(8192);
    let idle = tokio::time::sleep(IDLE_TIMEOUT);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            _ = &mut idle => {
                tracing::debug!(peer = %flow.remote, "closing idle TCP connection");
                return Ok(());
            }
            n = reader.read_buf(&mut buf) => {
                if n? == 0 {
                    return Ok(());
                }
                idle.as_mut().reset(tokio::time::Instant::now() + IDLE_TIMEOUT);
                loop {
                    // RFC 5626 §4.4.1 keepalive: a double CRLF ping gets a CRLF pong;
                    // stray CRLFs between messages are skipped (RFC 3261 §7.5).
                    if buf.starts_with(b"\r\n\r\n") {
                        buf.advance(4);
                        writer.write_all(b"\r\n").await?;
                        continue;
                    }
                    let skip = buf.iter().take_while(|b| **b == b'\r' || **b == b'\n').count();
                    if skip > 0 && skip < buf.len() {
                        buf.advance(skip);
                    }
                    if buf.iter().all(|b| *b == b'\r' || *b == b'\n') {
                        break;
                    }
                    match message::frame_len(&buf) {
                        Ok(Some(len)) => {
                            let data = buf.split_to(len).freeze();
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
                if buf.capacity() > 2 * MAX_MESSAGE_LEN && buf.is_empty() {
                    buf = BytesMut::with_capacity(8192);
                }
            }
            out = queue.recv() => match out {
                Some(data) => writer.write_all(&data).await?,
                None => return Ok(()),
            },
        }
    }
}
