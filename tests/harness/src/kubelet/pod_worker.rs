//! One pod's lifecycle on a kubelet: volumes, init and app containers as
//! processes, restarts, status, graceful termination and final deletion.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use super::images::Source;
use super::probes::{self, Kind, Verdict};
use super::runtime::{self, ContainerSpec, Mount, Propagation};
use super::volumes::Prepared;
use super::{Kubelet, env, pod_status};
use crate::controllers::Shutdown;

/// A container exit: (container index, pid, exit code).
type Exit = (usize, u32, i32);
use crate::registry::now;

#[derive(Debug, Clone)]
enum State {
    Waiting(String, Option<String>),
    Running(String),
    Terminated {
        code: i32,
        reason: String,
        started: String,
        finished: String,
    },
}

struct Ctr {
    c: Container,
    pid: Option<u32>,
    state: State,
    last: Option<State>,
    restarts: i32,
    restart_at: Option<Instant>,
    /// The settled readiness of the running process (true without a readiness probe).
    ready: bool,
    /// Whether its startup probe succeeded (true without one).
    started: bool,
    /// Its probes, stopped with it.
    probes: ProbeTasks,
    /// Opens liveness and readiness once the startup probe succeeded.
    gate: Option<watch::Sender<bool>>,
    /// When a container being killed for a failed probe gets SIGKILL.
    kill_at: Option<Instant>,
    /// Killed for a failed liveness or startup probe: restarted unless the policy is Never.
    probe_killed: bool,
}

/// A running container's probe tasks; dropping them stops them.
#[derive(Default)]
struct ProbeTasks(Vec<tokio::task::JoinHandle<()>>);

impl ProbeTasks {
    fn stop(&mut self) {
        for t in self.0.drain(..) {
            t.abort();
        }
    }
}

impl Drop for ProbeTasks {
    fn drop(&mut self) {
        self.stop();
    }
}

enum Outcome {
    /// The pod object is gone or finished deleting: nothing more to do.
    Done,
    /// The harness is shutting down.
    Shutdown,
}

fn state_json(s: &State) -> Value {
    match s {
        State::Waiting(r, m) => json!({"waiting": {"reason": r, "message": m}}),
        State::Running(at) => json!({"running": {"startedAt": at}}),
        State::Terminated {
            code,
            reason,
            started,
            finished,
        } => {
            json!({"terminated": {"exitCode": code, "reason": reason, "startedAt": started, "finishedAt": finished}})
        }
    }
}

fn pod_key(p: &Pod) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or_default(),
        p.metadata.name.as_deref().unwrap_or_default()
    )
}

struct Worker {
    kl: Arc<Kubelet>,
    pod: Pod,
    uid: String,
    ctrs: Vec<Ctr>,
    exits: (mpsc::UnboundedSender<Exit>, mpsc::UnboundedReceiver<Exit>),
    probed: (
        mpsc::UnboundedSender<probes::Report>,
        mpsc::UnboundedReceiver<probes::Report>,
    ),
    last_status: Value,
    start_time: String,
}

pub(crate) async fn run(
    kl: Arc<Kubelet>,
    mut rx: watch::Receiver<Option<Pod>>,
    mut stop: Shutdown,
) {
    let Some(pod) = rx.borrow().clone() else {
        return;
    };
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let ctrs = pod
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|c| Ctr {
            c,
            pid: None,
            state: State::Waiting("ContainerCreating".into(), None),
            last: None,
            restarts: 0,
            restart_at: None,
            ready: false,
            started: false,
            probes: ProbeTasks::default(),
            gate: None,
            kill_at: None,
            probe_killed: false,
        })
        .collect();
    let mut w = Worker {
        kl,
        pod,
        uid,
        ctrs,
        exits: mpsc::unbounded_channel(),
        probed: mpsc::unbounded_channel(),
        last_status: Value::Null,
        start_time: now(),
    };
    let outcome = w.lifecycle(&mut rx, &mut stop).await;
    if let Outcome::Shutdown = outcome {
        w.kill_all(Duration::from_secs(2)).await;
        let _ = w.kl.teardown_volumes(&w.pod).await;
    }
}

