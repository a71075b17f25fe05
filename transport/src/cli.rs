//! Command-line plumbing shared by both binaries: `--config FILE` and the
//! duration and size syntax (`10s`, `5m`, `1GiB`) the spec uses.
//!
//! A config file is YAML whose keys are the long flag names; it is turned into
//! flags placed *before* the real command line, so clap validates both the same
//! way and a flag given on the command line wins over the file.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why the config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid YAML: {message}")]
    Yaml { path: PathBuf, message: String },
    #[error("config file {path}: top level must be a mapping of flag names to values")]
    NotAMapping { path: PathBuf },
    #[error("config file {path}: key {key:?} is not a flag name (use the long flag without dashes, e.g. agent-addr)")]
    BadKey { path: PathBuf, key: String },
    #[error(
        "config file {path}: value of {key:?} must be a string, number, boolean or list of those"
    )]
    BadValue { path: PathBuf, key: String },
    #[error("--config needs a file name")]
    MissingPath,
}

/// Returns `args` with the flags from `--config FILE` (if present) inserted
/// right after the program name.
pub fn expand_config_file(args: Vec<OsString>) -> Result<Vec<OsString>, ConfigFileError> {
    let mut path = None;
    let mut iter = args.iter().skip(1);
    while let Some(a) = iter.next() {
        let s = a.to_string_lossy();
        if s == "--" {
            break;
        }
        if s == "--config" {
            path = Some(PathBuf::from(
                iter.next().ok_or(ConfigFileError::MissingPath)?,
            ));
        } else if let Some(p) = s.strip_prefix("--config=") {
            path = Some(PathBuf::from(p));
        }
    }
    let Some(path) = path else { return Ok(args) };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigFileError::Read {
        path: path.clone(),
        source,
    })?;
    let flags = yaml_to_flags(&path, &text)?;
    let mut out = Vec::with_capacity(args.len() + flags.len());
    let mut args = args.into_iter();
    out.extend(args.next());
    out.extend(flags);
    out.extend(args);
    Ok(out)
}

/// Removes a leading subcommand that shares the serving flags (e.g. `check-config`) from
/// `args` and returns it, so the rest goes through [`expand_config_file`] and the normal
/// parse exactly as a real run does (a config file's flags land right after the program
/// name, where they would be parsed as the subcommand's otherwise).
pub fn take_subcommand(args: &mut Vec<OsString>, names: &[&str]) -> Option<String> {
    let first = args.get(1)?.to_str()?.to_owned();
    if names.contains(&first.as_str()) {
        args.remove(1);
        Some(first)
    } else {
        None
    }
}

/// Converts a YAML mapping into `--key=value` flags.
pub fn yaml_to_flags(path: &Path, text: &str) -> Result<Vec<OsString>, ConfigFileError> {
    use serde_yaml_ng::Value;
    let value: Value = serde_yaml_ng::from_str(text).map_err(|e| ConfigFileError::Yaml {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let map = match value {
        Value::Mapping(m) => m,
        Value::Null => return Ok(Vec::new()),
        _ => {
            return Err(ConfigFileError::NotAMapping {
                path: path.to_path_buf(),
            })
        }
    };
    let mut flags = Vec::new();
    for (k, v) in map {
        let key = match k {
            Value::String(s) if is_flag_name(&s) && s != "config" => s,
            other => {
                return Err(ConfigFileError::BadKey {
                    path: path.to_path_buf(),
                    key: format!("{other:?}"),
                })
            }
        };
        let bad = || ConfigFileError::BadValue {
            path: path.to_path_buf(),
            key: key.clone(),
        };
        let items = match v {
            Value::Sequence(seq) => seq,
            Value::Null => continue,
            other => vec![other],
        };
        for item in items {
            match item {
                // Boolean flags take a value (`--per-node-metrics=false`),
                // so both values are passed through explicitly.
                Value::Bool(b) => flags.push(OsString::from(format!("--{key}={b}"))),
                Value::String(s) => flags.push(OsString::from(format!("--{key}={s}"))),
                Value::Number(n) => flags.push(OsString::from(format!("--{key}={n}"))),
                _ => return Err(bad()),
            }
        }
    }
    Ok(flags)
}

fn is_flag_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
}

/// Parses durations like `10s`, `5m`, `1h30m`, `250ms` (a unit is required).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = || format!("invalid duration {s:?} (expected e.g. 10s, 5m, 1h30m, 250ms)");
    let s = s.trim();
    if s.is_empty() {
        return Err(err());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(err)?),
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(err)?),
            "d" => Duration::from_secs(n.checked_mul(86400).ok_or_else(err)?),
            _ => return Err(err()),
        };
        total = total.checked_add(part).ok_or_else(err)?;
    }
    Ok(total)
}

