//! The value of `edgetunnel.io/autonomy-duration`: a Go-style duration (`24h`, `90m`,
//! `1h30m`, `1.5h`), `0` meaning forever.

/// How long pods of a node tolerate its being unreachable or not ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Autonomy {
    /// `tolerationSeconds` of this many seconds.
    Seconds(i64),
    /// No `tolerationSeconds`: tolerated forever (annotation `0`).
    Forever,
}

/// Why an annotation value is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{0:?} is not a duration such as 24h, 90m or 0")]
    Syntax(String),
    #[error("{0:?} is negative")]
    Negative(String),
    #[error("{0:?} is shorter than one second (tolerationSeconds counts whole seconds)")]
    SubSecond(String),
}

/// Parses a Go `time.ParseDuration` string; the result is rounded down to whole seconds.
/// `0` (with or without unit) is [`Autonomy::Forever`].
pub fn parse_autonomy(text: &str) -> Result<Autonomy, DurationError> {
    let syntax = || DurationError::Syntax(text.to_owned());
    let s = text.trim();
    let (negative, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Ok(Autonomy::Forever);
    }
    if rest.is_empty() {
        return Err(syntax());
    }
    let mut nanos: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(syntax)?;
        let (num, tail) = rest.split_at(num_len);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(syntax());
        }
        let value: f64 = num.parse().map_err(|_| syntax())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(syntax()),
        };
        nanos += value * scale;
        rest = tail;
    }
    // Go's limit: about 290 years.
    if nanos > i64::MAX as f64 {
        return Err(syntax());
    }
    if nanos == 0.0 {
        return Ok(Autonomy::Forever);
    }
    if negative {
        return Err(DurationError::Negative(text.to_owned()));
    }
    let seconds = (nanos / 1e9).floor() as i64;
    if seconds == 0 {
        return Err(DurationError::SubSecond(text.to_owned()));
    }
    Ok(Autonomy::Seconds(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_autonomy("24h"), Ok(Autonomy::Seconds(86_400)));
        assert_eq!(parse_autonomy("90m"), Ok(Autonomy::Seconds(5_400)));
        assert_eq!(parse_autonomy("1h30m"), Ok(Autonomy::Seconds(5_400)));
        assert_eq!(parse_autonomy("1.5h"), Ok(Autonomy::Seconds(5_400)));
        assert_eq!(parse_autonomy("300s"), Ok(Autonomy::Seconds(300)));
        assert_eq!(parse_autonomy("2500ms"), Ok(Autonomy::Seconds(2)));
        assert_eq!(parse_autonomy(" 10m "), Ok(Autonomy::Seconds(600)));
    }

    #[test]
    fn zero_is_forever() {
        for z in ["0", "0s", "0h0m", "-0"] {
            assert_eq!(parse_autonomy(z), Ok(Autonomy::Forever), "{z}");
        }
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in ["", "24", "1d", "h", "1.2.3h", "forever", "24 h", "."] {
            let r = parse_autonomy(bad);
            assert!(matches!(r, Err(DurationError::Syntax(_))), "{bad}: {r:?}");
        }
        assert!(matches!(
            parse_autonomy("-1h"),
            Err(DurationError::Negative(_))
        ));
        assert!(matches!(
            parse_autonomy("500ms"),
            Err(DurationError::SubSecond(_))
        ));
        assert!(parse_autonomy("9999999999h").is_err());
    }
}
