//! `--registry URL`: where the registry lives. `sqlite:PATH` (by default the
//! data directory's `bootd.db`) or `postgres://USER@HOST[:PORT]/DB`. A URL
//! may carry a password; it never appears in errors or logs: only
//! [`PgTarget::shown`], the URL without it, does.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub enum Registry {
    /// `bootd.db` in the data directory.
    #[default]
    DataDir,
    Sqlite(PathBuf),
    Postgres(Box<PgTarget>),
}

#[derive(Clone)]
pub struct PgTarget {
    pub config: postgres::Config,
    /// `postgres://USER@HOST:PORT/DB`: what errors and logs name.
    pub shown: String,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("--registry: expected sqlite:PATH or postgres://USER@HOST[:PORT]/DB")]
    Scheme,
    #[error("--registry: sqlite: needs a path")]
    EmptyPath,
    /// The parser's messages name options, never values.
    #[error("--registry: invalid postgres URL")]
    Postgres(#[source] postgres::Error),
    #[error("--registry: the postgres URL names no user")]
    NoUser,
}

/// Connecting gives up after this long, so a registry that is down fails a
/// command instead of hanging it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Registry {
    /// Parses `url`; `pgpassword` (the `PGPASSWORD` variable) is the
    /// password when the URL carries none, as libpq does.
    pub fn parse(url: &str, pgpassword: Option<String>) -> Result<Self, UrlError> {
        if let Some(path) = url.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err(UrlError::EmptyPath);
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(UrlError::Scheme);
        }
        let mut config = postgres::Config::from_str(url).map_err(UrlError::Postgres)?;
        let user = config.get_user().ok_or(UrlError::NoUser)?.to_string();
        if config.get_password().is_none() {
            if let Some(p) = pgpassword.filter(|p| !p.is_empty()) {
                config.password(p);
            }
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("bootd");
        // The server's notices are its business; the crate's default logs
        // them at INFO, in the middle of a command's output.
        config.notice_callback(|n| tracing::debug!(notice = n.message(), "registry notice"));
        let shown = shown(&config, &user);
        Ok(Self::Postgres(Box::new(PgTarget { config, shown })))
    }
}

/// The URL as the operator wrote it, minus the password and the options.
fn shown(config: &postgres::Config, user: &str) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                postgres::config::Host::Tcp(name) if name.contains(':') => format!("[{name}]"),
                postgres::config::Host::Tcp(name) => name.clone(),
                postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            let port = config
                .get_ports()
                .get(i)
                .or(config.get_ports().first())
                .copied()
                .unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    let db = config.get_dbname().unwrap_or(user);
    format!("postgres://{user}@{}/{db}", hosts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(url: &str, env: Option<&str>) -> PgTarget {
        match Registry::parse(url, env.map(str::to_string)) {
            Ok(Registry::Postgres(t)) => *t,
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn the_password_is_never_shown() {
        let t = pg("postgres://bootd:s3cret@127.0.0.1:5433/fleet", None);
        assert_eq!(t.shown, "postgres://bootd@127.0.0.1:5433/fleet");
        assert_eq!(t.config.get_password(), Some(&b"s3cret"[..]));
        assert!(!format!("{t:?}").contains("s3cret"));
        // A URL password wins over PGPASSWORD, as in libpq.
        let t = pg("postgres://bootd:s3cret@db/fleet", Some("other"));
        assert_eq!(t.config.get_password(), Some(&b"s3cret"[..]));
        let t = pg("postgresql://bootd@db/fleet", Some("fromenv"));
        assert_eq!(t.config.get_password(), Some(&b"fromenv"[..]));
        assert_eq!(t.shown, "postgres://bootd@db:5432/fleet");
        // Parse errors name the option, never the value.
        for bad in [
            "postgres://bootd:pw9@db:notaport/fleet",
            "postgres://bootd:pw9@db/fleet?sslmode=bogus",
            "postgres://bootd:pw9@db/fleet?bogus=1",
        ] {
            let e = Registry::parse(bad, None).err().map(|e| {
                let mut s = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(c) = src {
                    s.push_str(&format!(": {c}"));
                    src = c.source();
                }
                s
            });
            let e = e.unwrap_or_default();
            assert!(e.starts_with("--registry"), "{bad}: {e}");
            assert!(!e.contains("pw9"), "{e}");
        }
    }

    #[test]
    fn sqlite_and_unknown_schemes() {
        assert!(matches!(
            Registry::parse("sqlite:/tmp/x.db", None),
            Ok(Registry::Sqlite(p)) if p == std::path::Path::new("/tmp/x.db")
        ));
        assert!(matches!(
            Registry::parse("sqlite:", None),
            Err(UrlError::EmptyPath)
        ));
        assert!(matches!(
            Registry::parse("mysql://a@b/c", None),
            Err(UrlError::Scheme)
        ));
        assert!(matches!(
            Registry::parse("postgres://db/fleet", None),
            Err(UrlError::NoUser)
        ));
    }
}
