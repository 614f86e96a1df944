//! The byte streams the proxy speaks over: plain TCP, or TLS (rustls, ring) towards clients
//! (`[listen] tls_cert_file`/`tls_key_file`) and towards Redis (`[upstream] tls = true`).
//!
//! Plain TCP keeps tokio's owned halves (no lock between reader and writer); a TLS stream is
//! split with `tokio::io::split`.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config;

pub enum Stream {
    Plain(TcpStream),
    TlsServer(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    TlsClient(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

pub enum Reader {
    Plain(OwnedReadHalf),
    Tls(ReadHalf<Stream>),
}

pub enum Writer {
    Plain(OwnedWriteHalf),
    Tls(WriteHalf<Stream>),
}

/// How long a client has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl Stream {
    /// A client's stream: TLS when the listener has a certificate (handshake bounded by
    /// [`HANDSHAKE_TIMEOUT`]).
    pub async fn accept(tcp: TcpStream, tls: Option<&TlsAcceptor>) -> io::Result<Stream> {
        let Some(acceptor) = tls else { return Ok(Stream::Plain(tcp)) };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(tls) => Ok(Stream::TlsServer(Box::new(tls?))),
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")),
        }
    }

    pub fn into_split(self) -> (Reader, Writer) {
        match self {
            Stream::Plain(tcp) => {
                let (rd, wr) = tcp.into_split();
                (Reader::Plain(rd), Writer::Plain(wr))
            }
            tls => {
                let (rd, wr) = tokio::io::split(tls);
                (Reader::Tls(rd), Writer::Tls(wr))
            }
        }
    }
}

/// Delegates an `AsyncRead`/`AsyncWrite` method to whichever stream the enum holds.
macro_rules! delegate {
    ($self:ident, $s:ident => $call:expr) => {
        match $self.get_mut() {
            Stream::Plain($s) => {
                let $s = Pin::new($s);
                $call
            }
            Stream::TlsServer($s) => {
                let $s = Pin::new($s.as_mut());
                $call
            }
            Stream::TlsClient($s) => {
                let $s = Pin::new($s.as_mut());
                $call
            }
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}

impl AsyncRead for Reader {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Reader::Plain(r) => Pin::new(r).poll_read(cx, buf),
            Reader::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Writer {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Writer::Plain(w) => Pin::new(w).poll_write(cx, buf),
            Writer::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Writer::Plain(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            Writer::Tls(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Writer::Plain(w) => Pin::new(w).poll_flush(cx),
            Writer::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Writer::Plain(w) => Pin::new(w).poll_shutdown(cx),
            Writer::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The client-side TLS acceptor, when `[listen]` has a certificate.
pub fn acceptor(listen: &config::Listen) -> Result<Option<TlsAcceptor>, (&'static str, String)> {
    let (cert, key_file) = match (&listen.tls_cert_file, &listen.tls_key_file) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key_file)) => (cert, key_file),
        _ => return Err(("listen.tls_cert_file", "tls_cert_file and tls_key_file go together".into())),
    };
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ("listen.tls_cert_file", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(
            certs(cert).map_err(|e| ("listen.tls_cert_file", e))?,
            key(key_file).map_err(|e| ("listen.tls_key_file", e))?,
        )
        .map_err(|e| ("listen.tls_key_file", e.to_string()))?;
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// The upstream TLS connector and the name the server's certificate must carry, when
/// `[upstream] tls` (or `sentinel_tls`) is on.
pub fn connector(up: &config::Upstream) -> Result<Option<UpstreamTls>, (&'static str, String)> {
    if !up.tls && !up.sentinel_tls {
        return Ok(None);
    }
    let ca = up.tls_ca_file.as_ref().ok_or(("upstream.tls_ca_file", "needed with upstream.tls = true".to_owned()))?;
    let mut roots = RootCertStore::empty();
    for cert in certs(ca).map_err(|e| ("upstream.tls_ca_file", e))? {
        roots.add(cert).map_err(|e| ("upstream.tls_ca_file", e.to_string()))?;
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ("upstream.tls", e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&up.tls_cert_file, &up.tls_key_file) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key_file)) => builder
            .with_client_auth_cert(
                certs(cert).map_err(|e| ("upstream.tls_cert_file", e))?,
                key(key_file).map_err(|e| ("upstream.tls_key_file", e))?,
            )
            .map_err(|e| ("upstream.tls_key_file", e.to_string()))?,
        _ => return Err(("upstream.tls_cert_file", "tls_cert_file and tls_key_file go together".into())),
    };
    // With Sentinel the primary's host changes: each connection checks the host it dials.
    let name = match (&up.tls_server_name, up.sentinels.is_empty()) {
        (Some(name), _) => Some(server_name(name).map_err(|e| ("upstream.tls_server_name", e))?),
        (None, true) => Some(server_name(host_of(&up.address)).map_err(|e| ("upstream.address", e))?),
        (None, false) => None,
    };
    Ok(Some(UpstreamTls { connector: TlsConnector::from(Arc::new(config)), server_name: name }))
}

/// TLS towards Redis (and its sentinels): the connector, and the name Redis's certificate must
/// carry when `tls_server_name` (or a fixed address) says it.
#[derive(Clone)]
pub struct UpstreamTls {
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl UpstreamTls {
    /// TLS over `tcp` to `addr`: its certificate must name `tls_server_name`, or else the host
    /// of `addr`. `own_name`: check the host of `addr` whatever the setting (a sentinel).
    pub async fn connect(&self, tcp: TcpStream, addr: &str, own_name: bool) -> io::Result<Stream> {
        let name = match (&self.server_name, own_name) {
            (Some(name), false) => name.clone(),
            _ => server_name(host_of(addr)).map_err(io::Error::other)?,
        };
        Ok(Stream::TlsClient(Box::new(self.connector.connect(name, tcp).await?)))
    }
}

fn host_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(host, _)| host)
}

fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_owned()).map_err(|e| format!("{host:?}: {e}"))
}
