//! Mutual TLS for storaged: issuing certificates (`certs`), the identity a certificate
//! carries (`identity`) and who may call which service (`authz`).

pub mod authz;
pub mod certs;
pub mod identity;

use std::sync::Arc;
use std::time::Duration;

use cairn_client::reload::Reloading;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

pub use identity::Identity;

/// How long a client may take over its TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// The connections `listener` accepts, each after a mutual TLS handshake with the
/// certificate and CA on disk at that moment (`cairn_client::reload`); see `accept_tls`.
pub fn tls_incoming(
    listener: TcpListener,
    tls: &Arc<Reloading>,
) -> crate::Result<ReceiverStream<std::io::Result<TlsStream<TcpStream>>>> {
    let config = cairn_client::reload::server_config(tls)
        .map_err(|e| crate::Error::invalid("tls-dir", e.message().to_string()))?;
    Ok(accept_tls(listener, Arc::new(config)))
}

/// The connections `listener` accepts, each after a TLS handshake under `config`.
/// Handshakes run concurrently, so a slow client holds up no other; a failed one is
/// dropped. Accepting stops once the stream is dropped (the server stopped).
pub fn accept_tls(
    listener: TcpListener,
    config: Arc<tokio_rustls::rustls::ServerConfig>,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => break,
                a = listener.accept() => a,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (tx, acceptor) = (tx.clone(), acceptor.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
