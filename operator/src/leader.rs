//! Leader election through a `coordination.k8s.io/v1` Lease, so that only one operator replica
//! writes assignments at a time.
//!
//! The replica that holds the Lease renews it every `lease_duration / 3`; another replica takes it
//! over once `renewTime + leaseDurationSeconds` has passed. Updates carry the Lease's
//! `resourceVersion`, so two replicas racing for it cannot both win. A leader that cannot renew
//! before its lease runs out stops (its process exits and restarts as a follower).
//!
//! Where the API server does not serve Leases (a CRD-only API server), [`leases_served`] says so
//! and the binary fails clearly unless the user allowed running without leader election.
//!
//! Non-goals: no fencing of writes beyond the lease itself.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use tracing::{info, warn};

/// Whether the API server serves `coordination.k8s.io/v1` Leases.
pub async fn leases_served(client: &Client) -> bool {
    match client.list_api_group_resources("coordination.k8s.io/v1").await {
        Ok(list) => list.resources.iter().any(|r| r.name == "leases"),
        Err(_) => false,
    }
}

/// Whether `me` may take (or keep) a lease with this spec at `now`.
pub fn can_take(spec: &LeaseSpec, me: &str, now: Timestamp) -> bool {
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() || holder == me {
        return true;
    }
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15).max(1));
    now.as_second() >= renewed.0.as_second() + duration
}

/// One replica's handle on the Lease.
pub struct LeaderElection {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease_duration: Duration,
}

