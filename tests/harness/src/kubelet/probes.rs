//! Container probes as the kubelet runs them: startup, liveness and readiness through
//! httpGet, tcpSocket, exec and grpc, with upstream's timing, thresholds and defaults.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use super::runtime;

/// The gRPC health protocol (proto/grpc/health/v1/health.proto) the grpc probe calls.
pub mod health {
    #![allow(clippy::all)]
    tonic::include_proto!("grpc.health.v1");
}

/// What a probe decides about its container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Until it succeeds the others do not run; failing kills the container.
    Startup,
    /// Failing kills the container; its restart policy applies.
    Liveness,
    /// Drives the container's `ready` and so the pod's `Ready` condition.
    Readiness,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Startup, Kind::Liveness, Kind::Readiness];

    /// The word upstream's events use ("Liveness probe failed: ...").
    pub fn label(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }

    pub fn of(self, c: &Container) -> Option<&Probe> {
        match self {
            Kind::Startup => c.startup_probe.as_ref(),
            Kind::Liveness => c.liveness_probe.as_ref(),
            Kind::Readiness => c.readiness_probe.as_ref(),
        }
    }
}

/// One probe's outcome, or its settled result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    Failure,
}

/// A probe's timing and thresholds, upstream defaults applied to what the spec leaves out
/// (or sets below the minimum): no initial delay, every 10 s, 1 s timeout, success after 1,
/// failure after 3. Liveness and startup succeed after exactly 1 (API validation's rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    pub fn of(kind: Kind, p: &Probe) -> Timing {
        let secs = |v: Option<i32>, default: u64| {
            Duration::from_secs(v.filter(|s| *s > 0).map_or(default, |s| s as u64))
        };
        let count =
            |v: Option<i32>, default: u32| v.filter(|s| *s > 0).map_or(default, |s| s as u32);
        Timing {
            initial_delay: Duration::from_secs(p.initial_delay_seconds.unwrap_or(0).max(0) as u64),
            period: secs(p.period_seconds, 10),
            timeout: secs(p.timeout_seconds, 1),
            success_threshold: match kind {
                Kind::Readiness => count(p.success_threshold, 1),
                _ => 1,
            },
            failure_threshold: count(p.failure_threshold, 3),
        }
    }
}

/// Upstream's worker bookkeeping: a verdict becomes the result once it came this many times
/// in a row; until then the previous result stands. The result before any probe is Failure
/// for readiness, Success for liveness, unknown for startup.
#[derive(Debug, Clone)]
pub struct Tracker {
    timing: Timing,
    result: Option<Verdict>,
    last: Option<Verdict>,
    run: u32,
}

impl Tracker {
    pub fn new(kind: Kind, timing: Timing) -> Tracker {
        let result = match kind {
            Kind::Startup => None,
            Kind::Liveness => Some(Verdict::Success),
            Kind::Readiness => Some(Verdict::Failure),
        };
        Tracker {
            timing,
            result,
            last: None,
            run: 0,
        }
    }

    pub fn result(&self) -> Option<Verdict> {
        self.result
    }

    /// Feeds one probe's verdict; returns the new result when it changed.
    pub fn observe(&mut self, v: Verdict) -> Option<Verdict> {
        if self.last == Some(v) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(v);
            self.run = 1;
        }
        let needed = match v {
            Verdict::Success => self.timing.success_threshold,
            Verdict::Failure => self.timing.failure_threshold,
        };
        if self.run < needed || self.result == Some(v) {
            return None;
        }
        self.result = Some(v);
        Some(v)
    }
}

/// A settled probe result for the pod worker: container `ctr`, whose process is `pid`.
#[derive(Debug, Clone)]
pub struct Report {
    pub ctr: usize,
    pub pid: u32,
    pub kind: Kind,
    pub verdict: Verdict,
}

