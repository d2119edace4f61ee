//! The Job controller (NonIndexed batch/v1 Jobs, as kube-controller-manager's job and
//! ttl-after-finished controllers): pods up to parallelism, counts, terminal conditions.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serde_json::{Value, json};

use super::events::Recorder;
use super::workload::{controlled_by, is_ready, pod_from_template};
use crate::client::Client;
use crate::registry::{DeleteOptions, now};
use crate::resources::JOBS;

/// Upstream's `DefaultJobPodFailureBackOff` and `MaxJobPodFailureBackOff`.
const BACKOFF_BASE_SECS: i64 = 10;
const BACKOFF_MAX_SECS: i64 = 360;

/// The pods of one Job, counted as upstream counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Neither finished nor being deleted.
    pub active: i32,
    /// Active and Ready.
    pub ready: i32,
    /// Being deleted, not yet finished.
    pub terminating: i32,
    pub succeeded: i32,
    pub failed: i32,
    /// Container restarts of active pods (what `restartPolicy: OnFailure` spends of the limit).
    pub restarts: i32,
}

/// What the decision needs of a Job's spec and state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Input {
    pub parallelism: i32,
    pub completions: Option<i32>,
    pub backoff_limit: i32,
    pub on_failure: bool,
    pub suspend: bool,
    /// `activeDeadlineSeconds` has passed since `startTime`.
    pub past_deadline: bool,
    /// The pod-failure back-off since the last failure has not elapsed yet.
    pub backing_off: bool,
    /// A FailureTarget condition is already set (the Job is failing).
    pub failing: Option<Failure>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    BackoffLimitExceeded,
    DeadlineExceeded,
}

impl Failure {
    pub fn reason(self) -> &'static str {
        match self {
            Failure::BackoffLimitExceeded => "BackoffLimitExceeded",
            Failure::DeadlineExceeded => "DeadlineExceeded",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Failure::BackoffLimitExceeded => "Job has reached the specified backoff limit",
            Failure::DeadlineExceeded => "Job was active longer than specified deadline",
        }
    }

    fn from_reason(r: &str) -> Option<Failure> {
        match r {
            "BackoffLimitExceeded" => Some(Failure::BackoffLimitExceeded),
            "DeadlineExceeded" => Some(Failure::DeadlineExceeded),
            _ => None,
        }
    }
}

/// One sync's decision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Plan {
    pub create: i32,
    /// Active pods to delete.
    pub delete: i32,
    /// The Job is failing (FailureTarget); `terminal` says whether Failed is set too.
    pub failure: Option<Failure>,
    /// Enough pods succeeded (SuccessCriteriaMet); `terminal` says whether Complete is set too.
    pub success: bool,
    /// No pod is left running or terminating: the terminal condition can be set.
    pub terminal: bool,
}

/// Upstream's syncJob and manageJob for a NonIndexed Job, on counted pods.
pub fn decide(i: &Input, c: &Counts) -> Plan {
    let failure = i.failing.or_else(|| {
        let on_failure_exceeded = i.on_failure
            && if i.backoff_limit == 0 {
                c.restarts > 0
            } else {
                c.restarts >= i.backoff_limit
            };
        if c.failed > i.backoff_limit || on_failure_exceeded {
            Some(Failure::BackoffLimitExceeded)
        } else if i.past_deadline {
            Some(Failure::DeadlineExceeded)
        } else {
            None
        }
    });
    if failure.is_some() {
        return Plan {
            delete: c.active,
            failure,
            terminal: c.terminating == 0 && c.active == 0,
            ..Plan::default()
        };
    }
    if i.suspend {
        return Plan {
            delete: c.active,
            ..Plan::default()
        };
    }
    let want = match i.completions {
        // A work queue: once one pod succeeded, what runs finishes and nothing new starts.
        None if c.succeeded > 0 => c.active,
        None => i.parallelism,
        Some(n) => (n - c.succeeded).clamp(0, i.parallelism.max(0)),
    };
    let delete = (c.active - want).max(0);
    let create = if i.backing_off {
        0
    } else {
        (want - c.active).max(0)
    };
    let active = c.active - delete + create;
    let success = match i.completions {
        None => c.succeeded > 0 && active == 0,
        Some(n) => c.succeeded >= n && active == 0,
    };
    Plan {
        create,
        delete,
        failure: None,
        success,
        terminal: success && c.terminating + delete == 0,
    }
}

