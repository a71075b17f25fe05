//! `LinkRelay`: a TCP relay standing for the WAN link between a node and the cloud, which a
//! test can cut (silence, no RST, like a dead link), restore, or reset.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Time allowed to connect to the upstream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes relayed per read.
const RELAY_BUFFER: usize = 16 * 1024;

/// The link as a connection sees it; connections compare it with the state at their birth.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkState {
    /// No byte passes while true.
    pub cut: bool,
    /// Number of cuts so far.
    pub cuts: u64,
    /// Number of `reset_all` calls so far.
    pub resets: u64,
    /// The relay was dropped.
    pub closed: bool,
    /// Bytes per second per connection and direction, `None` for unlimited.
    pub rate_limit: Option<u64>,
}

/// What a connection does now, given the link state when it was accepted and now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Relay bytes.
    Forward,
    /// Relay nothing, read nothing: the link is cut.
    Hold,
    /// Close normally (FIN): the link came back after a cut this connection lived through.
    Close,
    /// Close with RST.
    Reset,
}

/// The current state, marked as seen (so `changed()` waits for the next change).
fn seen(state: &mut watch::Receiver<LinkState>) -> LinkState {
    let now = *state.borrow_and_update();
    now
}

/// Decides a connection's [`Fate`] (pure, so it is tested without sockets).
pub fn fate(born: LinkState, now: LinkState) -> Fate {
    if now.closed {
        Fate::Close
    } else if now.resets != born.resets {
        Fate::Reset
    } else if born.cut || now.cuts != born.cuts {
        if now.cut {
            Fate::Hold
        } else {
            Fate::Close
        }
    } else {
        Fate::Forward
    }
}

/// A cuttable TCP relay on `127.0.0.1:0` to one upstream address.
pub struct LinkRelay {
    addr: SocketAddr,
    state: Arc<watch::Sender<LinkState>>,
    acceptor_task: JoinHandle<()>,
}

impl LinkRelay {
    /// Starts relaying connections made to [`Self::addr`] to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<LinkRelay> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(watch::Sender::new(LinkState::default()));
        let acceptor_task = tokio::spawn(accept_loop(listener, upstream, state.clone()));
        tracing::info!(component = "link-relay", %addr, %upstream, "relaying");
        Ok(LinkRelay {
            addr,
            state,
            acceptor_task,
        })
    }

    /// The address clients dial instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blackholes the link: open connections stay open but pass nothing either way; new
    /// connections are accepted but never forwarded.
    pub fn cut(&self) {
        tracing::info!(component = "link-relay", addr = %self.addr, "cut");
        self.state.send_modify(|s| {
            if !s.cut {
                s.cut = true;
                s.cuts += 1;
            }
        });
    }

    /// Ends a cut: new connections forward again; those open during the cut are closed.
    pub fn restore(&self) {
        tracing::info!(component = "link-relay", addr = %self.addr, "restore");
        self.state.send_modify(|s| s.cut = false);
    }

    /// Throttles every connection (open and new) to `bytes_per_sec` in each direction, like a
    /// slow WAN link; `None` lifts the limit.
    pub fn set_rate_limit(&self, bytes_per_sec: Option<u64>) {
        tracing::info!(component = "link-relay", addr = %self.addr, ?bytes_per_sec, "rate limit");
        self.state
            .send_modify(|s| s.rate_limit = bytes_per_sec.map(|r| r.max(1)));
    }

    /// Resets (RST) every open connection, like a link flap; later ones forward normally.
    pub fn reset_all(&self) {
        tracing::info!(component = "link-relay", addr = %self.addr, "reset all");
        self.state.send_modify(|s| s.resets += 1);
    }
}

impl Drop for LinkRelay {
    fn drop(&mut self) {
        self.acceptor_task.abort();
        self.state.send_modify(|s| s.closed = true);
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    state: Arc<watch::Sender<LinkState>>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let born = *state.borrow();
        tokio::spawn(relay_connection(client, upstream, born, state.subscribe()));
    }
}

async fn relay_connection(
    mut client: TcpStream,
    upstream: SocketAddr,
    born: LinkState,
    mut state: watch::Receiver<LinkState>,
) {
    if born.cut {
        // Accepted during a cut: never forwarded; closed (or reset) when the cut ends.
        let end = wait_while_held(born, &mut state).await;
        finish(&client, None, end);
        return;
    }
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(upstream)).await;
    let Ok(Ok(mut server)) = connect else {
        tracing::debug!(component = "link-relay", %upstream, "upstream connect failed");
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let end = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let up = pump(client_read, server_write, born, state.clone());
        let down = pump(server_read, client_write, born, state.clone());
        both_directions(up, down).await
    };
    finish(&client, Some(&server), end);
}

/// Waits until a held connection's fate is no longer [`Fate::Hold`].
async fn wait_while_held(born: LinkState, state: &mut watch::Receiver<LinkState>) -> Fate {
    loop {
        match fate(born, seen(state)) {
            Fate::Hold | Fate::Forward => {}
            end => return end,
        }
        if state.changed().await.is_err() {
            return Fate::Close;
        }
    }
}