impl Worker {
    fn deleting(&self) -> bool {
        self.pod.metadata.deletion_timestamp.is_some()
    }

    /// Waits for a pod update, a timer, or shutdown. Returns false when the pod is gone.
    async fn wait(
        &mut self,
        rx: &mut watch::Receiver<Option<Pod>>,
        stop: &mut Shutdown,
        d: Duration,
    ) -> Result<bool, Outcome> {
        tokio::select! {
            r = rx.changed() => {
                let cur = rx.borrow().clone();
                match (r, cur) {
                    (Ok(()), Some(p)) => { self.pod = p; Ok(true) }
                    _ => Ok(false),
                }
            }
            _ = stop.changed() => Err(Outcome::Shutdown),
            _ = tokio::time::sleep(d) => Ok(true),
        }
    }

    async fn lifecycle(
        &mut self,
        rx: &mut watch::Receiver<Option<Pod>>,
        stop: &mut Shutdown,
    ) -> Outcome {
        let terminal = matches!(self.phase_of_pod().as_str(), "Succeeded" | "Failed");
        // Phase 1: volumes. A failure leaves the pod ContainerCreating with an event.
        let volumes = loop {
            if self.deleting() || terminal {
                return self.finish_deletion(rx, stop).await;
            }
            match self.kl.setup_volumes(&self.pod).await {
                Ok(v) => break v,
                Err(e) => {
                    tracing::warn!(node = %self.kl.node, pod = %pod_key(&self.pod), error = %e, "volume setup failed");
                    self.kl.events.record_typed(
                        &self.pod,
                        "Warning",
                        "FailedMount",
                        &e.to_string(),
                    );
                    self.push_status();
                }
            }
            match self.wait(rx, stop, Duration::from_secs(1)).await {
                Ok(true) => {}
                Ok(false) => return self.teardown_until_done(stop).await,
                Err(o) => return o,
            }
        };
        // Phase 2: init containers, to completion, in order.
        let inits = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.clone())
            .unwrap_or_default();
        for c in inits {
            loop {
                let spec = match self.container_spec(&c, &volumes) {
                    Ok(s) => Some(s),
                    // Retried like a failed init container, as a kubelet retries a pull.
                    Err((reason, _)) if reason == "ErrImagePull" => None,
                    Err(_) => return self.finish_deletion(rx, stop).await,
                };
                let code = match spec.as_ref().map(runtime::spawn) {
                    None => 128,
                    Some(Ok(mut child)) => {
                        tokio::select! {
                            s = child.wait() => s.ok().and_then(|s| s.code()).unwrap_or(1),
                            _ = stop.changed() => { if let Some(pid) = child.id() { runtime::signal(pid, Signal::SIGKILL); } return Outcome::Shutdown }
                        }
                    }
                    Some(Err(_)) => 128,
                };
                if code == 0 {
                    break;
                }
                if self.restart_policy() == "Never" {
                    self.push_terminal("Failed");
                    return self.finish_deletion(rx, stop).await;
                }
                match self.wait(rx, stop, Duration::from_secs(1)).await {
                    Ok(true) if !self.deleting() => {}
                    Ok(_) => return self.finish_deletion(rx, stop).await,
                    Err(o) => return o,
                }
            }
        }
        // Phase 3: app containers.
        for i in 0..self.ctrs.len() {
            self.start(i, &volumes);
        }
        self.push_status();
        loop {
            let next = self
                .ctrs
                .iter()
                .flat_map(|c| [c.restart_at, c.kill_at])
                .flatten()
                .min();
            // At least every `STATUS_SYNC` the status is compared with the API server's.
            let sleep = next.map_or(pod_status::STATUS_SYNC, |t| {
                t.saturating_duration_since(Instant::now())
                    .min(pod_status::STATUS_SYNC)
            });
            tokio::select! {
                r = rx.changed() => {
                    let cur = rx.borrow().clone();
                    match (r, cur) {
                        (Ok(()), Some(p)) => self.pod = p,
                        _ => {
                            self.kill_all(Duration::ZERO).await;
                            return self.teardown_until_done(stop).await;
                        }
                    }
                    if self.deleting() {
                        return self.finish_deletion(rx, stop).await;
                    }
                }
                Some((i, pid, code)) = self.exits.1.recv() => self.exited(i, pid, code),
                Some(r) = self.probed.1.recv() => self.probed(r),
                _ = tokio::time::sleep(sleep) => {
                    for c in &mut self.ctrs {
                        if c.kill_at.is_some_and(|t| t <= Instant::now()) {
                            c.kill_at = None;
                            if let Some(pid) = c.pid { runtime::signal(pid, Signal::SIGKILL); }
                        }
                    }
                    for i in 0..self.ctrs.len() {
                        if self.ctrs[i].restart_at.is_some_and(|t| t <= Instant::now()) {
                            self.ctrs[i].restart_at = None;
                            self.ctrs[i].restarts += 1;
                            self.start(i, &volumes);
                        }
                    }
                }
                _ = stop.changed() => return Outcome::Shutdown,
            }
            self.push_status();
        }
    }

    fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    fn phase_of_pod(&self) -> String {
        self.pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default()
    }

    /// The container's process, or why it waits (`CreateContainerConfigError`, `ErrImagePull`).
    fn container_spec(
        &self,
        c: &Container,
        volumes: &[Prepared],
    ) -> Result<ContainerSpec, (String, Option<String>)> {
        let mut env = match env::build(&self.kl, &self.pod, c) {
            Ok(e) => e,
            Err(msg) => {
                self.kl.events.record_typed(
                    &self.pod,
                    "Warning",
                    "Failed",
                    &format!("Error: {msg}"),
                );
                return Err(("CreateContainerConfigError".into(), None));
            }
        };
        let image = c.image.clone().unwrap_or_default();
        let has_command = c.command.as_ref().is_some_and(|v| !v.is_empty());
        let argv = match self
            .kl
            .cfg
            .images
            .resolve(&image, has_command, env::argv(c, &env))
        {
            Ok(a) => a,
            Err(e) => {
                for msg in [
                    format!("Failed to pull image \"{image}\": {e}"),
                    "Error: ErrImagePull".into(),
                ] {
                    self.kl
                        .events
                        .record_typed(&self.pod, "Warning", "Failed", &msg);
                }
                return Err(("ErrImagePull".into(), Some(e.0)));
            }
        };
        if let Some(Source::Dir(d)) = self.kl.cfg.images.source(&image) {
            env::image_path(&mut env, d, c);
        }
        let mut mounts = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            let Some(v) = volumes.iter().find(|v| v.name == m.name) else {
                continue;
            };
            let mut source = v.host_path.clone();
            if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                source = source.join(sub);
                let _ = std::fs::create_dir_all(&source);
            }
            mounts.push(Mount {
                source,
                target: m.mount_path.clone(),
                read_only: m.read_only.unwrap_or(false),
                propagation: Propagation::parse(m.mount_propagation.as_deref()),
            });
        }
        self.kl.mount_service_account(volumes, &mut mounts);
        // What a kubelet mounts into every container on its node: the node's hosts file
        // (cluster names, `controllers::dns`) and its kubeconfig (`env::NODE_KUBECONFIG`).
        if let Some(ns) = self.kl.namespaces() {
            for (path, read_only) in [("/etc/hosts", false), (env::NODE_KUBECONFIG, true)] {
                let taken = mounts
                    .iter()
                    .any(|m| Path::new(&m.target) == Path::new(path));
                if !taken && ns.root().join(&path[1..]).is_file() {
                    mounts.push(Mount {
                        source: path.into(),
                        target: path.into(),
                        read_only,
                        propagation: Propagation::Private,
                    });
                }
            }
        }
        let dir = self.kl.pod_dir(&self.uid);
        Ok(ContainerSpec {
            argv,
            env,
            working_dir: c.working_dir.clone(),
            mounts,
            log_path: Kubelet::log_path(&self.kl.root, &self.uid, &c.name),
            rootfs: dir.join("containers").join(&c.name).join("rootfs"),
            hostname: pod_hostname(&self.pod),
            node: self.kl.namespaces(),
        })
    }

    fn start(&mut self, i: usize, volumes: &[Prepared]) {
        let c = self.ctrs[i].c.clone();
        let spec = match self.container_spec(&c, volumes) {
            Ok(s) => s,
            Err((reason, message)) => {
                self.ctrs[i].state = State::Waiting(reason, message);
                self.ctrs[i].restart_at = Some(Instant::now() + Duration::from_secs(2));
                return;
            }
        };
        match runtime::spawn(&spec) {
            Ok(mut child) => {
                let pid = child.id().unwrap_or_default();
                let at = now();
                tracing::info!(node = %self.kl.node, pod = %pod_key(&self.pod), container = %c.name, pid, "container started");
                self.kl.events.record_typed(
                    &self.pod,
                    "Normal",
                    "Started",
                    &format!("Started container {}", c.name),
                );
                self.ctrs[i].pid = Some(pid);
                self.ctrs[i].state = State::Running(at);
                let tx = self.exits.0.clone();
                runtime::remember(&self.uid, &c.name, pid, &spec);
                self.start_probes(i, pid);
                let (uid, name) = (self.uid.clone(), c.name.clone());
                tokio::spawn(async move {
                    let code = match child.wait().await {
                        Ok(s) => s.code().unwrap_or_else(|| {
                            128 + std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(9)
                        }),
                        Err(_) => 128,
                    };
                    runtime::forget(&uid, &name, pid);
                    let _ = tx.send((i, pid, code));
                });
            }
            Err(e) => {
                tracing::warn!(node = %self.kl.node, pod = %pod_key(&self.pod), container = %c.name, error = %e, "container start failed");
                self.kl.events.record_typed(
                    &self.pod,
                    "Warning",
                    "Failed",
                    &format!("Error: failed to start container \"{}\": {e}", c.name),
                );
                self.ctrs[i].state =
                    State::Waiting("RunContainerError".into(), Some(e.to_string()));
                self.ctrs[i].restart_at = Some(Instant::now() + Duration::from_secs(2));
            }
        }
    }

    /// Starts the probes of container `i`, now running as `pid`.
    fn start_probes(&mut self, i: usize, pid: u32) {
        let c = self.ctrs[i].c.clone();
        let target = probes::Target {
            pod_ip: self.kl.address(),
            container: c.clone(),
            pod_uid: self.uid.clone(),
        };
        let (kl, pod) = (self.kl.clone(), Arc::new(self.pod.clone()));
        let unhealthy = move |kind: Kind, msg: &str| {
            tracing::info!(node = %kl.node, pod = %pod_key(&pod), kind = kind.label(), error = msg, "probe failed");
            kl.events.record_typed(
                pod.as_ref(),
                "Warning",
                "Unhealthy",
                &format!("{} probe failed: {msg}", kind.label()),
            );
        };
        let (tasks, gate) = probes::spawn(target, i, pid, self.probed.0.clone(), unhealthy);
        let ctr = &mut self.ctrs[i];
        ctr.ready = Kind::Readiness.of(&c).is_none();
        ctr.started = Kind::Startup.of(&c).is_none();
        ctr.probe_killed = false;
        ctr.kill_at = None;
        ctr.probes = ProbeTasks(tasks);
        ctr.gate = gate;
    }

    /// A probe's settled result changed: readiness is recorded, a successful startup opens
    /// the other probes, a failed liveness or startup probe kills the container (SIGTERM,
    /// SIGKILL after the grace period), after which its restart policy applies.
    fn probed(&mut self, r: probes::Report) {
        let deleting = self.deleting();
        let policy = self.restart_policy();
        let pod_grace = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds);
        let ctr = &mut self.ctrs[r.ctr];
        if ctr.pid != Some(r.pid) {
            return;
        }
        tracing::info!(node = %self.kl.node, pod = %pod_key(&self.pod), container = %ctr.c.name, kind = r.kind.label(), verdict = ?r.verdict, "probe result");
        match (r.kind, r.verdict) {
            (Kind::Readiness, v) => ctr.ready = v == Verdict::Success,
            (Kind::Startup, Verdict::Success) => {
                ctr.started = true;
                if let Some(g) = &ctr.gate {
                    let _ = g.send(true);
                }
            }
            // During termination liveness and startup no longer act (upstream stops them).
            (Kind::Liveness | Kind::Startup, Verdict::Failure) if !deleting => {
                let grace = r
                    .kind
                    .of(&ctr.c)
                    .and_then(|p| p.termination_grace_period_seconds)
                    .or(pod_grace)
                    .unwrap_or(30)
                    .max(0) as u64;
                let mut msg = format!(
                    "Container {} failed {} probe",
                    ctr.c.name,
                    r.kind.label().to_lowercase()
                );
                if policy != "Never" {
                    msg.push_str(", will be restarted");
                }
                ctr.probes.stop();
                ctr.ready = false;
                ctr.probe_killed = true;
                ctr.kill_at = Some(Instant::now() + Duration::from_secs(grace));
                runtime::signal(r.pid, Signal::SIGTERM);
                self.kl
                    .events
                    .record_typed(&self.pod, "Normal", "Killing", &msg);
            }
            _ => {}
        }
    }

    fn exited(&mut self, i: usize, pid: u32, code: i32) {
        // Whatever the container left behind in its process group goes too.
        runtime::signal(pid, Signal::SIGKILL);
        let ctr = &mut self.ctrs[i];
        if ctr.pid != Some(pid) {
            return;
        }
        ctr.pid = None;
        ctr.probes.stop();
        ctr.gate = None;
        ctr.kill_at = None;
        ctr.ready = false;
        ctr.started = false;
        let started = match &ctr.state {
            State::Running(at) => at.clone(),
            _ => now(),
        };
        let reason = if code == 0 { "Completed" } else { "Error" };
        ctr.state = State::Terminated {
            code,
            reason: reason.into(),
            started,
            finished: now(),
        };
        tracing::info!(node = %self.kl.node, pod = %pod_key(&self.pod), container = %ctr.c.name, code, "container exited");
        let policy = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into());
        // A container killed for a failed probe is restarted unless the policy is Never,
        // whatever its exit code (upstream's computePodActions).
        let restart = self.pod.metadata.deletion_timestamp.is_none()
            && (policy == "Always" || (policy == "OnFailure" && (code != 0 || ctr.probe_killed)));
        if restart {
            let backoff = Duration::from_secs(1 << ctr.restarts.clamp(0, 3) as u64);
            ctr.last = Some(ctr.state.clone());
            ctr.state = State::Waiting(
                "CrashLoopBackOff".into(),
                Some(format!(
                    "back-off restarting failed container {}",
                    ctr.c.name
                )),
            );
            ctr.restart_at = Some(Instant::now() + backoff);
        }
    }

    /// SIGTERM every running container, SIGKILL after `grace`, and wait for the exits.
    async fn kill_all(&mut self, grace: Duration) {
        let running: Vec<(usize, u32)> = self
            .ctrs
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.pid.map(|p| (i, p)))
            .collect();
        for c in &mut self.ctrs {
            c.probes.stop();
        }
        for (_, pid) in &running {
            runtime::signal(
                *pid,
                if grace.is_zero() {
                    Signal::SIGKILL
                } else {
                    Signal::SIGTERM
                },
            );
        }
        let deadline = Instant::now() + grace;
        let mut killed = grace.is_zero();
        while self.ctrs.iter().any(|c| c.pid.is_some()) {
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::select! {
                Some((i, pid, code)) = self.exits.1.recv() => {
                    self.ctrs[i].restart_at = None;
                    if self.ctrs[i].pid == Some(pid) {
                        self.exited(i, pid, code);
                        self.ctrs[i].restart_at = None;
                    }
                }
                _ = tokio::time::sleep(left), if !killed => {
                    for c in &self.ctrs {
                        if let Some(pid) = c.pid { runtime::signal(pid, Signal::SIGKILL); }
                    }
                    killed = true;
                }
            }
        }
        for c in &mut self.ctrs {
            c.restart_at = None;
        }
    }

    /// Unmounts the pod's volumes, retrying with backoff until every one is done, as
    /// the kubelet does: the pod stays Terminating meanwhile, and its volumes are not
    /// reported unused (so not detached) before they are unmounted.
    async fn teardown_until_done(&mut self, stop: &mut Shutdown) -> Outcome {
        let mut backoff = Duration::from_millis(500);
        while let Err(e) = self.kl.teardown_volumes(&self.pod).await {
            self.kl
                .events
                .record_typed(&self.pod, "Warning", "FailedUnMount", &e);
            tokio::select! {
                _ = stop.changed() => return Outcome::Shutdown,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
        Outcome::Done
    }

    /// Graceful deletion: stop containers within the grace period, unmount,
    /// then confirm the deletion with a zero grace period.
    async fn finish_deletion(
        &mut self,
        _rx: &mut watch::Receiver<Option<Pod>>,
        stop: &mut Shutdown,
    ) -> Outcome {
        let grace = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .unwrap_or(30)
            .max(0) as u64;
        if self.ctrs.iter().any(|c| c.pid.is_some()) {
            for c in &self.ctrs {
                if c.pid.is_some() {
                    self.kl.events.record_typed(
                        &self.pod,
                        "Normal",
                        "Killing",
                        &format!("Stopping container {}", c.c.name),
                    );
                }
            }
            self.kill_all(Duration::from_secs(grace)).await;
            self.push_status();
        }
        if let Outcome::Shutdown = self.teardown_until_done(stop).await {
            return Outcome::Shutdown;
        }
        if self.deleting() {
            let (ns, name) = (
                self.pod.metadata.namespace.clone(),
                self.pod.metadata.name.clone().unwrap_or_default(),
            );
            let opts = crate::registry::DeleteOptions {
                grace_period_seconds: Some(0),
                precondition_uid: Some(self.uid.clone()),
                ..Default::default()
            };
            match self
                .kl
                .client
                .delete_rt(&crate::resources::PODS, ns.as_deref(), &name, &opts)
            {
                Ok(()) => {
                    tracing::info!(node = %self.kl.node, pod = %pod_key(&self.pod), "pod deleted after teardown")
                }
                Err(e) => {
                    tracing::warn!(node = %self.kl.node, pod = %pod_key(&self.pod), error = %e, "final delete failed")
                }
            }
        }
        Outcome::Done
    }

    fn push_terminal(&mut self, phase: &str) {
        let status = json!({"phase": phase});
        let (ns, name) = (
            self.pod.metadata.namespace.clone(),
            self.pod.metadata.name.clone().unwrap_or_default(),
        );
        let _ =
            self.kl
                .client
                .patch_status::<Pod>(ns.as_deref(), &name, &json!({"status": status}));
    }

    /// Computes the pod status as Kubernetes reports it and writes it if it changed.
    fn push_status(&mut self) {
        let statuses: Vec<Value> = self
            .ctrs
            .iter()
            .map(|c| {
                let running = matches!(c.state, State::Running(_));
                let (started, ready) = (running && c.started, running && c.started && c.ready);
                let mut s = json!({"name": c.c.name, "image": c.c.image.clone().unwrap_or_default(), "imageID": "",
                    "containerID": c.pid.map(|p| format!("cairn://{p}")), "ready": ready, "started": started,
                    "restartCount": c.restarts, "state": state_json(&c.state)});
                if let Some(l) = &c.last {
                    s["lastState"] = state_json(l);
                }
                s
            })
            .collect();
        // Ready: every container runs, has started (startup probe) and passes readiness.
        let all_ready = self
            .ctrs
            .iter()
            .all(|c| matches!(c.state, State::Running(_)) && c.started && c.ready);
        let any_running = self
            .ctrs
            .iter()
            .any(|c| matches!(c.state, State::Running(_)));
        let all_done = self
            .ctrs
            .iter()
            .all(|c| matches!(c.state, State::Terminated { .. }) && c.restart_at.is_none());
        let started = self.ctrs.iter().any(|c| {
            c.pid.is_some()
                || !matches!(c.state, State::Waiting(ref r, _) if r == "ContainerCreating")
        });
        let never_started = self
            .ctrs
            .iter()
            .any(|c| matches!(c.state, State::Waiting(..)) && c.last.is_none());
        let phase = if all_done && !self.ctrs.is_empty() {
            if self
                .ctrs
                .iter()
                .all(|c| matches!(c.state, State::Terminated { code: 0, .. }))
            {
                "Succeeded"
            } else {
                "Failed"
            }
        } else if never_started {
            // As upstream's getPhase: a container waiting that never ran keeps the pod Pending.
            "Pending"
        } else if any_running || started {
            "Running"
        } else {
            "Pending"
        };
        let ready = if all_ready && !self.deleting() {
            "True"
        } else {
            "False"
        };
        let prev: Vec<Value> = self
            .pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .map(|c| serde_json::to_value(c).unwrap_or_default())
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default();
        let cond = |t: &str, s: &str, reason: Option<&str>| {
            let since = prev
                .iter()
                .find(|c| c["type"] == t && c["status"] == s)
                .map(|c| c["lastTransitionTime"].clone())
                .unwrap_or_else(|| json!(now()));
            let mut c =
                json!({"type": t, "status": s, "lastProbeTime": null, "lastTransitionTime": since});
            if let Some(r) = reason {
                c["reason"] = json!(r);
            }
            c
        };
        let not_ready = (ready == "False").then_some("ContainersNotReady");
        let conditions = json!([
            cond(
                "PodReadyToStartContainers",
                if started { "True" } else { "False" },
                None
            ),
            cond("Initialized", "True", None),
            cond("Ready", ready, not_ready),
            cond("ContainersReady", ready, not_ready),
            cond("PodScheduled", "True", None),
        ]);
        let ip = self.kl.address();
        let status = json!({"phase": phase, "conditions": conditions, "containerStatuses": statuses, "hostIP": ip,
            "hostIPs": [{"ip": ip}], "podIP": ip, "podIPs": [{"ip": ip}], "startTime": self.start_time,
            "qosClass": "BestEffort"});
        // Compare without timestamps that only move when something real changes; write it
        // again when the API server's copy says otherwise (status manager's reconcile).
        let api = serde_json::to_value(&self.pod.status).unwrap_or_default();
        if status == self.last_status && !pod_status::disagrees(&api, &status) {
            return;
        }
        let (ns, name) = (
            self.pod.metadata.namespace.clone(),
            self.pod.metadata.name.clone().unwrap_or_default(),
        );
        match self
            .kl
            .client
            .patch_status::<Pod>(ns.as_deref(), &name, &json!({"status": status}))
        {
            Ok(p) => {
                self.pod.status = p.status;
                self.last_status = status;
            }
            Err(e) => {
                tracing::debug!(pod = %pod_key(&self.pod), error = %e, "status update failed")
            }
        }
    }
}

/// A pod's hostname: `spec.hostname`, else its name, cut to 63 characters as the kubelet does.
fn pod_hostname(pod: &Pod) -> String {
    let spec = pod.spec.as_ref().and_then(|s| s.hostname.clone());
    let name = spec.unwrap_or_else(|| pod.metadata.name.clone().unwrap_or_default());
    name.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches(['-', '.'])
        .to_string()
}