/// The back-off before a replacement pod after `failures` failures (10s doubling, 6m cap).
pub fn backoff_secs(failures: i32) -> i64 {
    if failures <= 0 {
        return 0;
    }
    let shift = (failures - 1).min(10) as u32;
    (BACKOFF_BASE_SECS << shift).min(BACKOFF_MAX_SECS)
}

fn time(v: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    v.as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.to_utc())
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

/// When a finished pod's last container finished (its last status write otherwise).
fn finished_at(p: &Pod) -> Option<chrono::DateTime<chrono::Utc>> {
    let st = serde_json::to_value(&p.status).unwrap_or_default();
    st["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| time(&c["state"]["terminated"]["finishedAt"]))
        .max()
}

pub fn count(pods: &[Pod]) -> Counts {
    let mut c = Counts::default();
    for p in pods {
        match phase(p) {
            "Succeeded" => c.succeeded += 1,
            "Failed" => c.failed += 1,
            _ if p.metadata.deletion_timestamp.is_some() => c.terminating += 1,
            _ => {
                c.active += 1;
                c.ready += i32::from(is_ready(p));
                let st = p.status.as_ref();
                c.restarts += st
                    .into_iter()
                    .flat_map(|s| {
                        let init = s.init_container_statuses.iter().flatten();
                        init.chain(s.container_statuses.iter().flatten())
                    })
                    .map(|s| s.restart_count)
                    .sum::<i32>();
            }
        }
    }
    c
}

fn condition<'a>(status: &'a Value, ty: &str) -> Option<&'a Value> {
    status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == ty && c["status"] == "True")
}

/// Sets condition `ty` to `status`, keeping its transition time when the status is unchanged.
fn set_condition(conds: &mut Vec<Value>, ty: &str, status: &str, reason: &str, message: &str) {
    let at = now();
    let new = json!({"type": ty, "status": status, "reason": reason, "message": message,
        "lastProbeTime": at, "lastTransitionTime": at});
    match conds.iter_mut().find(|c| c["type"] == ty) {
        Some(c) if c["status"] == status => {}
        Some(c) => *c = new,
        None => conds.push(new),
    }
}

