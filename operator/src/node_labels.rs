//! EdgeNode labels the device cannot forge.
//!
//! Rollouts select EdgeNodes by label, so a label is a claim to receive a payload. The agent never
//! writes labels (the chart's RBAC gives it no patch on EdgeNodes and its admission policy refuses
//! labels on create). Labels come from two places only:
//! - administrators, who label EdgeNodes directly (`kubectl label edgenode ...`);
//! - this controller, which keeps on every EdgeNode the label `pollen.dev/node-name` and copies
//!   the labels of the Kubernetes Node of the same name whose keys start with one of the configured
//!   prefixes ([`DEFAULT_PREFIXES`]: the ones a kubelet cannot set on its own Node under the
//!   `NodeRestriction` admission plugin). A prefix a kubelet may write (`topology.kubernetes.io/`,
//!   `kubernetes.io/arch`, or any label outside `kubernetes.io`) is the device's word: allow it with
//!   `--copy-node-labels` only where that is acceptable.
//!
//! Writes are server-side apply with their own field manager, so labels set by administrators stay
//! and a copied label the Node lost is removed. Where the API server serves no Nodes, only the
//! node-name label is kept.
//!
//! Non-goals: which rollouts a label selects (see [`crate::controller`]), the quarantine label
//! (administrators set it; see [`crate::revocation`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use pollen_crds::EdgeNode;
use tracing::{debug, info, warn};

/// The field manager of the label writes.
pub const FIELD_MANAGER: &str = "pollen-operator-labels";

/// Node label prefixes copied by default: under `NodeRestriction`, a kubelet can set neither on its
/// own Node, so a compromised device cannot forge them.
pub const DEFAULT_PREFIXES: [&str; 2] = ["node-restriction.kubernetes.io/", "node-role.kubernetes.io/"];