/// Runs one probe of a container that started at `started_at`: first (once `gate` says the
/// startup probe succeeded, for liveness and readiness) after the initial delay, then every
/// period, each check bounded by the timeout. `on_failure` hears every failed check (the
/// `Unhealthy` event); `report` every change of the settled result. Liveness and startup end
/// at their first settled Failure (the container is killed), startup also at its Success.
#[allow(clippy::too_many_arguments)]
pub async fn run<F, Fut>(
    kind: Kind,
    timing: Timing,
    started_at: Instant,
    mut gate: Option<watch::Receiver<bool>>,
    mut check: F,
    on_failure: impl Fn(&str),
    report: impl Fn(Verdict),
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    if let Some(g) = gate.as_mut()
        && g.wait_for(|started| *started).await.is_err()
    {
        return;
    }
    let first = (started_at + timing.initial_delay).max(Instant::now());
    let mut tick = tokio::time::interval_at(first, timing.period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut tracker = Tracker::new(kind, timing);
    loop {
        tick.tick().await;
        let verdict = match tokio::time::timeout(timing.timeout, check()).await {
            Ok(Ok(())) => Verdict::Success,
            Ok(Err(msg)) => {
                on_failure(&msg);
                Verdict::Failure
            }
            Err(_) => {
                on_failure(&format!(
                    "timeout: no answer within {}s",
                    timing.timeout.as_secs()
                ));
                Verdict::Failure
            }
        };
        if let Some(v) = tracker.observe(verdict) {
            report(v);
            let done = match kind {
                Kind::Startup => true,
                Kind::Liveness => v == Verdict::Failure,
                Kind::Readiness => false,
            };
            if done {
                return;
            }
        }
    }
}

/// What a check needs to know about its container.
#[derive(Debug, Clone)]
pub struct Target {
    /// The pod's IP (its node's address: pods share their node's network).
    pub pod_ip: String,
    pub container: Container,
    pub pod_uid: String,
}

/// Spawns the container's probes; reports go to `tx`, failures to `unhealthy`. Returns the
/// tasks and, when it has a startup probe, the gate that opens the others once it succeeds.
pub fn spawn(
    target: Target,
    ctr: usize,
    pid: u32,
    tx: mpsc::UnboundedSender<Report>,
    unhealthy: impl Fn(Kind, &str) + Send + Sync + Clone + 'static,
) -> (
    Vec<tokio::task::JoinHandle<()>>,
    Option<watch::Sender<bool>>,
) {
    let started_at = Instant::now();
    let gate = Kind::Startup
        .of(&target.container)
        .map(|_| watch::channel(false));
    let mut tasks = Vec::new();
    for kind in Kind::ALL {
        let Some(probe) = kind.of(&target.container).cloned() else {
            continue;
        };
        let timing = Timing::of(kind, &probe);
        let rx = match kind {
            Kind::Startup => None,
            _ => gate.as_ref().map(|(_, rx)| rx.clone()),
        };
        let (t, tx, unhealthy) = (target.clone(), tx.clone(), unhealthy.clone());
        tasks.push(tokio::spawn(async move {
            let report = |verdict| {
                let _ = tx.send(Report {
                    ctr,
                    pid,
                    kind,
                    verdict,
                });
            };
            let once = || check(&t, &probe, timing.timeout);
            run(
                kind,
                timing,
                started_at,
                rx,
                once,
                |m| unhealthy(kind, m),
                report,
            )
            .await
        }));
    }
    (tasks, gate.map(|(tx, _)| tx))
}

/// A probe's port: a number, or the name of one of the container's ports.
pub fn resolve_port(port: &IntOrString, c: &Container) -> Result<u16, String> {
    let n = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port)
            .ok_or_else(|| format!("couldn't find port {name:?} in container {:?}", c.name))?,
    };
    u16::try_from(n)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("invalid port number: {n}"))
}

