//! delayproxy: TCP forwarders on 127.0.0.1 that add a one-way delay each way, like a WAN link to
//! S3 and KMS, for `scripts/bench-latency.sh` and `scripts/bench-get.sh --delay-ms`. Why a proxy
//! and not `tc netem`: this kernel has no netem qdisc (BENCHMARKS.md, "Latency-bound bed"). The
//! same model ran as `scripts/bench/delayproxy.py` until 2026-11-30 (`git show
//! b9f785d:scripts/bench/delayproxy.py`); this one takes about half its CPU, and on a two-core bed
//! the proxy's CPU is taken from the emulators', where netem's delay would cost nothing in user
//! space.
//!
//! - every chunk read from one side is written to the other side DELAY ms after it was read, in
//!   order, in both directions;
//! - a new connection's first bytes wait one more round trip (2 x DELAY): the TCP handshake that
//!   a loopback connect() skips.
//!
//! ```text
//! cargo build --release --example delayproxy
//! target/release/examples/delayproxy --delay-ms 10 --to http://127.0.0.1:8333 --to http://127.0.0.1:4599
//! ```
//! prints one line per target, `http://127.0.0.1:PORT <- http://127.0.0.1:8333`, then `ready`.
//! One thread; bandwidth is not limited, and a queued chunk holds only its own bytes.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

const CHUNK: usize = 256 * 1024;

/// One direction of one connection: `read` is read as it comes, each chunk is written to `write`
/// `delay` after it was read (plus `first_extra` for the first one). An empty chunk is the end.
async fn pipe(
    mut read: tokio::net::tcp::OwnedReadHalf,
    mut write: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    first_extra: Duration,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut extra = first_extra;
        let mut buf = vec![0; CHUNK];
        loop {
            let n = read.read(&mut buf).await.unwrap_or(0);
            let _ = tx.send((Instant::now() + delay + extra, buf[..n].to_vec()));
            extra = Duration::ZERO;
            if n == 0 {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((due, data)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if data.is_empty() || write.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = write.shutdown().await;
    };
    tokio::join!(reader, writer);
}

async fn serve(client: TcpStream, target: String, delay: Duration) {
    let server = match TcpStream::connect(&target).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("delayproxy: connect to {target}: {e}");
            return;
        }
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    tokio::join!(
        pipe(cr, sw, delay, 2 * delay),
        pipe(sr, cw, delay, Duration::ZERO)
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut delay_ms: Option<f64> = None;
    let mut targets = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--delay-ms" => {
                delay_ms = Some(args.next().ok_or("--delay-ms needs a value")?.parse()?)
            }
            "--to" => targets.push(args.next().ok_or("--to needs a URL")?),
            _ => {
                return Err(format!(
                    "unknown argument {a}; usage: delayproxy --delay-ms MS --to URL..."
                )
                .into());
            }
        }
    }
    let delay_ms = delay_ms.ok_or("--delay-ms is required")?;
    if !(0.0..=60_000.0).contains(&delay_ms) {
        return Err(format!("--delay-ms {delay_ms}: give 0 to 60000").into());
    }
    let delay = Duration::from_secs_f64(delay_ms / 1000.0);
    if targets.is_empty() {
        return Err("at least one --to URL is required".into());
    }
    for url in targets {
        let hostport = url
            .strip_prefix("http://")
            .ok_or("targets are http://host:port")?
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        println!("http://{} <- {url}", listener.local_addr()?);
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((conn, _)) => {
                        tokio::spawn(serve(conn, hostport.clone(), delay));
                    }
                    // EMFILE, ECONNABORTED...: the listener stays; the next accept may succeed.
                    Err(e) => {
                        eprintln!("delayproxy: accept on {url}: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
    }
    println!("ready");
    std::future::pending::<()>().await;
    Ok(())
}
