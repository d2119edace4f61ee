//! The one request log of a gRPC server, as a tower layer over the whole router: each call runs
//! in an `rpc` span and ends with one line carrying its service, method, gRPC code and elapsed_ms.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::{Service, http};
use tonic::{Code, Status};
use tracing::Instrument;
use tracing::field::Empty;

/// How loud the log is. Faults (INTERNAL, UNKNOWN, DATA_LOSS) are logged at ERROR either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    /// Every call at INFO and every refusal at WARN: the CSI driver, whose calls are few.
    EveryCall,
    /// Calls and refusals at DEBUG: storaged, which serves thousands of block and Raft calls a
    /// second.
    Quiet,
}

/// Wraps a tonic router (`Server::builder().layer(RpcLogLayer::new(..))`).
#[derive(Debug, Clone, Copy)]
pub struct RpcLogLayer {
    verbosity: Verbosity,
}

impl RpcLogLayer {
    pub fn new(verbosity: Verbosity) -> Self {
        RpcLogLayer { verbosity }
    }
}

impl<S> tower_layer::Layer<S> for RpcLogLayer {
    type Service = RpcLog<S>;
    fn layer(&self, inner: S) -> RpcLog<S> {
        RpcLog {
            inner,
            verbosity: self.verbosity,
        }
    }
}

/// The service [`RpcLogLayer`] builds.
#[derive(Debug, Clone)]
pub struct RpcLog<S> {
    inner: S,
    verbosity: Verbosity,
}

/// Adds what a call is about to its `rpc` span (empty values are left out): handlers call this
/// with the request's volume and node, so the call's log line carries them.
pub fn record_subject(volume_id: &str, node: &str) {
    let span = tracing::Span::current();
    if !volume_id.is_empty() {
        span.record("volume_id", volume_id);
    }
    if !node.is_empty() {
        span.record("node", node);
    }
}

/// `/pkg.Service/Method` as (`pkg.Service`, `Method`).
fn split_path(path: &str) -> (String, String) {
    let path = path.trim_start_matches('/');
    match path.rsplit_once('/') {
        Some((service, method)) => (service.to_string(), method.to_string()),
        None => (String::new(), path.to_string()),
    }
}

impl<S, B, R> Service<http::Request<B>> for RpcLog<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let (service, method) = split_path(req.uri().path());
        // The level is part of a span's static metadata, so each arm names its own macro.
        macro_rules! rpc_span {
            ($level:ident) => {
                tracing::$level!(
                    "rpc",
                    service = service.as_str(),
                    method = method.as_str(),
                    volume_id = Empty,
                    node = Empty
                )
            };
        }
        let span = match self.verbosity {
            Verbosity::EveryCall => rpc_span!(info_span),
            Verbosity::Quiet => rpc_span!(debug_span),
        };
        let verbosity = self.verbosity;
        let start = Instant::now();
        let call = {
            let _in_span = span.enter();
            self.inner.call(req)
        }
        .instrument(span.clone());
        Box::pin(async move {
            let result = call.await;
            let elapsed_ms = start.elapsed().as_secs_f64() * 1000.0;
            let _in_span = span.enter();
            let status = match &result {
                // A failed call answers with its status in the headers; a successful unary
                // call's OK comes in the trailers, after this point.
                Ok(res) => Status::from_header_map(res.headers()),
                Err(_) => Some(Status::unknown("the server failed to answer")),
            };
            log_outcome(verbosity, &method, elapsed_ms, status.as_ref());
            result
        })
    }
}

fn log_outcome(verbosity: Verbosity, method: &str, elapsed_ms: f64, status: Option<&Status>) {
    let code = status.map_or(Code::Ok, Status::code);
    let error = status.map_or("", Status::message);
    match (code, verbosity) {
        (Code::Ok, Verbosity::EveryCall) => {
            tracing::info!(method, elapsed_ms, ?code, "rpc done")
        }
        (Code::Ok, Verbosity::Quiet) => tracing::debug!(method, elapsed_ms, ?code, "rpc done"),
        (Code::Internal | Code::Unknown | Code::DataLoss, _) => {
            tracing::error!(method, elapsed_ms, ?code, error, "rpc failed")
        }
        (_, Verbosity::EveryCall) => {
            tracing::warn!(method, elapsed_ms, ?code, error, "rpc failed")
        }
        (_, Verbosity::Quiet) => tracing::debug!(method, elapsed_ms, ?code, error, "rpc failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};
    use tower_layer::Layer;

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            split_path("/csi.v1.Controller/CreateVolume"),
            ("csi.v1.Controller".into(), "CreateVolume".into())
        );
        assert_eq!(split_path("/odd"), (String::new(), "odd".into()));
    }

    /// Answers every call with `code` in its headers, as tonic does for a failed call, after
    /// recording the call's subject from inside the handler, as the CSI handlers do.
    #[derive(Clone)]
    struct Answer(Option<Code>);

    impl Service<http::Request<()>> for Answer {
        type Response = http::Response<()>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<http::Response<()>, Infallible>> + Send>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let code = self.0;
            Box::pin(async move {
                record_subject("pvc-1", "node-a");
                let res = match code {
                    Some(code) => Status::new(code, "no such volume").into_http(),
                    None => http::Response::new(()),
                };
                Ok(res)
            })
        }
    }

    /// Collects what the fmt subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Serves one call through the layer and returns the code the caller sees and the log.
    async fn serve_one(verbosity: Verbosity, code: Option<Code>) -> (Option<Code>, String) {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let mut svc = RpcLogLayer::new(verbosity).layer(Answer(code));
        let req = http::Request::builder()
            .uri("/cairn.v1.VolumeService/GetVolume")
            .body(())
            .unwrap();
        let res = svc.call(req).await.unwrap();
        let seen = Status::from_header_map(res.headers()).map(|s| s.code());
        let log = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        (seen, log)
    }

    #[tokio::test]
    async fn one_line_per_call_with_code_method_and_subject() {
        let (seen, log) = serve_one(Verbosity::EveryCall, None).await;
        assert_eq!(seen, None, "the answer passes through unchanged");
        let line = log.lines().find(|l| l.contains("rpc done")).expect(&log);
        for part in [
            " INFO ",
            "service=\"cairn.v1.VolumeService\"",
            "method=\"GetVolume\"",
            "code=Ok",
        ] {
            assert!(line.contains(part), "{part} missing in {line}");
        }
        assert!(
            line.contains("volume_id=\"pvc-1\"") && line.contains("node=\"node-a\""),
            "{line}"
        );

        let (seen, log) = serve_one(Verbosity::EveryCall, Some(Code::NotFound)).await;
        assert_eq!(seen, Some(Code::NotFound));
        let line = log.lines().find(|l| l.contains("rpc failed")).expect(&log);
        for part in [" WARN ", "code=NotFound", "error=\"no such volume\""] {
            assert!(line.contains(part), "{part} missing in {line}");
        }
    }

    #[tokio::test]
    async fn quiet_logs_at_debug_but_faults_at_error() {
        let (_, log) = serve_one(Verbosity::Quiet, Some(Code::Unavailable)).await;
        assert!(
            log.contains("DEBUG") && log.contains("code=Unavailable"),
            "{log}"
        );
        let (_, log) = serve_one(Verbosity::Quiet, Some(Code::Internal)).await;
        assert!(
            log.contains("ERROR") && log.contains("code=Internal"),
            "{log}"
        );
    }
}