/// One check of `probe` against `t`: Ok when it passes, else what failed (`timeout` bounds
/// a grpc call and an exec'd command, which is also killed).
pub async fn check(t: &Target, probe: &Probe, timeout: Duration) -> Result<(), String> {
    if let Some(h) = &probe.http_get {
        let port = resolve_port(&h.port, &t.container)?;
        let host = h.host.clone().filter(|s| !s.is_empty());
        let host = host.unwrap_or_else(|| t.pod_ip.clone());
        let scheme = h.scheme.as_deref().unwrap_or("HTTP");
        if !scheme.eq_ignore_ascii_case("HTTP") {
            return Err(format!(
                "httpGet.scheme {scheme}: the harness kubelet probes HTTP only"
            ));
        }
        let headers: Vec<(String, String)> = h
            .http_headers
            .iter()
            .flatten()
            .map(|hd| (hd.name.clone(), hd.value.clone()))
            .collect();
        let path = h.path.clone().unwrap_or_default();
        return http_get(&host, port, &path, &headers).await;
    }
    if let Some(tcp) = &probe.tcp_socket {
        let port = resolve_port(&tcp.port, &t.container)?;
        let host = tcp.host.clone().filter(|s| !s.is_empty());
        let host = host.unwrap_or_else(|| t.pod_ip.clone());
        return tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map(drop)
            .map_err(|e| format!("dial tcp {host}:{port}: {e}"));
    }
    if let Some(g) = &probe.grpc {
        let port = u16::try_from(g.port).map_err(|_| format!("invalid port number: {}", g.port))?;
        return grpc(&t.pod_ip, port, g.service.as_deref().unwrap_or(""), timeout).await;
    }
    if let Some(e) = &probe.exec {
        let argv = e.command.clone().unwrap_or_default();
        return exec(t, &argv, timeout).await;
    }
    Err("the probe names no handler (exec, httpGet, tcpSocket or grpc)".into())
}

/// An HTTP GET as upstream's prober sends it: Ok for a status in 200..400.
pub async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> Result<(), String> {
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("Get \"http://{host}:{port}{path}\": dial tcp: {e}"))?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("Get \"http://{host}:{port}{path}\": {e}"))?;
    let conn = tokio::spawn(conn);
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let mut req = hyper::Request::get(&path);
    let has = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    if !has("host") {
        req = req.header("Host", format!("{host}:{port}"));
    }
    if !has("user-agent") {
        req = req.header("User-Agent", "kube-probe/1.33");
    }
    if !has("accept") {
        req = req.header("Accept", "*/*");
    }
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("bad request: {e}"))?;
    let res = send.send_request(req).await;
    conn.abort();
    let code = res
        .map_err(|e| format!("Get \"http://{host}:{port}{path}\": {e}"))?
        .status()
        .as_u16();
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

/// grpc.health.v1 Check: Ok when the answer is SERVING.
pub async fn grpc(host: &str, port: u16, service: &str, timeout: Duration) -> Result<(), String> {
    let addr = format!("http://{host}:{port}");
    let ch = tonic::transport::Endpoint::from_shared(addr.clone())
        .map_err(|e| format!("{addr}: {e}"))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .map_err(|e| format!("timeout: failed to connect service \"{host}:{port}\": {e}"))?;
    let mut client = health::health_client::HealthClient::new(ch);
    let req = health::HealthCheckRequest {
        service: service.into(),
    };
    let status = client
        .check(req)
        .await
        .map_err(|e| format!("error: health rpc probe failed: {e}"))?
        .into_inner()
        .status();
    match status {
        health::health_check_response::ServingStatus::Serving => Ok(()),
        s => Err(format!(
            "service unhealthy (responded with {:?})",
            s.as_str_name()
        )),
    }
}