impl LeaderElection {
    /// The Lease `namespace/name`, held as `identity`.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        lease_duration: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            lease_duration,
        }
    }

    /// Try once to take or renew the Lease. `Ok(false)`: another replica holds it.
    pub async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let seconds = self.lease_duration.as_secs().clamp(1, i32::MAX as u64) as i32;
        match self.api.get_opt(&self.name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(seconds),
                        acquire_time: Some(MicroTime(now)),
                        renew_time: Some(MicroTime(now)),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Some(mut lease) => {
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                if !can_take(spec, &self.identity, now) {
                    return Ok(false);
                }
                if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                    spec.acquire_time = Some(MicroTime(now));
                    spec.holder_identity = Some(self.identity.clone());
                }
                spec.renew_time = Some(MicroTime(now));
                spec.lease_duration_seconds = Some(seconds);
                let name = lease.name_any();
                match self.api.replace(&name, &PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Wait until this replica holds the Lease.
    pub async fn acquire(&self) -> Result<(), kube::Error> {
        let mut logged = false;
        loop {
            if self.try_acquire().await? {
                info!(lease = %self.name, identity = %self.identity, "leading");
                return Ok(());
            }
            if !logged {
                info!(lease = %self.name, "another replica leads; waiting for the lease");
                logged = true;
            }
            tokio::time::sleep(self.lease_duration / 3).await;
        }
    }

    /// Keep renewing; returns when the lease is lost (renewals failed for a whole lease duration, or
    /// another replica took it).
    pub async fn hold(&self) {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.lease_duration / 3).await;
            match self.try_acquire().await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => {
                    warn!(lease = %self.name, "another replica took the lease");
                    return;
                }
                Err(e) => {
                    warn!(lease = %self.name, "could not renew the lease: {e}");
                    if last_ok.elapsed() >= self.lease_duration {
                        return;
                    }
                }
            }
        }
    }

    /// Give the Lease up at shutdown, so a follower takes over at once.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await
            && let Some(spec) = lease.spec.as_mut()
            && spec.holder_identity.as_deref() == Some(self.identity.as_str())
        {
            spec.holder_identity = None;
            let name = lease.name_any();
            if let Err(e) = self.api.replace(&name, &PostParams::default(), &lease).await {
                warn!(lease = %self.name, "could not release the lease: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed: i64, secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(Into::into),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
            lease_duration_seconds: Some(secs),
            ..LeaseSpec::default()
        }
    }

    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::{Value, json};

    /// Answer lease requests: `stored` is what GET returns (`None`: 404); `put_code` what PUT answers.
    /// Returns the (method, body) of every request.
    async fn serve(
        mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
        stored: Option<Value>,
        put_code: u16,
    ) -> Vec<(String, Value)> {
        let mut seen = Vec::new();
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().to_string();
            assert!(
                req.uri()
                    .path()
                    .starts_with("/apis/coordination.k8s.io/v1/namespaces/pollen/leases"),
                "{}",
                req.uri()
            );
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap()
            };
            let (code, out) = match (method.as_str(), &stored) {
                ("GET", None) => (
                    404,
                    json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404,"message":"not found"}),
                ),
                ("GET", Some(l)) => (200, l.clone()),
                ("POST", _) => (201, body.clone()),
                ("PUT", _) if put_code == 200 => (200, body.clone()),
                ("PUT", _) => (
                    put_code,
                    json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Conflict","code":put_code,"message":"conflict"}),
                ),
                _ => panic!("unexpected {method}"),
            };
            seen.push((method, body));
            send.send_response(
                Response::builder()
                    .status(code)
                    .body(Body::from(serde_json::to_vec(&out).unwrap()))
                    .unwrap(),
            );
        }
        seen
    }

    fn lease(holder: &str, renewed: Timestamp) -> Value {
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "op", "namespace": "pollen", "resourceVersion": "7"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": MicroTime(renewed), "leaseTransitions": 2}
        })
    }

    async fn attempt(stored: Option<Value>, put_code: u16) -> (bool, Vec<(String, Value)>) {
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(serve(handle, stored, put_code));
        let le = LeaderElection::new(
            Client::new(svc, "default"),
            "pollen",
            "op",
            "me",
            Duration::from_secs(15),
        );
        let won = le.try_acquire().await.unwrap();
        drop(le);
        (won, server.await.unwrap())
    }

    #[tokio::test]
    async fn a_missing_lease_is_created_with_us_as_holder() {
        let (won, seen) = attempt(None, 200).await;
        assert!(won);
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].0, "POST");
        assert_eq!(seen[1].1["spec"]["holderIdentity"], "me");
    }

    #[tokio::test]
    async fn a_fresh_lease_of_another_replica_is_left_alone() {
        let (won, seen) = attempt(Some(lease("other", Timestamp::now())), 200).await;
        assert!(!won);
        assert_eq!(seen.len(), 1, "only the GET");
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_with_its_resource_version() {
        let old = Timestamp::now()
            .checked_sub(jiff::SignedDuration::from_secs(60))
            .unwrap();
        let (won, seen) = attempt(Some(lease("other", old)), 200).await;
        assert!(won);
        let (method, body) = &seen[1];
        assert_eq!(method, "PUT");
        assert_eq!(body["spec"]["holderIdentity"], "me");
        assert_eq!(body["spec"]["leaseTransitions"], 3);
        assert_eq!(body["metadata"]["resourceVersion"], "7", "optimistic concurrency");
    }

    #[tokio::test]
    async fn losing_the_race_for_a_lease_is_not_an_error() {
        let old = Timestamp::now()
            .checked_sub(jiff::SignedDuration::from_secs(60))
            .unwrap();
        let (won, _) = attempt(Some(lease("other", old)), 409).await;
        assert!(!won);
    }

    #[test]
    fn a_lease_is_taken_only_when_free_ours_or_expired() {
        let t = |s| Timestamp::from_second(s).unwrap();
        assert!(can_take(&spec(None, 100, 15), "me", t(101)));
        assert!(can_take(&spec(Some("me"), 100, 15), "me", t(101)));
        assert!(!can_take(&spec(Some("other"), 100, 15), "me", t(114)));
        assert!(can_take(&spec(Some("other"), 100, 15), "me", t(115)));
        assert!(can_take(
            &LeaseSpec {
                holder_identity: Some("other".into()),
                ..LeaseSpec::default()
            },
            "me",
            t(0)
        ));
    }
}
