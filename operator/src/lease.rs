//! Leader election on a `coordination.k8s.io/v1` Lease: one operator reconciles at a time.
//! Optimistic concurrency (the Lease's resourceVersion) decides races; a leader that cannot
//! renew within the lease duration stops, so two never act at once for longer than that.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use tracing::info;

pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

/// Whether `spec` lets `identity` take the lease at `now`: free, ours, or expired.
pub fn can_take(spec: &LeaseSpec, identity: &str, now: Timestamp) -> bool {
    let Some(holder) = spec.holder_identity.as_deref().filter(|h| !h.is_empty()) else { return true };
    if holder == identity {
        return true;
    }
    let (Some(renew), Some(secs)) = (spec.renew_time.as_ref(), spec.lease_duration_seconds) else { return true };
    renew.0 + SignedDuration::from_secs(secs.into()) < now
}

impl Elector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        Elector { api, name: name.into(), identity: identity.into(), duration }
    }

    fn spec(&self, previous: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
        let ours = previous.and_then(|p| p.holder_identity.as_deref()) == Some(self.identity.as_str());
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs() as i32),
            acquire_time: if ours { previous.and_then(|p| p.acquire_time.clone()) } else { Some(MicroTime(now)) },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if ours || previous.is_none() { transitions } else { transitions + 1 }),
            ..Default::default()
        }
    }

    /// One attempt to take or renew the lease; Ok(false) when another holder has it.
    pub async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        match self.api.get_opt(&self.name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                    spec: Some(self.spec(None, now)),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Some(mut lease) => {
                let current = lease.spec.clone().unwrap_or_default();
                if !can_take(&current, &self.identity, now) {
                    return Ok(false);
                }
                lease.spec = Some(self.spec(Some(&current), now));
                // resourceVersion in the body: a concurrent writer makes this a 409.
                match self.api.replace(&self.name, &PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Blocks until this instance holds the lease.
    pub async fn acquire(&self) -> Result<(), kube::Error> {
        let mut logged = false;
        loop {
            if self.try_acquire().await? {
                info!(lease = %self.name, identity = %self.identity, "leading");
                return Ok(());
            }
            if !logged {
                info!(lease = %self.name, "another instance leads; waiting");
                logged = true;
            }
            tokio::time::sleep(self.duration / 4).await;
        }
    }

    /// Renews every third of the duration; returns (an error) once the lease is lost or could
    /// not be renewed before it expired.
    pub async fn keep(&self) -> anyhow::Result<()> {
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.duration / 3).await;
            match self.try_acquire().await {
                Ok(true) => last = tokio::time::Instant::now(),
                Ok(false) => anyhow::bail!("lease {} was taken by another instance", self.name),
                Err(e) if last.elapsed() >= self.duration => anyhow::bail!("lease {} not renewed in time: {e}", self.name),
                Err(e) => tracing::warn!(lease = %self.name, error = %e, "renewal failed; retrying"),
            }
        }
    }

    /// Gives the lease up (on shutdown) so a successor need not wait for it to expire.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else { return Ok(()) };
        let Some(spec) = lease.spec.as_mut() else { return Ok(()) };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        self.api.replace(&self.name, &PostParams::default(), &lease).await?;
        info!(lease = %self.name, "released");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_is_free_ours_or_expired() {
        let now: Timestamp = "2026-11-21T10:00:00Z".parse().unwrap();
        let held = |by: &str, ago: i64| LeaseSpec {
            holder_identity: Some(by.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(now - SignedDuration::from_secs(ago))),
            ..Default::default()
        };
        assert!(can_take(&LeaseSpec::default(), "a", now));
        assert!(can_take(&held("a", 1), "a", now));
        assert!(!can_take(&held("b", 1), "a", now));
        assert!(!can_take(&held("b", 15), "a", now), "expires after the duration, not at it");
        assert!(can_take(&held("b", 16), "a", now));
        assert!(can_take(&LeaseSpec { holder_identity: Some(String::new()), ..held("b", 0) }, "a", now), "released");
    }
}