/// The labels this controller keeps on the EdgeNode `name`: `pollen.dev/node-name`, and the labels
/// of its Node (when the API serves Nodes and one of that name exists) whose key starts with one of
/// `prefixes`. Labels under `pollen.dev/` are never copied (the quarantine label is an
/// administrator's decision about the EdgeNode, not the Node).
pub fn desired(
    name: &str,
    node_labels: Option<&BTreeMap<String, String>>,
    prefixes: &[String],
) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = node_labels
        .into_iter()
        .flatten()
        .filter(|(k, _)| !k.starts_with("pollen.dev/"))
        .filter(|(k, _)| {
            prefixes
                .iter()
                .any(|p| !p.is_empty() && k.starts_with(p.as_str()))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.insert(pollen_crds::labels::NODE_NAME.into(), name.to_owned());
    out
}

/// Whether `current` (the EdgeNode's labels) already shows `want`, with no copied label left over
/// that the Node no longer has.
pub fn in_sync(
    current: &BTreeMap<String, String>,
    want: &BTreeMap<String, String>,
    prefixes: &[String],
) -> bool {
    let present = want.iter().all(|(k, v)| current.get(k) == Some(v));
    let stale = current
        .keys()
        .filter(|k| !k.starts_with("pollen.dev/"))
        .filter(|k| {
            prefixes
                .iter()
                .any(|p| !p.is_empty() && k.starts_with(p.as_str()))
        })
        .any(|k| !want.contains_key(k));
    present && !stale
}

/// Errors of the label controller.
#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    /// The label write failed.
    #[error("labelling EdgeNode {name}: {source}")]
    Apply {
        /// The EdgeNode.
        name: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
}

struct Ctx {
    api: Api<EdgeNode>,
    nodes: Option<Store<Node>>,
    prefixes: Vec<String>,
}

async fn reconcile(en: Arc<EdgeNode>, ctx: Arc<Ctx>) -> Result<Action, LabelError> {
    let name = en.name_any();
    if let Some(store) = &ctx.nodes {
        // Before the first Node list, every copied label would look stale.
        let _ = store.wait_until_ready().await;
    }
    let node = ctx.nodes.as_ref().and_then(|s| s.get(&ObjectRef::new(&name)));
    let want = desired(&name, node.as_ref().map(|n| n.labels()), &ctx.prefixes);
    if in_sync(en.labels(), &want, &ctx.prefixes) {
        return Ok(Action::await_change());
    }
    let patch = serde_json::json!({
        "apiVersion": "pollen.dev/v1alpha1",
        "kind": "EdgeNode",
        "metadata": { "name": name, "labels": want },
    });
    ctx.api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(|source| LabelError::Apply {
            name: name.clone(),
            source,
        })?;
    debug!(node = %name, "EdgeNode labels updated");
    Ok(Action::await_change())
}

fn error_policy(_en: Arc<EdgeNode>, e: &LabelError, _ctx: Arc<Ctx>) -> Action {
    warn!("{e}");
    Action::requeue(Duration::from_secs(30))
}

/// Whether this client may list Nodes (the CRD-only API servers of tests serve none).
pub async fn nodes_served(client: &Client) -> bool {
    match Api::<Node>::all(client.clone())
        .list(&ListParams::default().limit(1))
        .await
    {
        Ok(_) => true,
        Err(e) => {
            info!(
                "Nodes cannot be listed ({e}): EdgeNodes get only the pollen.dev/node-name label from the operator"
            );
            false
        }
    }
}

/// Keep EdgeNode labels in step with their Nodes until `shutdown` resolves.
pub async fn run(
    client: Client,
    prefixes: Vec<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<EdgeNode> = Api::all(client.clone());
    let mut controller = Controller::new(api.clone(), watcher::Config::default());
    let mut nodes = None;
    let mut reflector = None;
    if nodes_served(&client).await {
        let node_api = Api::<Node>::all(client.clone());
        let (reader, writer) = kube::runtime::reflector::store::<Node>();
        let stream = kube::runtime::reflector(writer, watcher(node_api.clone(), watcher::Config::default()));
        reflector = Some(tokio::spawn(stream.for_each(|_| async {})));
        controller = controller.watches(node_api, watcher::Config::default(), |node: Node| {
            Some(ObjectRef::new(&node.name_any()))
        });
        nodes = Some(reader);
    }
    info!(
        ?prefixes,
        nodes = nodes.is_some(),
        "keeping EdgeNode labels: pollen.dev/node-name and Node labels under the prefixes"
    );
    let ctx = Arc::new(Ctx { api, nodes, prefixes });
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                debug!("label reconcile error: {e}");
            }
        })
        .await;
    if let Some(r) = reflector {
        r.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
    fn defaults() -> Vec<String> {
        DEFAULT_PREFIXES.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn only_labels_a_kubelet_cannot_set_are_copied_by_default() {
        let node = labels(&[
            ("node-restriction.kubernetes.io/fleet", "cameras"),
            ("node-role.kubernetes.io/gateway", ""),
            // A kubelet may set these on its own Node: not copied by default.
            ("kubernetes.io/arch", "arm64"),
            ("topology.kubernetes.io/zone", "hall-a"),
            ("role", "camera"),
            // Never copied: the quarantine decision is about the EdgeNode.
            ("pollen.dev/quarantine", "false"),
        ]);
        let got = desired("gw-1", Some(&node), &defaults());
        assert_eq!(
            got,
            labels(&[
                ("node-restriction.kubernetes.io/fleet", "cameras"),
                ("node-role.kubernetes.io/gateway", ""),
                ("pollen.dev/node-name", "gw-1"),
            ])
        );
        // More prefixes only where an operator allows them.
        let wider = desired("gw-1", Some(&node), &["kubernetes.io/arch".into(), String::new()]);
        assert_eq!(
            wider,
            labels(&[("kubernetes.io/arch", "arm64"), ("pollen.dev/node-name", "gw-1")])
        );
        // No Node: the name label only.
        assert_eq!(
            desired("gw-1", None, &defaults()),
            labels(&[("pollen.dev/node-name", "gw-1")])
        );
    }

    /// The reconciler against kube's mocked client: a Node's restricted label reaches its EdgeNode by
    /// server-side apply with this controller's field manager, and an EdgeNode in sync is not written.
    #[tokio::test]
    async fn a_node_label_is_applied_to_its_edgenode_and_nothing_else() {
        use http::{Request, Response};
        use kube::client::Body;
        use kube::runtime::watcher::Event;

        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.expect("one write");
            assert_eq!(req.method(), http::Method::PATCH);
            assert_eq!(req.uri().path(), "/apis/pollen.dev/v1alpha1/edgenodes/gw-1");
            let query = req.uri().query().unwrap_or_default().to_string();
            assert!(query.contains("fieldManager=pollen-operator-labels"), "{query}");
            let body: serde_json::Value =
                serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
            assert_eq!(
                body["metadata"]["labels"],
                serde_json::json!({"node-restriction.kubernetes.io/fleet": "cameras", "pollen.dev/node-name": "gw-1"})
            );
            let en = EdgeNode::new("gw-1", Default::default());
            send.send_response(Response::new(Body::from(serde_json::to_vec(&en).unwrap())));
            // Nothing else: the second, in-sync EdgeNode is not written (the client goes away with
            // no further request).
            let next = tokio::time::timeout(Duration::from_secs(1), handle.next_request()).await;
            assert!(!matches!(next, Ok(Some(_))), "an EdgeNode in sync was written");
        });
        let (reader, mut writer) = kube::runtime::reflector::store::<Node>();
        let mut node: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "gw-1", "labels": {
                "node-restriction.kubernetes.io/fleet": "cameras",
                "role": "camera",
            }},
        }))
        .unwrap();
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitApply(node.clone()));
        node.metadata.name = Some("gw-2".into());
        writer.apply_watcher_event(&Event::InitApply(node));
        writer.apply_watcher_event(&Event::InitDone);
        let ctx = Arc::new(Ctx {
            api: Api::all(Client::new(svc, "default")),
            nodes: Some(reader),
            prefixes: defaults(),
        });
        reconcile(Arc::new(EdgeNode::new("gw-1", Default::default())), ctx.clone())
            .await
            .unwrap();
        let mut synced = EdgeNode::new("gw-2", Default::default());
        synced.metadata.labels = Some(labels(&[
            ("node-restriction.kubernetes.io/fleet", "cameras"),
            ("pollen.dev/node-name", "gw-2"),
            ("role", "set-by-an-admin"),
        ]));
        reconcile(Arc::new(synced), ctx).await.unwrap();
        server.await.unwrap();
    }

    #[test]
    fn sync_keeps_administrator_labels_and_drops_stale_copies() {
        let p = defaults();
        let want = labels(&[
            ("pollen.dev/node-name", "gw-1"),
            ("node-role.kubernetes.io/gateway", ""),
        ]);
        // An administrator's own label does not make it out of sync.
        let mut current = want.clone();
        current.insert("role".into(), "camera".into());
        assert!(in_sync(&current, &want, &p));
        // A copied label the Node lost is stale.
        current.insert("node-restriction.kubernetes.io/fleet".into(), "old".into());
        assert!(!in_sync(&current, &want, &p));
        // A missing or forged name label is out of sync.
        let mut forged = want.clone();
        forged.insert("pollen.dev/node-name".into(), "gw-2".into());
        assert!(!in_sync(&forged, &want, &p));
        assert!(!in_sync(&BTreeMap::new(), &want, &p));
    }
}
