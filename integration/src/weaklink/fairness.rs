//! Sharing the link with other traffic: a plain TCP bulk flow alone, then
//! beside the path's own bulk flow, both counted at the edge.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::bench::dial::{Conn, Dialer, Service};
use crate::bench::measure::payload;

/// Flows the meter tells apart (by the first byte a client sends).
pub const FLOWS: usize = 2;

/// An edge service that counts received bytes per flow, readable in process.
#[derive(Clone)]
pub struct Meter {
    pub addr: SocketAddr,
    received: Arc<[AtomicU64; FLOWS]>,
}

impl Meter {
    /// Listens on `bind`; each connection first sends its flow number (one
    /// byte, below [`FLOWS`]), then bulk data until it is closed.
    pub async fn start(bind: SocketAddr) -> std::io::Result<Self> {
        let l = TcpListener::bind(bind).await?;
        let addr = l.local_addr()?;
        let received: Arc<[AtomicU64; FLOWS]> = Arc::new(Default::default());
        let counters = received.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let counters = counters.clone();
                tokio::spawn(async move {
                    let mut flow = [0u8; 1];
                    if s.read_exact(&mut flow).await.is_err() {
                        return;
                    }
                    let Some(counter) = counters.get(usize::from(flow[0])) else {
                        return;
                    };
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        counter.fetch_add(n as u64, Ordering::Relaxed);
                    }
                });
            }
        });
        Ok(Self { addr, received })
    }

    fn bytes(&self, flow: usize) -> u64 {
        self.received[flow].load(Ordering::Relaxed)
    }
}

/// Rates over one window, Mbit/s.
#[derive(Debug, Clone, Copy)]
pub struct Shares {
    pub tcp_alone: f64,
    pub tcp_beside: f64,
    pub path_beside: f64,
}

/// Writes until aborted.
async fn flood(mut c: Conn, flow: u8) -> anyhow::Result<()> {
    let data = payload();
    c.write_all(&[flow]).await?;
    loop {
        c.write_all(&data).await?;
    }
}

async fn rate(meter: &Meter, flow: usize, window: Duration) -> f64 {
    let (b0, t0) = (meter.bytes(flow), Instant::now());
    tokio::time::sleep(window).await;
    (meter.bytes(flow) - b0) as f64 * 8.0 / 1e6 / t0.elapsed().as_secs_f64()
}

/// Plain TCP (`tcp`, flow 0) alone for `settle + window`, then the path
/// (`path`, flow 1) joins and both are counted over another window.
/// Both dialers' "sink" must be the meter.
pub async fn beside_tcp(
    meter: &Meter,
    tcp: &Dialer,
    path: &Dialer,
    settle: Duration,
    window: Duration,
) -> anyhow::Result<Shares> {
    let tcp_flow = tokio::spawn(flood(tcp.dial(Service::Sink).await?, 0));
    tokio::time::sleep(settle).await;
    let tcp_alone = rate(meter, 0, window).await;
    let path_flow = tokio::spawn(flood(path.dial(Service::Sink).await?, 1));
    tokio::time::sleep(settle).await;
    let (tcp_beside, path_beside) = tokio::join!(rate(meter, 0, window), rate(meter, 1, window));
    for (name, f) in [("plain TCP", &tcp_flow), ("the path's", &path_flow)] {
        if f.is_finished() {
            anyhow::bail!("{name} bulk flow ended early");
        }
    }
    tcp_flow.abort();
    path_flow.abort();
    Ok(Shares {
        tcp_alone,
        tcp_beside,
        path_beside,
    })
}
