//! The messages of the tunnel protocol, as plain data.
//!
//! Their byte encoding lives in [`crate::frame`]; here is only what they mean.

use std::net::IpAddr;

use crate::target::DialTarget;

/// Longest string field (node name, version, message) carried in a frame.
pub const MAX_STRING_LEN: usize = 1024;
/// Most node IPs an agent may announce.
pub const MAX_NODE_IPS: usize = 32;
/// Most capability strings an agent may announce.
pub const MAX_CAPABILITIES: usize = 32;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    HelloAck(HelloAck),
    Open(OpenStream),
    DialResult(DialResult),
    /// Agent → server, first frame of a stream the agent opens: which
    /// cloud-side service it wants (answered with a [`DialResult`]).
    Service(AgentService),
    /// Server → agent on the control stream: this replica is draining
    /// (SIGTERM). Open no new edge→cloud streams on this connection; the
    /// server closes it once its streams are done, then redial with backoff.
    /// Agents before it skip it as unknown.
    Leaving,
    /// A frame type this version does not know; kept so newer peers can add
    /// messages without breaking older ones. Callers log and skip it.
    Unknown {
        kind: u8,
    },
}

/// First message of the control stream, agent → server: who the agent says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The agent's protocol version ([`crate::PROTOCOL_VERSION`]).
    pub version: u16,
    /// Node name; must equal the one in the agent's certificate.
    pub node_name: String,
    /// Addresses the agent answers for; each must appear in its certificate.
    pub node_ips: Vec<IpAddr>,
    /// Build version of the agent binary, for `/agents` and logs.
    pub agent_version: String,
    /// Optional features the agent supports (e.g. `"upstream"`).
    pub capabilities: Vec<String>,
}

/// The server's answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloAck {
    /// Registered; streams may follow.
    Accepted {
        server_version: String,
        /// Over how long the agent should spread a reconnect the server
        /// refused as busy, in milliseconds: the server's estimate of how
        /// long its whole fleet takes to come back (0: no hint). Optional on
        /// the wire (servers before it send nothing; agents before it ignore it).
        reconnect_spread_ms: u32,
    },
    /// Refused; the server closes the connection after sending this.
    Rejected {
        reason: RejectReason,
        message: String,
    },
}

/// Why the server refused an agent, so the agent can log something actionable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The node name in `Hello` differs from the certificate's.
    NameMismatch,
    /// An announced IP is not in the certificate.
    IpNotInCertificate,
    /// Protocol versions are incompatible.
    UnsupportedVersion,
    /// The certificate is not an agent certificate, or is revoked.
    BadCertificate,
    /// Anything else (including reasons from newer servers).
    Other,
}

/// Server → agent, first frame of a data stream: please dial this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenStream {
    /// Server-assigned id, for correlating logs on both sides.
    pub stream_id: u64,
    /// Destination to dial at the edge.
    pub target: DialTarget,
}

/// Agent → server, answer to [`OpenStream`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialResult {
    /// Connected; raw bytes follow on the stream.
    Connected,
    /// The dial did not happen or failed; the stream ends.
    Failed {
        kind: DialErrorKind,
        message: String,
    },
}

/// Why an edge dial failed; decides the front end's HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DialErrorKind {
    /// Connection refused (RST to SYN).
    Refused,
    /// No route / host or network unreachable / name did not resolve.
    Unreachable,
    /// The agent's own dial timed out.
    Timeout,
    /// The agent's allowlist does not permit this destination.
    NotAllowed,
    /// Anything else, including kinds from newer agents.
    Other,
}

impl DialErrorKind {
    /// Stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DialErrorKind::Refused => "refused",
            DialErrorKind::Unreachable => "unreachable",
            DialErrorKind::Timeout => "timeout",
            DialErrorKind::NotAllowed => "not_allowed",
            DialErrorKind::Other => "other",
        }
    }

    pub(crate) fn to_wire(self) -> u8 {
        match self {
            DialErrorKind::Refused => 1,
            DialErrorKind::Unreachable => 2,
            DialErrorKind::Timeout => 3,
            DialErrorKind::NotAllowed => 4,
            DialErrorKind::Other => 255,
        }
    }

    pub(crate) fn from_wire(b: u8) -> Self {
        match b {
            1 => DialErrorKind::Refused,
            2 => DialErrorKind::Unreachable,
            3 => DialErrorKind::Timeout,
            4 => DialErrorKind::NotAllowed,
            _ => DialErrorKind::Other,
        }
    }
}

impl RejectReason {
    /// Stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::NameMismatch => "name_mismatch",
            RejectReason::IpNotInCertificate => "ip_not_in_certificate",
            RejectReason::UnsupportedVersion => "unsupported_version",
            RejectReason::BadCertificate => "bad_certificate",
            RejectReason::Other => "other",
        }
    }

    pub(crate) fn to_wire(self) -> u8 {
        match self {
            RejectReason::NameMismatch => 1,
            RejectReason::IpNotInCertificate => 2,
            RejectReason::UnsupportedVersion => 3,
            RejectReason::BadCertificate => 4,
            RejectReason::Other => 255,
        }
    }

    pub(crate) fn from_wire(b: u8) -> Self {
        match b {
            1 => RejectReason::NameMismatch,
            2 => RejectReason::IpNotInCertificate,
            3 => RejectReason::UnsupportedVersion,
            4 => RejectReason::BadCertificate,
            _ => RejectReason::Other,
        }
    }
}

/// A cloud-side service an agent may reach over its own connection
/// (edge→cloud streams, the reverse of [`OpenStream`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgentService {
    /// A byte stream to the server's `--apiserver` (the node proxy's upstream).
    Apiserver,
    /// Certificate renewal: CSR in, certificate chain out.
    RenewCertificate,
    /// A service this version does not know (from a newer agent); refused.
    Unknown(u8),
}

impl AgentService {
    /// Stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentService::Apiserver => "apiserver",
            AgentService::RenewCertificate => "renew_certificate",
            AgentService::Unknown(_) => "unknown",
        }
    }

    pub(crate) fn to_wire(self) -> u8 {
        match self {
            AgentService::Apiserver => 1,
            AgentService::RenewCertificate => 2,
            AgentService::Unknown(b) => b,
        }
    }

    pub(crate) fn from_wire(b: u8) -> Self {
        match b {
            1 => AgentService::Apiserver,
            2 => AgentService::RenewCertificate,
            other => AgentService::Unknown(other),
        }
    }
}
