//! Leader election on a `coordination.k8s.io/v1` Lease: one operator reconciles at a time.
//!
//! Optimistic concurrency (the Lease's resourceVersion) decides races. A leader renews every
//! quarter of its renew deadline, which is shorter than the lease duration, and every Lease call
//! has a timeout. The [`Fence`] says until when this instance surely holds the lease: the start
//! of its last successful renewal plus the renew deadline, on the monotonic clock, which keeps
//! running while the process is paused (SIGSTOP, a frozen VM). Nothing is written once that has
//! passed, so a leader paused past its lease wakes up fenced off, and the writes it had already
//! started carry resourceVersions, so a successor's writes make them fail.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use tracing::info;

#[derive(Clone)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    renew_deadline: Duration,
    fence: Fence,
    /// When the API server last answered a Lease call (readiness).
    answered: Arc<Mutex<Option<Instant>>>,
}

/// Until when this instance holds the lease for sure; writers check it before each write.
#[derive(Clone, Debug)]
pub struct Fence(Arc<Mutex<Option<Instant>>>);

impl Fence {
    /// Not held until the elector says so.
    pub fn new() -> Self {
        Fence(Arc::new(Mutex::new(None)))
    }

    /// Held for good (tests, a single instance without election).
    pub fn always() -> Self {
        Fence(Arc::new(Mutex::new(Some(Instant::now() + Duration::from_secs(100 * 365 * 86_400)))))
    }

    fn hold_until(&self, until: Instant) {
        *self.0.lock().expect("fence") = Some(until);
    }

    fn drop_hold(&self) {
        *self.0.lock().expect("fence") = None;
    }

    /// Ok while the lease is surely held; the error says why not.
    pub fn check(&self) -> Result<(), String> {
        match *self.0.lock().expect("fence") {
            Some(until) if Instant::now() < until => Ok(()),
            Some(until) => {
                Err(format!("not the leader: the lease was last renewed more than the renew deadline ago ({:?} past it)", until.elapsed()))
            }
            None => Err("not the leader".into()),
        }
    }
}

impl Default for Fence {
    fn default() -> Self {
        Self::new()
    }
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
    /// `renew_deadline` must be shorter than `duration`: a successor takes over only after
    /// `duration`, by when this instance has stopped writing.
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration, renew_deadline: Duration) -> Self {
        assert!(renew_deadline < duration, "renew deadline {renew_deadline:?} must be shorter than the lease duration {duration:?}");
        Elector {
            api,
            name: name.into(),
            identity: identity.into(),
            duration,
            renew_deadline,
            fence: Fence::new(),
            answered: Arc::new(Mutex::new(None)),
        }
    }

    /// The same elector (identity, timings, fence) calling through `api`: a client of another
    /// runtime, so that the renewal runs where the reconcilers cannot starve it.
    pub fn with_api(&self, api: Api<Lease>) -> Elector {
        Elector {
            api,
            name: self.name.clone(),
            identity: self.identity.clone(),
            duration: self.duration,
            renew_deadline: self.renew_deadline,
            fence: self.fence.clone(),
            answered: self.answered.clone(),
        }
    }

    /// Ok when the API server answered a Lease call (this instance's renewal, or its attempt
    /// to take the lease) within the lease duration; the error says since when it has not.
    pub fn reachable(&self) -> Result<(), String> {
        match *self.answered.lock().expect("answered") {
            Some(at) if at.elapsed() <= self.duration => Ok(()),
            Some(at) => Err(format!("the API server has not answered a Lease call for {:.0} s", at.elapsed().as_secs_f64())),
            None => Err("the API server has not answered a Lease call yet".into()),
        }
    }

    /// What the controllers check before each write.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// One Lease call's deadline.
    fn call_timeout(&self) -> Duration {
        (self.renew_deadline / 2).min(Duration::from_secs(5))
    }

    async fn timed<T>(&self, what: &str, call: impl std::future::Future<Output = Result<T, kube::Error>>) -> Result<T, kube::Error> {
        match tokio::time::timeout(self.call_timeout(), call).await {
            Ok(r) => r,
            Err(_) => Err(kube::Error::Service(format!("lease {what}: no answer within {:?}", self.call_timeout()).into())),
        }
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
        let started = Instant::now();
        let held = self.try_acquire_once().await;
        if held.is_ok() {
            *self.answered.lock().expect("answered") = Some(Instant::now());
        }
        match &held {
            Ok(true) => self.fence.hold_until(started + self.renew_deadline),
            Ok(false) => self.fence.drop_hold(),
            Err(_) => {}
        }
        held
    }

    async fn try_acquire_once(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        match self.timed("get", self.api.get_opt(&self.name)).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                    spec: Some(self.spec(None, now)),
                };
                match self.timed("create", self.api.create(&PostParams::default(), &lease)).await {
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
                match self.timed("update", self.api.replace(&self.name, &PostParams::default(), &lease)).await {
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

    /// Renews every quarter of the renew deadline; returns an error once the lease is lost or
    /// was not renewed within the renew deadline (the fence is closed by then), Ok when `stop`
    /// says so (between renewals: the lease can then be released without a renewal racing it).
    pub async fn keep(&self, mut stop: tokio::sync::watch::Receiver<bool>) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.renew_deadline / 4) => {}
                _ = stop.wait_for(|s| *s) => return Ok(()),
            }
            match self.try_acquire().await {
                Ok(true) => {}
                Ok(false) => anyhow::bail!("lease {} was taken by another instance", self.name),
                Err(e) => {
                    if let Err(fenced) = self.fence.check() {
                        anyhow::bail!("lease {} not renewed within the renew deadline: {e} ({fenced})", self.name);
                    }
                    tracing::warn!(lease = %self.name, error = %e, "renewal failed; retrying");
                }
            }
            // Paused past the deadline (the renewal above may even have succeeded late): stop.
            if let Err(fenced) = self.fence.check() {
                anyhow::bail!("lease {}: {fenced}", self.name);
            }
        }
    }

    /// Gives the lease up (on shutdown) so a successor need not wait for it to expire.
    pub async fn release(&self) -> Result<(), kube::Error> {
        self.fence.drop_hold();
        let Some(mut lease) = self.timed("get", self.api.get_opt(&self.name)).await? else { return Ok(()) };
        let Some(spec) = lease.spec.as_mut() else { return Ok(()) };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        self.timed("release", self.api.replace(&self.name, &PostParams::default(), &lease)).await?;
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

    #[test]
    fn the_fence_closes_at_the_deadline_even_while_paused() {
        let fence = Fence::new();
        assert!(fence.check().unwrap_err().contains("not the leader"), "closed until the lease is taken");
        // Far longer than a loaded machine's scheduling delay between the two lines below.
        fence.hold_until(Instant::now() + Duration::from_millis(1000));
        assert!(fence.check().is_ok());
        // A paused process: no code runs, the monotonic clock goes on.
        std::thread::sleep(Duration::from_millis(1100));
        let e = fence.check().unwrap_err();
        assert!(e.contains("renew deadline"), "{e}");
        assert!(Fence::always().check().is_ok());
    }
}
