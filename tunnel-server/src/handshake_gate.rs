//! Storm control for the agent port: at most `--max-pending-handshakes`
//! agent connections between their first packet and registration, and a
//! cheap refusal for the rest (QUIC `CONNECTION_REFUSED` before any crypto, a
//! closed TCP socket before TLS), so a reconnect wave after a restart is
//! admitted at the rate the server can take instead of timing out.
//!
//! Past half the budget, QUIC clients must first prove their address with a
//! Retry (one extra round trip), so Initial packets from spoofed sources
//! cannot hold the slots and lock real agents out.
//!
//! Registered agents learn from their `HelloAck` over how long to spread a
//! retry the server refused ([`reconnect_spread`]), so refused agents do not
//! come back as one synchronized wave either.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Registrations per second the spread hint assumes the server admits: a
/// measured handshake rate on a 2-core server with room to spare.
pub const ADMIT_RATE_PER_SEC: usize = 500;
/// Longest spread the hint asks for.
pub const MAX_SPREAD: Duration = Duration::from_secs(60);

/// The pending-handshake budget of one agent port.
#[derive(Debug, Clone)]
pub struct HandshakeGate {
    slots: Arc<Semaphore>,
    max: usize,
}

/// A handshake in progress; dropping it (registered, refused or failed)
/// frees the slot.
#[derive(Debug)]
pub struct HandshakePermit(#[allow(dead_code)] OwnedSemaphorePermit);

impl HandshakeGate {
    /// A gate of `max` concurrent handshakes.
    pub fn new(max: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// A slot, or `None` at once when all are taken.
    pub fn try_enter(&self) -> Option<HandshakePermit> {
        self.slots
            .clone()
            .try_acquire_owned()
            .ok()
            .map(HandshakePermit)
    }

    /// Whether at least half the slots are taken: from then on, QUIC
    /// clients must prove their address (a Retry round trip) before they get
    /// one, so spoofed Initial packets cannot hold the slots.
    pub fn under_pressure(&self) -> bool {
        self.slots.available_permits() * 2 <= self.max
    }
}

/// How long a fleet of `connected` agents takes to come back at
/// [`ADMIT_RATE_PER_SEC`], capped at [`MAX_SPREAD`]: the window an agent
/// spreads a refused reconnect over.
pub fn reconnect_spread(connected: usize) -> Duration {
    let ms = connected.saturating_mul(1000) / ADMIT_RATE_PER_SEC;
    Duration::from_millis(ms as u64).min(MAX_SPREAD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_admits_up_to_its_size_and_frees_on_drop() {
        let gate = HandshakeGate::new(2);
        let a = gate.try_enter().unwrap();
        let _b = gate.try_enter().unwrap();
        assert!(gate.try_enter().is_none());
        drop(a);
        assert!(gate.try_enter().is_some());
    }

    #[test]
    fn pressure_starts_at_half_the_slots() {
        let gate = HandshakeGate::new(4);
        let a = gate.try_enter().unwrap();
        assert!(!gate.under_pressure());
        let b = gate.try_enter().unwrap();
        assert!(gate.under_pressure());
        drop((a, b));
        assert!(!gate.under_pressure());
    }

    #[test]
    fn the_spread_grows_with_the_fleet_and_is_capped() {
        assert_eq!(reconnect_spread(0), Duration::ZERO);
        assert_eq!(reconnect_spread(1), Duration::from_millis(2));
        assert_eq!(reconnect_spread(10_000), Duration::from_secs(20));
        assert_eq!(reconnect_spread(1_000_000), MAX_SPREAD);
    }
}
