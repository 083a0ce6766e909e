//! `--registry URL`: where the registry lives. `sqlite:PATH` (by default the
//! data directory's `bootd.db`) or `postgres://USER@HOST[:PORT]/DB`. A URL
//! may carry a password; it never appears in errors or logs: only
//! [`PgTarget::shown`], the URL without it, does.
//!
//! TLS as libpq spells it: `?sslmode=disable|prefer|require|verify-ca|
//! verify-full` and `sslrootcert=PATH` (the CA's certificates, PEM).
//! Without `sslmode`, `prefer`: TLS when the server offers it, unchecked.

use super::postgres::tls::{self, Check, MakeRustls};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
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
    /// TLS, unless `sslmode=disable`.
    pub tls: Option<MakeRustls>,
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
    #[error(
        "--registry: sslmode {0:?}: expected disable, prefer, require, verify-ca or verify-full"
    )]
    SslMode(String),
    #[error("--registry: sslmode={0} needs sslrootcert=PATH (the CA's certificates, PEM)")]
    NoRootCert(&'static str),
    #[error("--registry: {0}")]
    Tls(#[from] tls::TlsError),
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
        let (url, ssl) = ssl_options(url);
        let mut config = postgres::Config::from_str(&url).map_err(UrlError::Postgres)?;
        let tls = ssl.tls()?;
        config.ssl_mode(ssl.mode());
        // As libpq: TLS is for TCP; a Unix socket ignores sslmode.
        let unix = |h: &postgres::config::Host| matches!(h, postgres::config::Host::Unix(_));
        let tls = if config.get_hosts().iter().all(unix) {
            config.ssl_mode(postgres::config::SslMode::Disable);
            None
        } else {
            tls
        };
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
        Ok(Self::Postgres(Box::new(PgTarget { config, shown, tls })))
    }
}

/// `sslmode` and `sslrootcert` from a URL's query. The `postgres` crate
/// knows neither `verify-ca`/`verify-full` nor `sslrootcert`: they are
/// taken out here and the rest of the URL goes to it.
#[derive(Debug, Default, PartialEq, Eq)]
struct SslOptions {
    mode: Option<String>,
    root: Option<PathBuf>,
}

fn ssl_options(url: &str) -> (String, SslOptions) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), SslOptions::default());
    };
    let mut ssl = SslOptions::default();
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", v)) => ssl.mode = Some(percent_decode(v)),
            Some(("sslrootcert", v)) => ssl.root = Some(PathBuf::from(percent_decode(v))),
            _ => rest.push(pair),
        }
    }
    let url = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    (url, ssl)
}

impl SslOptions {
    fn check(&self) -> Result<Option<Check>, UrlError> {
        Ok(match self.mode.as_deref() {
            Some("disable") => None,
            None | Some("prefer") => Some(Check::Nothing),
            // As libpq: a root given makes `require` check the chain.
            Some("require") if self.root.is_some() => Some(Check::Chain),
            Some("require") => Some(Check::Nothing),
            Some("verify-ca") => Some(Check::Chain),
            Some("verify-full") => Some(Check::ChainAndName),
            Some(other) => return Err(UrlError::SslMode(other.to_string())),
        })
    }

    fn mode(&self) -> postgres::config::SslMode {
        use postgres::config::SslMode;
        match self.mode.as_deref() {
            Some("disable") => SslMode::Disable,
            None | Some("prefer") => SslMode::Prefer,
            _ => SslMode::Require,
        }
    }

    fn tls(&self) -> Result<Option<MakeRustls>, UrlError> {
        let Some(check) = self.check()? else {
            return Ok(None);
        };
        if check != Check::Nothing && self.root.is_none() {
            let mode = if check == Check::Chain {
                "verify-ca"
            } else {
                "verify-full"
            };
            return Err(UrlError::NoRootCert(mode));
        }
        let config = tls::client_config(check, self.root.as_deref())?;
        Ok(Some(MakeRustls(Arc::new(config))))
    }
}

/// `%XX` escapes decoded (a path in a URL: `%2F`); a malformed escape stays
/// as it is.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
    fn ssl_options_are_libpqs() {
        let (url, ssl) = ssl_options(
            "postgres://u@db/f?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        );
        assert_eq!(url, "postgres://u@db/f?application_name=x");
        assert_eq!(ssl.mode.as_deref(), Some("verify-full"));
        assert_eq!(ssl.root, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(
            ssl_options("postgres://u@db/f?sslmode=require").0,
            "postgres://u@db/f"
        );
        assert_eq!(ssl_options("postgres://u@db/f").1, SslOptions::default());
        let t = pg("postgres://u@db/f?sslmode=disable", None);
        assert!(t.tls.is_none());
        for mode in ["prefer", "require"] {
            let t = pg(&format!("postgres://u@db/f?sslmode={mode}"), None);
            assert!(t.tls.is_some(), "{mode}");
        }
        assert!(pg("postgres://u@db/f", None).tls.is_some());
        let t = pg("postgres://u@%2Frun%2Fpg/f?sslmode=require", None);
        assert!(t.tls.is_none());
        assert_eq!(t.config.get_ssl_mode(), postgres::config::SslMode::Disable);
        assert!(matches!(
            Registry::parse("postgres://u@db/f?sslmode=verify-full", None),
            Err(UrlError::NoRootCert("verify-full"))
        ));
        assert!(matches!(
            Registry::parse("postgres://u@db/f?sslmode=verify-ca", None),
            Err(UrlError::NoRootCert("verify-ca"))
        ));
        assert!(matches!(
            Registry::parse("postgres://u@db/f?sslmode=allow", None),
            Err(UrlError::SslMode(m)) if m == "allow"
        ));
        let e = Registry::parse(
            "postgres://u:pw9@db/f?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            None,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            e.contains("/nonexistent/ca.pem") && !e.contains("pw9"),
            "{e}"
        );
        assert_eq!(percent_decode("a%2Fb%zz%4"), "a/b%zz%4");
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