fn owner_ref(job: &Job) -> OwnerReference {
    OwnerReference {
        api_version: "batch/v1".into(),
        kind: "Job".into(),
        name: job.metadata.name.clone().unwrap_or_default(),
        uid: job.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

pub struct JobController {
    client: Client,
    events: Recorder,
}

impl JobController {
    pub fn new(client: Client) -> Self {
        let events = Recorder::new(client.clone(), "job-controller", None);
        JobController { client, events }
    }

    pub fn reconcile(&self) {
        for job in self.client.list::<Job>(None) {
            if job.metadata.deletion_timestamp.is_none() {
                self.sync(&job);
            }
        }
    }

    fn sync(&self, job: &Job) {
        let ns = job.metadata.namespace.clone();
        let name = job.metadata.name.clone().unwrap_or_default();
        let status = serde_json::to_value(&job.status).unwrap_or_default();
        if let Some(done) = condition(&status, "Complete").or(condition(&status, "Failed")) {
            self.expire(job, done);
            return;
        }
        let spec = job.spec.clone().unwrap_or_default();
        let pods: Vec<Pod> = self
            .client
            .list::<Pod>(ns.as_deref())
            .into_iter()
            .filter(|p| controlled_by(&p.metadata, job.metadata.uid.as_ref()))
            .collect();
        let c = count(&pods);
        let suspend = spec.suspend.unwrap_or(false);
        let mut start = time(&status["startTime"]);
        let resumed = !suspend && condition(&status, "Suspended").is_some();
        if !suspend && (start.is_none() || resumed) {
            start = Some(chrono::Utc::now());
        }
        let elapsed =
            |since: chrono::DateTime<chrono::Utc>| (chrono::Utc::now() - since).num_seconds();
        let last_failure = pods
            .iter()
            .filter(|p| phase(p) == "Failed")
            .filter_map(finished_at)
            .max();
        let input = Input {
            parallelism: spec.parallelism.unwrap_or(1),
            completions: spec.completions,
            backoff_limit: spec.backoff_limit.unwrap_or(6),
            on_failure: spec
                .template
                .spec
                .as_ref()
                .and_then(|s| s.restart_policy.as_deref())
                == Some("OnFailure"),
            suspend,
            past_deadline: match (spec.active_deadline_seconds, start) {
                (Some(d), Some(s)) if !suspend => elapsed(s) >= d,
                _ => false,
            },
            backing_off: last_failure.is_some_and(|t| elapsed(t) < backoff_secs(c.failed)),
            failing: condition(&status, "FailureTarget")
                .and_then(|f| Failure::from_reason(f["reason"].as_str().unwrap_or_default())),
        };
        let plan = decide(&input, &c);
        let mut active: Vec<&Pod> = pods
            .iter()
            .filter(|p| !matches!(phase(p), "Succeeded" | "Failed"))
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        // Pods not yet running go first, then the newest (upstream's activePodsForRemoval).
        active.sort_by_key(|p| {
            (
                phase(p) == "Running",
                std::cmp::Reverse(p.metadata.creation_timestamp.clone()),
            )
        });
        let mut deleted = 0;
        for p in active.iter().take(plan.delete.max(0) as usize) {
            let pname = p.metadata.name.clone().unwrap_or_default();
            if self
                .client
                .delete::<Pod>(ns.as_deref(), &pname, None)
                .is_ok()
            {
                deleted += 1;
                tracing::info!(job = %name, pod = %pname, "pod deleted");
                self.events.record_typed(
                    job,
                    "Normal",
                    "SuccessfulDelete",
                    &format!("Deleted pod: {pname}"),
                );
            }
        }
        let mut created = 0;
        for _ in 0..plan.create {
            let template = spec.template.clone();
            let pod = pod_from_template(
                &template,
                ns.clone(),
                &name,
                owner_ref(job),
                BTreeMap::new(),
            );
            match self.client.create(&pod) {
                Ok(p) => {
                    created += 1;
                    let pname = p.metadata.name.clone().unwrap_or_default();
                    tracing::info!(job = %name, pod = %pname, "pod created");
                    self.events.record_typed(
                        job,
                        "Normal",
                        "SuccessfulCreate",
                        &format!("Created pod: {pname}"),
                    );
                }
                Err(e) => {
                    self.events.record_typed(
                        job,
                        "Warning",
                        "FailedCreate",
                        &format!("Error creating: {e}"),
                    );
                    break;
                }
            }
        }
        let mut conds: Vec<Value> = status["conditions"].as_array().cloned().unwrap_or_default();
        if suspend && plan.failure.is_none() {
            if condition(&status, "Suspended").is_none() {
                self.events
                    .record_typed(job, "Normal", "Suspended", "Job suspended");
            }
            set_condition(
                &mut conds,
                "Suspended",
                "True",
                "JobSuspended",
                "Job suspended",
            );
        } else if resumed {
            self.events
                .record_typed(job, "Normal", "Resumed", "Job resumed");
            set_condition(
                &mut conds,
                "Suspended",
                "False",
                "JobResumed",
                "Job resumed",
            );
        }
        let mut completion = status["completionTime"].clone();
        if let Some(f) = plan.failure {
            set_condition(&mut conds, "FailureTarget", "True", f.reason(), f.message());
            if plan.terminal {
                set_condition(&mut conds, "Failed", "True", f.reason(), f.message());
                self.events
                    .record_typed(job, "Warning", f.reason(), f.message());
                tracing::info!(job = %name, reason = f.reason(), failed = c.failed, "job failed");
            }
        } else if plan.success {
            let msg = "Reached expected number of succeeded pods";
            set_condition(
                &mut conds,
                "SuccessCriteriaMet",
                "True",
                "CompletionsReached",
                msg,
            );
            if plan.terminal {
                set_condition(&mut conds, "Complete", "True", "CompletionsReached", msg);
                completion = json!(now());
                self.events
                    .record_typed(job, "Normal", "Completed", "Job completed");
                tracing::info!(job = %name, succeeded = c.succeeded, "job completed");
            }
        }
        let nonzero = |n: i32| if n == 0 { Value::Null } else { json!(n) };
        let start_str = start.map(|s| json!(s.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
        let new = json!({
            "active": nonzero(c.active - deleted + created),
            "ready": c.ready,
            "terminating": c.terminating + deleted,
            "succeeded": nonzero(c.succeeded),
            "failed": nonzero(c.failed),
            "startTime": if resumed || status["startTime"].is_null() { start_str.unwrap_or(Value::Null) } else { status["startTime"].clone() },
            "completionTime": completion,
            "conditions": if conds.is_empty() { Value::Null } else { json!(conds) },
        });
        let differs = new
            .as_object()
            .into_iter()
            .flatten()
            .any(|(k, v)| status.get(k).unwrap_or(&Value::Null) != v);
        if differs {
            let _ = self
                .client
                .patch_status::<Job>(ns.as_deref(), &name, &json!({"status": new}));
        }
    }

    /// Deletes a finished Job (and, in the background, its pods) once
    /// `ttlSecondsAfterFinished` has passed, as the ttl-after-finished controller.
    fn expire(&self, job: &Job, done: &Value) {
        let ttl = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished);
        let (Some(ttl), Some(at)) = (ttl, time(&done["lastTransitionTime"])) else {
            return;
        };
        if (chrono::Utc::now() - at).num_seconds() < i64::from(ttl) {
            return;
        }
        let name = job.metadata.name.clone().unwrap_or_default();
        let opts = DeleteOptions {
            propagation_policy: Some("Background".into()),
            precondition_uid: job.metadata.uid.clone(),
            ..Default::default()
        };
        match self
            .client
            .delete_rt(&JOBS, job.metadata.namespace.as_deref(), &name, &opts)
        {
            Ok(()) => tracing::info!(job = %name, ttl, "finished job deleted after its ttl"),
            Err(e) => tracing::warn!(job = %name, error = %e, "finished job not deleted"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(parallelism: i32, completions: Option<i32>, backoff_limit: i32) -> Input {
        Input {
            parallelism,
            completions,
            backoff_limit,
            on_failure: false,
            suspend: false,
            past_deadline: false,
            backing_off: false,
            failing: None,
        }
    }

    fn counts(active: i32, succeeded: i32, failed: i32) -> Counts {
        Counts {
            active,
            succeeded,
            failed,
            ..Counts::default()
        }
    }

    #[test]
    fn creates_up_to_parallelism_and_no_more_than_remaining_completions() {
        let i = input(2, Some(3), 6);
        assert_eq!(decide(&i, &counts(0, 0, 0)).create, 2);
        assert_eq!(decide(&i, &counts(1, 1, 0)).create, 1);
        // One completion left: one pod, and a second running one is deleted.
        let p = decide(&i, &counts(2, 2, 0));
        assert_eq!((p.create, p.delete, p.success), (0, 1, false));
        let done = decide(&i, &counts(0, 3, 0));
        assert_eq!((done.create, done.success, done.terminal), (0, true, true));
        // A pod still terminating holds the Complete condition back (SuccessCriteriaMet first).
        let c = Counts {
            terminating: 1,
            ..counts(0, 3, 0)
        };
        assert_eq!(
            (decide(&i, &c).success, decide(&i, &c).terminal),
            (true, false)
        );
    }

    #[test]
    fn work_queue_finishes_when_one_succeeded_and_none_runs() {
        let i = input(3, None, 6);
        assert_eq!(decide(&i, &counts(0, 0, 0)).create, 3);
        let p = decide(&i, &counts(2, 1, 0));
        assert_eq!((p.create, p.delete, p.success), (0, 0, false));
        assert!(decide(&i, &counts(0, 1, 0)).success);
    }

    #[test]
    fn fails_when_failures_exceed_the_backoff_limit() {
        let i = input(1, Some(1), 1);
        let p = decide(&i, &counts(0, 0, 1));
        assert_eq!((p.create, p.failure), (1, None));
        let p = decide(&i, &counts(0, 0, 2));
        assert_eq!(p.failure, Some(Failure::BackoffLimitExceeded));
        assert_eq!((p.create, p.terminal), (0, true));
        // Backing off: the replacement waits.
        let b = Input {
            backing_off: true,
            ..i
        };
        assert_eq!(decide(&b, &counts(0, 0, 1)).create, 0);
        // OnFailure spends the limit in container restarts of running pods.
        let of = Input {
            on_failure: true,
            ..i
        };
        let c = Counts {
            restarts: 1,
            ..counts(1, 0, 0)
        };
        let p = decide(&of, &c);
        assert_eq!(
            (p.failure, p.delete, p.terminal),
            (Some(Failure::BackoffLimitExceeded), 1, false)
        );
    }

    #[test]
    fn deadline_and_suspension_remove_active_pods() {
        let i = Input {
            past_deadline: true,
            ..input(2, Some(4), 6)
        };
        let p = decide(&i, &counts(2, 1, 0));
        assert_eq!(
            (p.failure, p.delete, p.create),
            (Some(Failure::DeadlineExceeded), 2, 0)
        );
        let s = Input {
            suspend: true,
            ..input(2, Some(4), 6)
        };
        let p = decide(&s, &counts(2, 0, 0));
        assert_eq!(
            (p.delete, p.create, p.success, p.failure),
            (2, 0, false, None)
        );
    }

    #[test]
    fn backoff_doubles_from_ten_seconds_to_six_minutes() {
        assert_eq!(
            [0, 1, 2, 3, 6, 30].map(backoff_secs),
            [0, 10, 20, 40, 320, 360]
        );
    }
}
