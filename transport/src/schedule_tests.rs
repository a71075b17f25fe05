//! The classifier's answers applied to real QUIC streams (loopback).

use std::any::Any;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use certs::issue::{DEFAULT_CA_VALIDITY, DEFAULT_CERT_VALIDITY};
use certs::{CertificateAuthority, IssuedCert, NodeIdentity};
use quinn::congestion::{Controller, ControllerFactory};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use super::*;
use crate::quic::{client_config, server_endpoint, QuicTuning};
use crate::stream::{TunnelConnection, TunnelSend};

const ALPN: &[u8] = b"schedule-test";
const NAME: &str = "tunnel.test";
const LIMIT: Duration = Duration::from_secs(5);

fn chain(c: &IssuedCert) -> Vec<CertificateDer<'static>> {
    vec![CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).unwrap()]
}

fn key(c: &IssuedCert) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap()
}

/// How much a [`Gate`] lets the sender have in flight.
#[derive(Debug, Default)]
struct GateState {
    /// Total bytes the sender may send, `u64::MAX` while open.
    budget: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
}

/// A congestion controller the test opens and closes, so that data queues
/// in quinn (as behind a full congestion window) and then leaves in exactly
/// the amounts the test allows.
#[derive(Debug, Clone)]
struct Gate(Arc<GateState>);

impl Gate {
    fn new() -> Self {
        let state = GateState::default();
        state.budget.store(u64::MAX, Ordering::SeqCst);
        Gate(Arc::new(state))
    }

    /// Nothing more than what is already in flight.
    fn close(&self) {
        let sent = self.0.sent.load(Ordering::SeqCst);
        self.0.budget.store(sent, Ordering::SeqCst);
    }

    /// `bytes` more, once.
    fn allow(&self, bytes: u64) {
        self.0.budget.fetch_add(bytes, Ordering::SeqCst);
    }
}

impl Controller for Gate {
    fn on_sent(&mut self, _: Instant, bytes: u64, _: u64) {
        self.0.sent.fetch_add(bytes, Ordering::SeqCst);
    }

    fn on_ack(
        &mut self,
        _: Instant,
        _: Instant,
        bytes: u64,
        _: bool,
        _: &quinn_proto::RttEstimator,
    ) {
        self.0.acked.fetch_add(bytes, Ordering::SeqCst);
    }

    fn on_congestion_event(&mut self, _: Instant, _: Instant, _: bool, lost: u64) {
        self.0.acked.fetch_add(lost, Ordering::SeqCst);
    }

    fn on_mtu_update(&mut self, _: u16) {}

