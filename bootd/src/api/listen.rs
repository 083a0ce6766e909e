//! The API's listener: plain TCP or TLS (rustls), HTTP/1.1 with keep-alive
//! or HTTP/2, a cap on connections, time limits on handshakes and headers,
//! and a graceful end at serve's shutdown.

use crate::service::Shutdown;
use anyhow::{Context, Result};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::rustls;

/// Connections held at once (keep-alive and event streams included).
const CONNECTIONS: u32 = 512;
/// A TLS handshake, or a request's headers, must arrive within this.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// Connections still open this long after shutdown are dropped.
const DRAIN: Duration = Duration::from_secs(5);

/// `--api-cert` and `--api-key` loaded.
#[derive(Clone)]
pub struct Tls(tokio_rustls::TlsAcceptor);

impl Tls {
    /// A PEM certificate chain and its PEM private key (PKCS#8, PKCS#1 or
    /// SEC1).
    pub fn load(cert: &Path, key: &Path) -> Result<Self> {
        let read =
            |p: &Path| std::fs::read(p).with_context(|| format!("{}: cannot read", p.display()));
        let certs = rustls_pemfile::certs(&mut read(cert)?.as_slice())
            .collect::<std::result::Result<Vec<_>, _>>()
            .with_context(|| format!("{}: not a PEM certificate", cert.display()))?;
        if certs.is_empty() {
            anyhow::bail!("{}: no certificate in it", cert.display());
        }
        // The key's own parse errors could quote it: say only where.
        let key_der = rustls_pemfile::private_key(&mut read(key)?.as_slice())
            .ok()
            .flatten()
            .with_context(|| format!("{}: no PEM private key in it", key.display()))?;
        // ring rather than aws-lc-rs: no C toolchain beyond cc to build it.
        // Deprecated only for lacking post-quantum key exchange.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key_der)
            .context("--api-cert and --api-key do not make a TLS identity")?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
    }
}

/// Serves `router` on `listener` until `shutdown`; then lets requests in
/// flight finish (event streams end at shutdown) for up to [`DRAIN`].
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<Tls>,
    mut shutdown: Shutdown,
) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS as usize));
    loop {
        let (tcp, _peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, say: pause rather than spin.
                    tracing::warn!("api: accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.wait() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Full: close at once rather than queue behind held connections.
            continue;
        };
        let (router, tls, sd) = (router.clone(), tls.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tcp.set_nodelay(true);
            match tls {
                None => connection(TokioIo::new(tcp), router, sd).await,
                Some(Tls(acceptor)) => {
                    match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => connection(TokioIo::new(s), router, sd).await,
                        Ok(Err(e)) => tracing::debug!("api: TLS handshake: {e}"),
                        Err(_) => tracing::debug!("api: TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(DRAIN, slots.acquire_many(CONNECTIONS)).await;
}

/// One connection, until the client goes or the shutdown ends it.
async fn connection<I>(io: TokioIo<I>, router: axum::Router, mut shutdown: Shutdown)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE);
    let service = TowerToHyperService::new(router);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!("api: connection: {e}");
            }
        }
        _ = shutdown.wait() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
