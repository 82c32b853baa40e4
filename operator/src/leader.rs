//! Leader election with a `coordination.k8s.io/v1` Lease, so that two or
//! more operator replicas are safe: only the holder reconciles. The holder
//! renews every `renew`; another replica takes over once the lease has not
//! been renewed for `duration`. Updates carry the lease's resourceVersion,
//! so two replicas racing for an expired lease cannot both win. A holder
//! that fails to renew before its lease expires stops reconciling (`run`
//! drops everything of its term) and campaigns again in the same process,
//! never reconciling without the lease.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tracing::{info, warn};

use crate::{Error, Result};

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub duration: Duration,
    pub renew: Duration,
}

/// Outcome of one attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    Leading,
    /// Someone else holds a live lease.
    Follower(String),
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn expired(spec: &LeaseSpec, duration: Duration) -> bool {
    let Some(renewed) = spec.renew_time.as_ref() else {
        return true;
    };
    let secs = spec
        .lease_duration_seconds
        .map_or(duration.as_secs() as i64, i64::from);
    let age = Timestamp::now().as_second() - renewed.0.as_second();
    age > secs
}

/// Tries once to acquire or renew the lease.
pub async fn try_acquire(client: &Client, cfg: &LeaseConfig) -> Result<Attempt> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let secs = i32::try_from(cfg.duration.as_secs()).unwrap_or(i32::MAX);
    match api.get_opt(&cfg.name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(cfg.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Leading),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Follower(
                    "(just created by another replica)".into(),
                )),
                Err(e) => Err(e.into()),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.clone().unwrap_or_default();
            let holder = spec.holder_identity.clone().unwrap_or_default();
            let mine = holder == cfg.identity;
            if !mine && !holder.is_empty() && !expired(&spec, cfg.duration) {
                return Ok(Attempt::Follower(holder));
            }
            let mut next = spec.clone();
            next.holder_identity = Some(cfg.identity.clone());
            next.lease_duration_seconds = Some(secs);
            next.renew_time = Some(now());
            if !mine {
                next.acquire_time = Some(now());
                next.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            lease.spec = Some(next);
            // replace carries metadata.resourceVersion: a concurrent update
            // makes this fail with 409 instead of two leaders.
            match api.replace(&cfg.name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Leading),
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    Ok(Attempt::Follower("(lost a race for the lease)".into()))
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// Waits until this replica leads.
pub async fn acquire(client: &Client, cfg: &LeaseConfig) -> Result<()> {
    let mut last = String::new();
    loop {
        match try_acquire(client, cfg).await {
            Ok(Attempt::Leading) => {
                info!(lease = %cfg.name, identity = %cfg.identity, "acquired the leader lease");
                return Ok(());
            }
            Ok(Attempt::Follower(holder)) => {
                if holder != last {
                    info!(lease = %cfg.name, %holder, "standing by: another replica leads");
                    last = holder;
                }
            }
            Err(e) => warn!(lease = %cfg.name, error = %e, "lease attempt failed"),
        }
        tokio::time::sleep(cfg.renew).await;
    }
}

/// Renews the lease until it is lost; returns the reason.
pub async fn hold(client: &Client, cfg: &LeaseConfig) -> Error {
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(cfg.renew).await;
        match try_acquire(client, cfg).await {
            Ok(Attempt::Leading) => last_ok = tokio::time::Instant::now(),
            Ok(Attempt::Follower(holder)) => {
                return Error::Config(format!("lost the leader lease {} to {holder}", cfg.name));
            }
            Err(e) => {
                warn!(lease = %cfg.name, error = %e, "could not renew the lease");
                // Stop before the lease can expire under us.
                if last_ok.elapsed() + cfg.renew >= cfg.duration {
                    return Error::Config(format!(
                        "could not renew the leader lease {} in time: {e}",
                        cfg.name
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_follows_renew_time_and_duration() {
        let d = Duration::from_secs(15);
        let mut spec = LeaseSpec::default();
        assert!(expired(&spec, d), "never renewed");
        spec.renew_time = Some(now());
        spec.lease_duration_seconds = Some(15);
        assert!(!expired(&spec, d));
        spec.renew_time = Some(MicroTime(
            Timestamp::from_second(Timestamp::now().as_second() - 60).expect("time"),
        ));
        assert!(expired(&spec, d));
    }
}
