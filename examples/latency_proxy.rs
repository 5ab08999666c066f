//! A TCP proxy that delays every chunk by a fixed time in each direction: puts a
//! slow database between precall and PostgreSQL for the pacing benchmark.
//!
//!     cargo run --release --example latency_proxy -- 127.0.0.1:15432 127.0.0.1:5432 50

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, delay: Duration) {
    let mut buf = vec![0u8; 65536];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        tokio::time::sleep(delay).await;
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen = args.get(1).expect("listen address");
    let upstream = args.get(2).expect("upstream address").clone();
    let delay = Duration::from_millis(args.get(3).and_then(|d| d.parse().ok()).unwrap_or(50));
    let listener = TcpListener::bind(listen).await.expect("bind");
    loop {
        let Ok((client, _)) = listener.accept().await else { continue };
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(&upstream).await else { return };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::join!(pump(cr, sw, delay), pump(sr, cw, delay));
        });
    }
}