/// Parses sizes like `1GiB`, `512MiB`, `10MB`, `4096` (bytes).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let err = || format!("invalid size {s:?} (expected e.g. 1GiB, 512MiB, 100MB, 4096)");
    let s = s.trim();
    let digits = s.bytes().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return Err(err());
    }
    let n: u64 = s[..digits].parse().map_err(|_| err())?;
    let mult: u64 = match s[digits..].trim() {
        "" | "B" => 1,
        "KB" | "k" | "K" => 1_000,
        "MB" | "M" => 1_000_000,
        "GB" | "G" => 1_000_000_000,
        "KiB" | "Ki" => 1 << 10,
        "MiB" | "Mi" => 1 << 20,
        "GiB" | "Gi" => 1 << 30,
        "TiB" | "Ti" => 1 << 40,
        _ => return Err(err()),
    };
    n.checked_mul(mult).ok_or_else(err)
}

/// Raises the open-file limit to the hard limit: a server holds thousands
/// of agents and front-end connections, an agent one socket per stream.
pub fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the file descriptor limit"),
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), colored only on a terminal.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Resolves on SIGTERM or Ctrl-C: the moment to close connections gracefully.
pub async fn wait_for_shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "10", "s", "10x", "-1s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("100MB"), Ok(100_000_000));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("1XB").is_err());
        assert!(parse_bytes("99999999999TiB").is_err());
    }

    #[test]
    fn yaml_becomes_flags_before_command_line() {
        let dir = std::env::temp_dir().join(format!("cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.yaml");
        std::fs::write(
            &f,
            "agent-addr: 0.0.0.0:9000\nforward:\n  - 1=a/b:2\n  - 3=c/d:4\nverbose: true\nquiet: false\ndial-timeout: 5s\n",
        )
        .unwrap();
        let args: Vec<OsString> = ["prog", "--config", f.to_str().unwrap(), "--x=1"]
            .iter()
            .map(OsString::from)
            .collect();
        let out: Vec<String> = expand_config_file(args)
            .unwrap()
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        assert_eq!(
            out,
            vec![
                "prog",
                "--agent-addr=0.0.0.0:9000",
                "--forward=1=a/b:2",
                "--forward=3=c/d:4",
                "--verbose=true",
                "--quiet=false",
                "--dial-timeout=5s",
                "--config",
                f.to_str().unwrap(),
                "--x=1"
            ]
        );
    }

    #[test]
    fn yaml_errors_name_the_file_and_key() {
        let p = Path::new("/etc/x.yaml");
        let e = yaml_to_flags(p, "- a\n- b\n").unwrap_err().to_string();
        assert!(e.contains("/etc/x.yaml"), "{e}");
        let e = yaml_to_flags(p, "Agent_Addr: 1\n").unwrap_err().to_string();
        assert!(e.contains("Agent_Addr"), "{e}");
        let e = yaml_to_flags(p, "a: {b: 1}\n").unwrap_err().to_string();
        assert!(e.contains("\"a\""), "{e}");
        let e = yaml_to_flags(p, "a: [\n").unwrap_err().to_string();
        assert!(e.contains("not valid YAML"), "{e}");
    }

    #[test]
    fn takes_only_a_leading_subcommand() {
        let v = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        let mut a = v(&["s", "check-config", "--uds=x"]);
        assert_eq!(
            take_subcommand(&mut a, &["check-config"]).as_deref(),
            Some("check-config")
        );
        assert_eq!(a, v(&["s", "--uds=x"]));
        let mut a = v(&["s", "--uds=check-config"]);
        assert_eq!(take_subcommand(&mut a, &["check-config"]), None);
        assert_eq!(a, v(&["s", "--uds=check-config"]));
        assert_eq!(take_subcommand(&mut v(&["s"]), &["check-config"]), None);
    }
}