/// Runs both directions; returns Close when both reached EOF, else the first Close/Reset.
async fn both_directions(
    up: impl std::future::Future<Output = Fate>,
    down: impl std::future::Future<Output = Fate>,
) -> Fate {
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        let end = tokio::select! {
            end = &mut up, if !up_done => { up_done = true; end }
            end = &mut down, if !down_done => { down_done = true; end }
        };
        if end != Fate::Forward {
            return end;
        }
    }
    Fate::Close
}

/// Closes the sockets, with RST (SO_LINGER 0) for [`Fate::Reset`].
fn finish(client: &TcpStream, server: Option<&TcpStream>, end: Fate) {
    if end == Fate::Reset {
        for stream in std::iter::once(client).chain(server) {
            let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
        }
    }
}

/// Copies one direction while the link forwards. Returns [`Fate::Forward`] at EOF (after
/// passing the half-close on), or the fate that ended it.
async fn pump(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    born: LinkState,
    mut state: watch::Receiver<LinkState>,
) -> Fate {
    let mut buf = vec![0u8; RELAY_BUFFER];
    loop {
        match fate(born, seen(&mut state)) {
            Fate::Forward => {}
            Fate::Hold => {
                if state.changed().await.is_err() {
                    return Fate::Close;
                }
                continue;
            }
            end => return end,
        }
        let rate = state.borrow().rate_limit;
        let chunk = rate.map_or(RELAY_BUFFER, |r| chunk_for_rate(r, RELAY_BUFFER));
        let n = tokio::select! {
            read = from.read(&mut buf[..chunk]) => match read {
                Ok(0) => {
                    let _ = to.shutdown().await;
                    return Fate::Forward;
                }
                Ok(n) => n,
                Err(_) => return Fate::Close,
            },
            changed = state.changed() => {
                if changed.is_err() {
                    return Fate::Close;
                }
                continue;
            }
        };
        if !write_while_forwarding(&mut to, &buf[..n], born, &mut state).await {
            return Fate::Close;
        }
        if let Some(rate) = rate {
            // Pace to the limit; a state change (cut, reset) ends the pause early.
            let pause = Duration::from_secs_f64(n as f64 / rate as f64);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = state.changed() => {}
            }
        }
    }
}

/// Bytes to relay at once under a rate limit: about 1/20 s worth, so pacing is smooth.
fn chunk_for_rate(bytes_per_sec: u64, max: usize) -> usize {
    usize::try_from(bytes_per_sec / 20).map_or(max, |c| c.clamp(1, max))
}

/// Writes `data` unless the link stops forwarding first (then the rest is dropped, like
/// packets lost on a dead link). False if the peer is gone.
async fn write_while_forwarding(
    to: &mut WriteHalf<'_>,
    data: &[u8],
    born: LinkState,
    state: &mut watch::Receiver<LinkState>,
) -> bool {
    let mut written = 0;
    while written < data.len() {
        if fate(born, seen(state)) != Fate::Forward {
            return true;
        }
        tokio::select! {
            result = to.write(&data[written..]) => match result {
                Ok(0) | Err(_) => return false,
                Ok(k) => written += k,
            },
            changed = state.changed() => if changed.is_err() { return false },
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(cut: bool, cuts: u64, resets: u64) -> LinkState {
        LinkState {
            cut,
            cuts,
            resets,
            ..LinkState::default()
        }
    }

    #[test]
    fn rate_limited_chunks_stay_within_bounds() {
        assert_eq!(chunk_for_rate(40_000, RELAY_BUFFER), 2_000);
        assert_eq!(chunk_for_rate(1, RELAY_BUFFER), 1);
        assert_eq!(chunk_for_rate(u64::MAX, RELAY_BUFFER), RELAY_BUFFER);
    }

    #[test]
    fn connections_live_through_nothing_forward() {
        assert_eq!(fate(state(false, 0, 0), state(false, 0, 0)), Fate::Forward);
        assert_eq!(fate(state(false, 1, 0), state(false, 1, 0)), Fate::Forward);
    }

    #[test]
    fn a_cut_holds_then_closes_on_restore() {
        let born = state(false, 0, 0);
        assert_eq!(fate(born, state(true, 1, 0)), Fate::Hold);
        assert_eq!(fate(born, state(false, 1, 0)), Fate::Close);
        let born_in_cut = state(true, 1, 0);
        assert_eq!(fate(born_in_cut, state(true, 1, 0)), Fate::Hold);
        assert_eq!(fate(born_in_cut, state(false, 1, 0)), Fate::Close);
    }

    #[test]
    fn resets_and_drop_end_everything() {
        assert_eq!(fate(state(false, 0, 0), state(false, 0, 1)), Fate::Reset);
        assert_eq!(fate(state(true, 1, 0), state(true, 1, 1)), Fate::Reset);
        let mut closed = state(false, 0, 0);
        closed.closed = true;
        assert_eq!(fate(state(false, 0, 0), closed), Fate::Close);
    }
}