/// Runs `argv` in the container (its namespaces, environment and directory, as `kubectl
/// exec`): Ok on exit 0, else the exit code and output. Killed at `timeout`.
pub async fn exec(t: &Target, argv: &[String], timeout: Duration) -> Result<(), String> {
    let Some(running) = runtime::running(&t.pod_uid, &t.container.name) else {
        return Err("container not running".into());
    };
    let child = runtime::exec_in(&running, argv).map_err(|e| format!("exec {argv:?}: {e}"))?;
    let pid = child.id();
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(o)) if o.status.success() => Ok(()),
        Ok(Ok(o)) => {
            let mut out = String::from_utf8_lossy(&o.stdout).into_owned();
            out.push_str(&String::from_utf8_lossy(&o.stderr));
            Err(format!(
                "command {argv:?} exited with {}: {}",
                o.status.code().unwrap_or(-1),
                out.trim()
            ))
        }
        Ok(Err(e)) => Err(format!("exec {argv:?}: {e}")),
        Err(_) => {
            if let Some(pid) = pid {
                runtime::signal(pid, nix::sys::signal::Signal::SIGKILL);
            }
            Err(format!(
                "command {argv:?} timed out after {}s",
                timeout.as_secs()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn probe(yaml: &str) -> Probe {
        serde_yaml::from_str(yaml).expect("probe yaml")
    }

    #[test]
    fn defaults_are_upstreams() {
        let p = probe("httpGet: {port: 80}");
        let t = Timing::of(Kind::Readiness, &p);
        assert_eq!(
            t,
            Timing {
                initial_delay: Duration::ZERO,
                period: Duration::from_secs(10),
                timeout: Duration::from_secs(1),
                success_threshold: 1,
                failure_threshold: 3,
            }
        );
        let p = probe(
            "httpGet: {port: 80}\ninitialDelaySeconds: 4\nperiodSeconds: 2\ntimeoutSeconds: 3\nsuccessThreshold: 2\nfailureThreshold: 5",
        );
        let r = Timing::of(Kind::Readiness, &p);
        assert_eq!(
            (r.initial_delay, r.period, r.timeout),
            (
                Duration::from_secs(4),
                Duration::from_secs(2),
                Duration::from_secs(3)
            )
        );
        assert_eq!((r.success_threshold, r.failure_threshold), (2, 5));
        // Liveness and startup settle on one success whatever the spec says.
        assert_eq!(Timing::of(Kind::Liveness, &p).success_threshold, 1);
        assert_eq!(Timing::of(Kind::Startup, &p).success_threshold, 1);
        // Zero or negative values take the defaults (the API's minimum is 1).
        let p = probe("exec: {command: [true]}\nperiodSeconds: 0\nfailureThreshold: -1");
        let z = Timing::of(Kind::Liveness, &p);
        assert_eq!(
            (z.period, z.failure_threshold),
            (Duration::from_secs(10), 3)
        );
    }

    fn timing(success: u32, failure: u32) -> Timing {
        Timing {
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    #[test]
    fn results_settle_only_after_their_threshold_in_a_row() {
        use Verdict::*;
        let mut r = Tracker::new(Kind::Readiness, timing(2, 3));
        assert_eq!(r.result(), Some(Failure), "readiness starts failed");
        assert_eq!(r.observe(Success), None, "one success of two");
        assert_eq!(r.observe(Failure), None, "a failure resets the run");
        assert_eq!(r.observe(Success), None);
        assert_eq!(r.observe(Success), Some(Success));
        assert_eq!(
            r.observe(Success),
            None,
            "unchanged results are not reported"
        );
        assert_eq!(r.observe(Failure), None);
        assert_eq!(r.observe(Failure), None);
        assert_eq!(
            r.observe(Success),
            None,
            "two failures of three, then a success"
        );
        assert_eq!(r.observe(Failure), None);
        assert_eq!(r.observe(Failure), None);
        assert_eq!(r.observe(Failure), Some(Failure));
        assert_eq!(r.result(), Some(Failure));

        let mut l = Tracker::new(Kind::Liveness, timing(1, 3));
        assert_eq!(l.result(), Some(Success), "liveness starts passed");
        assert_eq!(l.observe(Success), None);
        assert_eq!(l.observe(Failure), None);
        assert_eq!(l.observe(Failure), None);
        assert_eq!(l.observe(Failure), Some(Failure));

        let mut s = Tracker::new(Kind::Startup, timing(1, 2));
        assert_eq!(s.result(), None, "startup starts unknown");
        assert_eq!(s.observe(Failure), None);
        assert_eq!(s.observe(Success), Some(Success));
        let mut s = Tracker::new(Kind::Startup, timing(1, 2));
        assert_eq!(s.observe(Failure), None);
        assert_eq!(s.observe(Failure), Some(Failure));
    }

    #[test]
    fn ports_resolve_by_number_or_container_port_name() {
        let c: Container =
            serde_yaml::from_str("name: app\nports: [{name: http-metrics, containerPort: 9808}]")
                .unwrap();
        assert_eq!(resolve_port(&IntOrString::Int(80), &c), Ok(80));
        assert_eq!(
            resolve_port(&IntOrString::String("http-metrics".into()), &c),
            Ok(9808)
        );
        let e = resolve_port(&IntOrString::String("grpc".into()), &c).unwrap_err();
        assert!(e.contains("\"grpc\""), "{e}");
        assert!(resolve_port(&IntOrString::Int(0), &c).is_err());
        assert!(resolve_port(&IntOrString::Int(70000), &c).is_err());
    }

    /// A server answering every HTTP request with `code`, counting requests.
    async fn http_server(code: Arc<Mutex<u16>>) -> (u16, tokio::task::JoinHandle<()>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let code = *code.lock().unwrap();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&got);
                    let body = if head.starts_with("GET /healthz ") && head.contains("kube-probe/")
                    {
                        "ok"
                    } else {
                        "unexpected request"
                    };
                    let code = if body == "ok" { code } else { 400 };
                    let _ = s
                        .write_all(
                            format!(
                                "HTTP/1.1 {code} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                                body.len()
                            )
                            .as_bytes(),
                        )
                        .await;
                });
            }
        });
        (port, task)
    }

    #[tokio::test]
    async fn http_checks_pass_on_2xx_3xx_and_fail_otherwise() {
        let code = Arc::new(Mutex::new(200));
        let (port, server) = http_server(code.clone()).await;
        assert_eq!(http_get("127.0.0.1", port, "/healthz", &[]).await, Ok(()));
        *code.lock().unwrap() = 302;
        assert_eq!(http_get("127.0.0.1", port, "healthz", &[]).await, Ok(()));
        *code.lock().unwrap() = 500;
        let e = http_get("127.0.0.1", port, "/healthz", &[])
            .await
            .unwrap_err();
        assert!(e.contains("statuscode: 500"), "{e}");
        server.abort();
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let p = closed.local_addr().unwrap().port();
        drop(closed);
        let e = http_get("127.0.0.1", p, "/healthz", &[]).await.unwrap_err();
        assert!(e.contains("dial tcp"), "{e}");
    }

    #[tokio::test]
    async fn grpc_checks_follow_the_served_health_status() {
        use health::health_check_response::ServingStatus;
        use health::health_server::{Health, HealthServer};
        struct Fixed(Arc<Mutex<ServingStatus>>);
        #[tonic::async_trait]
        impl Health for Fixed {
            async fn check(
                &self,
                r: tonic::Request<health::HealthCheckRequest>,
            ) -> Result<tonic::Response<health::HealthCheckResponse>, tonic::Status> {
                if r.get_ref().service == "other" {
                    return Err(tonic::Status::not_found("unknown service"));
                }
                Ok(tonic::Response::new(health::HealthCheckResponse {
                    status: *self.0.lock().unwrap() as i32,
                }))
            }
            type WatchStream =
                futures::stream::Empty<Result<health::HealthCheckResponse, tonic::Status>>;
            async fn watch(
                &self,
                _: tonic::Request<health::HealthCheckRequest>,
            ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
                Err(tonic::Status::unimplemented("watch"))
            }
        }
        let status = Arc::new(Mutex::new(ServingStatus::Serving));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(HealthServer::new(Fixed(status.clone())))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
        );
        let t = Duration::from_secs(2);
        assert_eq!(grpc("127.0.0.1", port, "", t).await, Ok(()));
        *status.lock().unwrap() = ServingStatus::NotServing;
        let e = grpc("127.0.0.1", port, "", t).await.unwrap_err();
        assert!(e.contains("NOT_SERVING"), "{e}");
        let e = grpc("127.0.0.1", port, "other", t).await.unwrap_err();
        assert!(e.contains("unknown service"), "{e}");
        server.abort();
    }

    /// The whole loop with a scripted check: readiness turns on after its success threshold
    /// and off after its failure threshold, one report per change, one event per failure.
    #[tokio::test]
    async fn run_reports_changes_of_the_settled_result() {
        use Verdict::*;
        let script = Arc::new(Mutex::new(vec![
            false, true, true, false, true, false, false, false,
        ]));
        let failures = Arc::new(Mutex::new(0));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut t = timing(2, 3);
        t.period = Duration::from_millis(20);
        let s = script.clone();
        let f = failures.clone();
        let task = tokio::spawn(async move {
            run(
                Kind::Readiness,
                t,
                Instant::now(),
                None,
                move || {
                    let next = {
                        let mut s = s.lock().unwrap();
                        if s.is_empty() {
                            None
                        } else {
                            Some(s.remove(0))
                        }
                    };
                    async move {
                        match next {
                            Some(true) => Ok(()),
                            Some(false) => Err("scripted".to_string()),
                            None => std::future::pending().await,
                        }
                    }
                },
                move |_| *f.lock().unwrap() += 1,
                move |v| {
                    let _ = tx.send(v);
                },
            )
            .await
        });
        let bound = Duration::from_secs(5);
        let first = tokio::time::timeout(bound, rx.recv()).await.unwrap();
        let second = tokio::time::timeout(bound, rx.recv()).await.unwrap();
        assert_eq!((first, second), (Some(Success), Some(Failure)));
        task.abort();
        assert_eq!(*failures.lock().unwrap(), 5);
        assert!(rx.try_recv().is_err(), "no other change was reported");
    }

    /// Liveness and readiness wait for the startup gate, and a startup probe ends at its
    /// settled result.
    #[tokio::test]
    async fn liveness_waits_for_startup_and_startup_ends_when_settled() {
        let (gate_tx, gate_rx) = watch::channel(false);
        let calls = Arc::new(Mutex::new(0u32));
        let c = calls.clone();
        let mut t = timing(1, 1);
        t.period = Duration::from_millis(10);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let live = tokio::spawn(run(
            Kind::Liveness,
            t,
            Instant::now(),
            Some(gate_rx),
            move || {
                *c.lock().unwrap() += 1;
                async { Err::<(), _>("down".to_string()) }
            },
            |_| {},
            move |v| {
                let _ = tx.send(v);
            },
        ));
        tokio::task::yield_now().await;
        assert!(
            tokio::time::timeout(Duration::from_millis(200), rx.recv())
                .await
                .is_err(),
            "liveness ran before startup succeeded"
        );
        assert_eq!(*calls.lock().unwrap(), 0);
        gate_tx.send(true).unwrap();
        let v = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(v.unwrap(), Some(Verdict::Failure));
        tokio::time::timeout(Duration::from_secs(5), live)
            .await
            .expect("liveness ends at its settled failure")
            .unwrap();

        let (tx, mut rx) = mpsc::unbounded_channel();
        let startup = tokio::spawn(run(
            Kind::Startup,
            t,
            Instant::now(),
            None,
            || async { Ok(()) },
            |_| {},
            move |v| {
                let _ = tx.send(v);
            },
        ));
        tokio::time::timeout(Duration::from_secs(5), startup)
            .await
            .expect("startup ends at its settled success")
            .unwrap();
        assert_eq!(rx.recv().await, Some(Verdict::Success));
    }
}