    fn window(&self) -> u64 {
        let sent = self.0.sent.load(Ordering::SeqCst);
        let in_flight = sent.saturating_sub(self.0.acked.load(Ordering::SeqCst));
        let budget = self.0.budget.load(Ordering::SeqCst);
        in_flight.saturating_add(budget.saturating_sub(sent))
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        self.window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

impl ControllerFactory for Gate {
    fn build(self: Arc<Self>, _: Instant, _: u16) -> Box<dyn Controller> {
        Box::new((*self).clone())
    }
}

/// A connected pair: (agent side, server side, endpoints to keep alive).
/// The agent sends under `gate`.
async fn pair(gate: &Gate) -> (TunnelConnection, TunnelConnection, [quinn::Endpoint; 2]) {
    let ca = CertificateAuthority::generate(DEFAULT_CA_VALIDITY).unwrap();
    let server = ca.issue_server(NAME, &[], DEFAULT_CERT_VALIDITY).unwrap();
    let identity = NodeIdentity::new("edge-1", vec!["10.1.2.3".parse().unwrap()]).unwrap();
    let agent = ca.issue_agent(&identity, DEFAULT_CERT_VALIDITY).unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der().clone()).unwrap();
    let server_tls = certs::agent_facing_server_config(
        chain(&server),
        key(&server),
        roots.clone(),
        vec![ALPN.to_vec()],
    )
    .unwrap();
    let client_tls =
        certs::agent_client_config(roots, chain(&agent), key(&agent), vec![ALPN.to_vec()]).unwrap();
    let tuning = QuicTuning::default();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server_ep = server_endpoint(any, server_tls, &tuning, b"test secret").unwrap();
    let addr = server_ep.local_addr().unwrap();
    let mut client_cfg = client_config(client_tls, &tuning).unwrap();
    let mut transport = tuning.transport_config().unwrap();
    transport.congestion_controller_factory(Arc::new(gate.clone()));
    client_cfg.transport_config(Arc::new(transport));
    let mut client_ep = quinn::Endpoint::client(any).unwrap();
    client_ep.set_default_client_config(client_cfg);
    let connecting = client_ep.connect(addr, NAME).unwrap();
    let accepting = async { server_ep.accept().await.unwrap().await };
    let (client, server_conn) = tokio::join!(connecting, accepting);
    (
        TunnelConnection::Quic(client.unwrap()),
        TunnelConnection::Quic(server_conn.unwrap()),
        [client_ep, server_ep],
    )
}

fn priority(send: &TunnelSend) -> Option<i32> {
    match send {
        TunnelSend::Quic(q) => q.priority(),
        TunnelSend::Ws(_) => None,
    }
}

#[tokio::test]
async fn priorities_follow_what_a_stream_sends() {
    let (agent, server, _eps) = pair(&Gate::new()).await;
    let (mut send, _recv) = agent.open_stream().await.unwrap();
    let drain = tokio::spawn(async move {
        let (_s, mut r) = server.accept_stream().await.unwrap();
        while let Ok(Some(_)) = r.read_chunk().await {}
    });

    send.control_phase();
    assert_eq!(priority(&send), Some(CONTROL_PRIORITY));
    send.write_chunk(Bytes::from(vec![0u8; 64 * 1024]))
        .await
        .unwrap();
    assert_eq!(
        priority(&send),
        Some(CONTROL_PRIORITY),
        "control frames stay first"
    );

    // What was sent in the control phase counts: 64 KiB is a burst.
    send.data_phase();
    assert_eq!(priority(&send), Some(BULK_PRIORITY));
    // A pause, then a keystroke: interactive again.
    tokio::time::sleep(2 * WINDOW + Duration::from_millis(20)).await;
    send.write_all(b"k").await.unwrap();
    assert_eq!(priority(&send), Some(INTERACTIVE_PRIORITY));
    send.write_chunk(Bytes::from(vec![0u8; 40 * 1024]))
        .await
        .unwrap();
    assert_eq!(priority(&send), Some(BULK_PRIORITY));
    send.finish().await;
    drain.await.unwrap();
}

/// Bulk streams with data queued in quinn (the congestion window is
/// closed), then a keystroke on a new stream; the window opens by 16 KiB.
/// The keystroke must go out in that 16 KiB: with equal priorities quinn's
/// round-robin would give it to about 13 of the 32 bulk streams queued
/// before the keystroke, and the keystroke would wait for more.
#[tokio::test]
async fn a_keystroke_overtakes_bulk_data_queued_on_the_connection() {
    const BULK_STREAMS: usize = 32;
    let gate = Gate::new();
    let (agent, server, _eps) = pair(&gate).await;
    gate.close();
    let chunk = Bytes::from(vec![0u8; 64 * 1024]);
    let mut bulk = Vec::new();
    for _ in 0..BULK_STREAMS {
        let (mut s, r) = agent.open_stream().await.unwrap();
        s.write_chunk(chunk.clone()).await.unwrap();
        assert_eq!(priority(&s), Some(BULK_PRIORITY));
        bulk.push((s, r));
    }
    let (mut keys, _kr) = agent.open_stream().await.unwrap();
    keys.write_all(b"k").await.unwrap();
    assert_eq!(priority(&keys), Some(INTERACTIVE_PRIORITY));

    gate.allow(16 * 1024);
    // The keystroke's stream is the last one opened: accepting it needs its
    // first frame (lower ids open implicitly with it).
    let keystroke = tokio::time::timeout(LIMIT, async {
        for _ in 0..BULK_STREAMS {
            server.accept_stream().await.unwrap();
        }
        let (_s, mut r) = server.accept_stream().await.unwrap();
        let mut b = [0u8; 1];
        let n = r.read(&mut b).await.unwrap();
        (n, b)
    })
    .await;
    assert_eq!(
        keystroke.ok(),
        Some((1, *b"k")),
        "the keystroke did not get through the 16 KiB the window let out"
    );
}
