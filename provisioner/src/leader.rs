//! Leader election on a coordination.k8s.io/v1 Lease with client-go's semantics: acquire or
//! renew by resourceVersion-guarded update; step down at once when renewal misses its deadline.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::chrono::Utc;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, ResourceExt};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::error::{Result, is_api_code};

/// Timing, as client-go's defaults: lease 15s, renew deadline 10s, retry every 2s.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Lease object name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a holder's claim is valid without renewal.
    pub lease_duration: Duration,
    /// A holder that has not renewed within this long steps down.
    pub renew_deadline: Duration,
    /// Interval between attempts.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// client-go's default timing.
    pub fn new(name: &str, namespace: &str, identity: &str) -> Self {
        LeaseConfig {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What we last saw of the Lease, and when we saw it change (local clock, like client-go,
/// so clock skew between nodes does not matter).
struct Observed {
    record: (Option<String>, Option<MicroTime>),
    at: Instant,
}

/// The election loop. `tx` carries true while we hold the Lease.
pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    observed: Option<Observed>,
}

impl Elector {
    /// A new elector over `client`.
    pub fn new(client: kube::Client, cfg: LeaseConfig) -> Self {
        Elector {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            observed: None,
        }
    }

    /// Runs forever: acquire, renew while leading, step down on a missed deadline or a
    /// lost race, try again.
    pub async fn run(mut self, tx: watch::Sender<bool>) {
        let mut last_renew: Option<Instant> = None;
        loop {
            let ok = match self.try_acquire_or_renew().await {
                Ok(held) => held,
                Err(e) => {
                    warn!(error = %e, lease = %self.cfg.name, "lease update failed");
                    false
                }
            };
            let now = Instant::now();
            if ok {
                if !*tx.borrow() {
                    info!(identity = %self.cfg.identity, lease = %self.cfg.name, "became leader");
                }
                last_renew = Some(now);
                let _ = tx.send_replace(true);
            } else if *tx.borrow() {
                let missed =
                    last_renew.is_none_or(|t| now.duration_since(t) >= self.cfg.renew_deadline);
                let taken = self.held_by_other();
                if missed || taken {
                    warn!(identity = %self.cfg.identity, missed, taken, "lost leadership; stopping controllers");
                    let _ = tx.send_replace(false);
                    last_renew = None;
                }
            }
            tokio::time::sleep(self.cfg.retry_period).await;
        }
    }

    fn held_by_other(&self) -> bool {
        self.observed
            .as_ref()
            .and_then(|o| o.record.0.as_deref())
            .is_some_and(|h| !h.is_empty() && h != self.cfg.identity)
    }

    /// One attempt. Ok(true) when we hold the Lease afterwards.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool> {
        let now = MicroTime(Utc::now());
        let secs = i32::try_from(self.cfg.lease_duration.as_secs()).unwrap_or(15);
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.cfg.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_api_code(&e, 409) => Ok(false),
                Err(e) => Err(e.into()),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let record = (spec.holder_identity.clone(), spec.renew_time.clone());
        let changed = self.observed.as_ref().is_none_or(|o| o.record != record);
        if changed {
            self.observed = Some(Observed {
                record: record.clone(),
                at: Instant::now(),
            });
        }
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.cfg.identity;
        let duration =
            Duration::from_secs(spec.lease_duration_seconds.unwrap_or(secs).max(1) as u64);
        let expired = self
            .observed
            .as_ref()
            .is_some_and(|o| o.at.elapsed() >= duration);
        if !holder.is_empty() && !ours && !expired {
            return Ok(false);
        }
        let mut new = spec.clone();
        if !ours {
            new.acquire_time = Some(now.clone());
            new.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        new.holder_identity = Some(self.cfg.identity.clone());
        new.lease_duration_seconds = Some(secs);
        new.renew_time = Some(now);
        lease.spec = Some(new);
        // replace() carries resourceVersion: a concurrent writer makes this a 409.
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(l) => {
                let s = l.spec.unwrap_or_default();
                self.observed = Some(Observed {
                    record: (s.holder_identity, s.renew_time),
                    at: Instant::now(),
                });
                Ok(true)
            }
            Err(e) if is_api_code(&e, 409) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Gives the Lease up on shutdown so another replica takes over without waiting.
    pub async fn release(&self) -> Result<()> {
        if let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? {
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() == Some(self.cfg.identity.as_str()) {
                spec.holder_identity = None;
                spec.lease_duration_seconds = Some(1);
                spec.renew_time = Some(MicroTime(Utc::now()));
                self.api
                    .replace(&lease.name_any(), &PostParams::default(), &lease)
                    .await?;
            }
        }
        Ok(())
    }
}
