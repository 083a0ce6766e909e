//! TLS to the registry (rustls, ring): the `postgres` crate's TLS traits
//! over tokio-rustls, with the certificate checks libpq's `sslmode` names.
//! `require` encrypts without checking the server's certificate (unless a
//! root is given, as libpq does), `verify-ca` checks its chain against
//! `sslrootcert`, `verify-full` also checks that it names the host.

use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use postgres::Socket;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What is checked of the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Nothing (encryption only): `prefer`, `require` without a root.
    Nothing,
    /// Its chain to the roots: `verify-ca`, `require` with a root.
    Chain,
    /// Its chain and that it names the host: `verify-full`.
    ChainAndName,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("sslrootcert {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("sslrootcert {path}: no usable PEM certificate in it")]
    NoRoots { path: String },
    #[error("TLS set-up: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The client configuration for `check` with the roots in `root_pem`.
pub fn client_config(check: Check, root_pem: Option<&Path>) -> Result<ClientConfig, TlsError> {
    // ring, not aws-lc-rs (which needs cmake and a C toolchain to build);
    // rustls deprecates ring's provider only for its lack of post-quantum
    // key exchange.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let chain = match root_pem {
        Some(path) if check != Check::Nothing => {
            let shown = path.display().to_string();
            let text = std::fs::read(path).map_err(|source| TlsError::Read {
                path: shown.clone(),
                source,
            })?;
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&text).flatten() {
                // A certificate the store cannot use is left out; none
                // usable at all is an error below.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(TlsError::NoRoots { path: shown });
            }
            Some(
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| rustls::Error::General(e.to_string()))?,
            )
        }
        _ => None,
    };
    let verifier = Verifier {
        chain,
        names: check == Check::ChainAndName,
        algorithms,
    };
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

#[derive(Debug)]
struct Verifier {
    /// `None`: the certificate is not checked (encryption only).
    chain: Option<Arc<WebPkiServerVerifier>>,
    /// Whether the certificate must name the host.
    names: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.names => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    // The handshake's signatures are checked in every mode: without them
    // the session key would not be bound to the certificate at all.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The `postgres` crate's TLS connector over rustls.
#[derive(Clone)]
pub struct MakeRustls(pub Arc<ClientConfig>);

impl MakeTlsConnect<Socket> for MakeRustls {
    type Stream = RustlsStream;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    // A name TLS cannot check fails the handshake, not the connection: the
    // crate asks for a connector for a Unix socket too (host ""), where the
    // server declines TLS before any handshake.
    fn make_tls_connect(&mut self, host: &str) -> Result<RustlsConnect, io::Error> {
        Ok(RustlsConnect {
            config: self.0.clone(),
            name: ServerName::try_from(host.to_string()).map_err(|_| host.to_string()),
        })
    }
}

pub struct RustlsConnect {
    config: Arc<ClientConfig>,
    name: Result<ServerName<'static>, String>,
}

type Handshake = Pin<Box<dyn Future<Output = Result<RustlsStream, io::Error>> + Send>>;

impl TlsConnect<Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type Error = io::Error;
    type Future = Handshake;

    fn connect(self, stream: Socket) -> Handshake {
        Box::pin(async move {
            let name = self.name.map_err(|host| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{host:?} is not a host name TLS can check"),
                )
            })?;
            let connector = tokio_rustls::TlsConnector::from(self.config);
            Ok(RustlsStream(connector.connect(name, stream).await?))
        })
    }
}

pub struct RustlsStream(tokio_rustls::client::TlsStream<Socket>);

impl TlsStream for RustlsStream {
    /// `tls-server-end-point` of the server's certificate (see `binding`):
    /// SCRAM-SHA-256-PLUS where the server offers it.
    fn channel_binding(&self) -> ChannelBinding {
        let (_, conn) = self.0.get_ref();
        conn.peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| super::binding::end_point(cert))
            .map_or_else(ChannelBinding::none, ChannelBinding::tls_server_end_point)
    }
}

impl AsyncRead for RustlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
