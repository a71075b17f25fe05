//! Congestion control for QUIC connections on edge links: which controller a
//! sender uses (`--congestion-control`), and the loss-tolerant CUBIC built for
//! links that lose packets without being full ([`loss_tolerant`]).

pub mod loss_tolerant;

use std::sync::Arc;

/// `--congestion-control`: which congestion controller a QUIC connection's
/// sender uses. Each end picks its own for what it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CongestionControl {
    /// CUBIC (RFC 9438): quinn's default and Linux TCP's.
    Cubic,
    /// NewReno (RFC 9002's reference controller).
    NewReno,
    /// BBR (v1, as quinn implements it, marked experimental there): paces to
    /// the measured bottleneck bandwidth instead of backing off on every loss.
    Bbr,
    /// CUBIC that does not back off for random loss ([`loss_tolerant`]):
    /// the default, chosen on the weak-link bench (docs/benchmarks.md, "Weak
    /// links"): 1.7× CUBIC's rate at 1 % loss, and unlike BBR it leaves
    /// other flows on the link their share.
    #[default]
    LossTolerant,
}

/// A `--congestion-control` value that names no controller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown congestion controller {0:?}: expected loss-tolerant, cubic, newreno or bbr")]
pub struct UnknownCongestionControl(pub String);

impl std::str::FromStr for CongestionControl {
    type Err = UnknownCongestionControl;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cubic" => Ok(Self::Cubic),
            "newreno" | "new-reno" => Ok(Self::NewReno),
            "bbr" => Ok(Self::Bbr),
            "loss-tolerant" => Ok(Self::LossTolerant),
            _ => Err(UnknownCongestionControl(s.to_string())),
        }
    }
}

impl CongestionControl {
    /// The flag value, for logs and `check-config`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cubic => "cubic",
            Self::NewReno => "newreno",
            Self::Bbr => "bbr",
            Self::LossTolerant => "loss-tolerant",
        }
    }

    pub(crate) fn factory(self) -> Arc<dyn quinn::congestion::ControllerFactory + Send + Sync> {
        use quinn::congestion::{BbrConfig, CubicConfig, NewRenoConfig};
        match self {
            Self::Cubic => Arc::new(CubicConfig::default()),
            Self::NewReno => Arc::new(NewRenoConfig::default()),
            Self::Bbr => Arc::new(BbrConfig::default()),
            Self::LossTolerant => Arc::new(loss_tolerant::LossTolerantConfig {
                inner: Arc::new(CubicConfig::default()),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn congestion_controllers_parse_by_name() {
        for (name, want) in [
            ("cubic", CongestionControl::Cubic),
            ("NewReno", CongestionControl::NewReno),
            ("new-reno", CongestionControl::NewReno),
            ("bbr", CongestionControl::Bbr),
            ("loss-tolerant", CongestionControl::LossTolerant),
        ] {
            assert_eq!(name.parse::<CongestionControl>(), Ok(want), "{name}");
        }
        for c in [
            CongestionControl::Cubic,
            CongestionControl::NewReno,
            CongestionControl::Bbr,
            CongestionControl::LossTolerant,
        ] {
            assert_eq!(c.as_str().parse::<CongestionControl>(), Ok(c));
        }
        let err = "vegas".parse::<CongestionControl>().unwrap_err();
        assert!(
            err.to_string()
                .contains("loss-tolerant, cubic, newreno or bbr"),
            "{err}"
        );
    }
}
