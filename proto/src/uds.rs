//! gRPC over a Unix socket, as CSI speaks it: the `unix:///path` endpoint rule and a tonic
//! channel that dials the socket (used by cairn-csi's probe and cairn-provisioner).

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// The socket path of a CSI endpoint: `unix:///absolute/path`, `unix:/absolute/path` or a
/// plain absolute path.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, String> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or(endpoint);
    if path.is_empty() || !path.starts_with('/') {
        return Err(format!(
            "endpoint `{endpoint}`: expected unix:///absolute/path"
        ));
    }
    Ok(PathBuf::from(path))
}

/// An endpoint whose connector dials `path` (the URI is a placeholder tonic requires).
fn endpoint() -> Endpoint {
    Endpoint::from_static("http://[::]:50051")
}

fn connector(
    path: PathBuf,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<UnixStream>,
    Error = std::io::Error,
    Future = impl Future<Output = std::io::Result<TokioIo<UnixStream>>> + Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move { Ok(TokioIo::new(UnixStream::connect(path).await?)) }
    })
}

/// A channel that connects on first use and reconnects after failures.
pub fn lazy_channel(path: PathBuf, connect_timeout: std::time::Duration) -> Channel {
    endpoint()
        .connect_timeout(connect_timeout)
        .connect_with_connector_lazy(connector(path))
}

/// A channel connected now (fails at once when nothing listens on `path`).
pub async fn channel(path: PathBuf) -> Result<Channel, tonic::transport::Error> {
    endpoint().connect_with_connector(connector(path)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_name_an_absolute_socket_path() {
        assert_eq!(
            socket_path("unix:///csi/csi.sock").unwrap(),
            PathBuf::from("/csi/csi.sock")
        );
        assert_eq!(socket_path("/x.sock").unwrap(), PathBuf::from("/x.sock"));
        for bad in ["", "unix://", "unix://rel/csi.sock", "tcp://1.2.3.4:5"] {
            let e = socket_path(bad).unwrap_err();
            assert!(e.contains("expected unix:///absolute/path"), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn a_channel_to_a_missing_socket_fails_at_once() {
        let dir = std::env::temp_dir().join(format!("cairn-uds-{}", std::process::id()));
        let err = channel(dir.join("none.sock")).await.unwrap_err();
        assert!(!err.to_string().is_empty());
    }
}
