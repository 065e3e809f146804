//! The chart's agent ValidatingAdmissionPolicy (`charts/pollen/templates/agent-admission-policy.yaml`,
//! rendered by helm with the default values) ENFORCED by a real API server: crd-apiserver started with
//! `--admission-policy-file`, so the upstream ValidatingAdmissionPolicy plugin evaluates the policy with
//! cel-go on real requests. The client is a compromised device holding the edge agent's ServiceAccount
//! token, bound to node gw-1 (user extra `authentication.kubernetes.io/node-name`):
//!
//! - it may create its own EdgeNode without labels or assignments, and write its own status (merge patch,
//!   and server-side apply of status as the agent does it, also after an administrator labelled the node
//!   and the operator wrote assignments and its finalizer);
//! - every other write is refused with 403 and the policy's message: another node's EdgeNode (create,
//!   status), its own EdgeNode created with labels or assignments, labels (`role`, `pollen.dev/quarantine`),
//!   `spec.assignments`, the finalizers, the `pollen.dev/issued-certificates` ledger;
//! - the policy matches the agent only: an administrator's identical label patch is allowed.
//!
//! (cel-python checks the same policy's logic in `deploy/checks/agent_policy.py`; this is the API server's
//! own evaluation, with the requests it really builds.)
//!
//! Needs helm (e2e/tools/install-deps.sh) and crd-apiserver + etcd (e2e/tools/build-apiserver.sh).
//! Without them: fails under `CI`, skips with a reason otherwise.

use std::collections::BTreeMap;

use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::ObjectMeta;
use pollen_crds::{EdgeNode, EdgeNodeSpec};
use pollen_e2e::apiserver::{ApiServer, ApiServerOptions, TokenUser, retry_throttled};
use pollen_e2e::tools;
use serde_json::json;

/// The agent's ServiceAccount in the default render (release `pollen`, namespace `pollen-system`).
const AGENT: &str = tools::CHART_AGENT_USER;
const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
const AGENT_TOKEN: &str = "stolen-agent-token-gw-1";
/// The policy's name in the default render, as the API server quotes it in a refusal.
const POLICY: &str = "ValidatingAdmissionPolicy 'pollen-edge-node-own-edgenode'";
const AGENT_MANAGER: &str = "pollen-agent";
const PP: PostParams = PostParams {
    dry_run: false,
    field_manager: None,
};

fn install_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn edge_node(name: &str, labels: &[(&str, &str)]) -> EdgeNode {
    EdgeNode {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: (!labels.is_empty()).then(|| {
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>()
            }),
            ..ObjectMeta::default()
        },
        spec: EdgeNodeSpec::default(),
        status: None,
    }
}

fn assignment(rollout: &str) -> serde_json::Value {
    json!({
        "rollout": rollout,
        "chunkIndex": "registry.example/fw@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        "wave": 0, "sequence": 1, "targetPath": "fw.bin", "trustPolicy": "fleet",
    })
}

/// The agent's own status write: server-side apply of the status subresource, forced, as
/// `pollen_edge_node::agent` writes it.
async fn apply_status(api: &Api<EdgeNode>, name: &str, endpoint: &str) -> Result<EdgeNode, kube::Error> {
    let patch = json!({
        "apiVersion": "pollen.dev/v1alpha1", "kind": "EdgeNode",
        "metadata": { "name": name },
        "status": { "endpoint": endpoint },
    });
    api.patch_status(
        name,
        &PatchParams::apply(AGENT_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
}

/// Asserts that `result` is the policy's refusal: HTTP 403, reason Forbidden, naming the policy and
/// carrying `message` (the failed validation's message).
#[track_caller]
fn assert_refused<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>, message: &str) {
    match result {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 403, "{what}: {status:?}");
            assert_eq!(status.reason, "Forbidden", "{what}: {status:?}");
            assert!(
                status.message.contains(POLICY) && status.message.contains(message),
                "{what}: the refusal should come from the policy and say {message:?}, got: {}",
                status.message
            );
        }
        other => panic!("{what}: expected the admission policy's 403, got {other:?}"),
    }
}

const LABELS_MSG: &str = "the edge-node agent must not write EdgeNode labels";
const SPEC_MSG: &str = "the edge-node agent must not write EdgeNode spec";

#[tokio::test]
async fn a_stolen_agent_token_writes_only_its_own_edgenode_status() {
    let Some([helm, _, _]) = tools::require_all(["helm", "crd-apiserver", "etcd"]) else {
        return;
    };
    install_provider();
    let policy = tools::agent_admission_policy(&helm);
    let server = ApiServer::start_with(
        ApiServerOptions::default().admission_policy(policy).token_user(
            TokenUser::new(AGENT_TOKEN, AGENT)
                .group("system:serviceaccounts")
                .group("system:serviceaccounts:pollen-system")
                .extra(NODE_NAME_EXTRA, "gw-1"),
        ),
    )
    .await
    .expect("API server starts with the chart's admission policy");
    server
        .apply_crds_yaml(pollen_e2e::fleet::CRDS)
        .await
        .expect("Pollen's CRDs apply");
    let admin: Api<EdgeNode> = Api::all(server.client().await.expect("admin client"));
    let agent: Api<EdgeNode> = Api::all(server.client_with_token(AGENT_TOKEN).await.expect("agent client"));

    // --- CREATE ------------------------------------------------------------------------------------
    let gw2 = edge_node("gw-2", &[]);
    assert_refused(
        "agent creates another node's EdgeNode",
        retry_throttled(|| agent.create(&PP, &gw2)).await,
        "may write only the EdgeNode named after its own node (gw-1), not gw-2",
    );
    assert_refused(
        "agent creates its EdgeNode with a label",
        agent
            .create(&PP, &edge_node("gw-1", &[("role", "gateway")]))
            .await,
        LABELS_MSG,
    );
    let mut with_assignment = edge_node("gw-1", &[]);
    with_assignment.spec =
        serde_json::from_value(json!({ "assignments": [assignment("default/fw")] })).expect("spec");
    assert_refused(
        "agent creates its EdgeNode with an assignment",
        agent.create(&PP, &with_assignment).await,
        SPEC_MSG,
    );
    let created = agent
        .create(&PP, &edge_node("gw-1", &[]))
        .await
        .expect("the agent may create its own EdgeNode without labels");
    assert_eq!(created.metadata.labels.unwrap_or_default(), BTreeMap::new());

    // --- its own status ----------------------------------------------------------------------------
    let applied = apply_status(&agent, "gw-1", "10.0.0.1:7000")
        .await
        .expect("the agent may apply its own status");
    assert_eq!(
        applied.status.and_then(|s| s.endpoint).as_deref(),
        Some("10.0.0.1:7000")
    );
    agent
        .patch_status(
            "gw-1",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "endpoint": "10.0.0.1:7001" } })),
        )
        .await
        .expect("the agent may merge-patch its own status");

    // --- labels, spec, another node ----------------------------------------------------------------
    let label_patch = Patch::Merge(json!({
        "metadata": { "labels": { "role": "gateway", "pollen.dev/quarantine": "false" } }
    }));
    assert_refused(
        "agent labels its EdgeNode (role, quarantine=false)",
        agent.patch("gw-1", &PatchParams::default(), &label_patch).await,
        LABELS_MSG,
    );
    let spec_patch = Patch::Merge(json!({ "spec": { "assignments": [assignment("default/evil")] } }));
    assert_refused(
        "agent writes spec.assignments",
        agent.patch("gw-1", &PatchParams::default(), &spec_patch).await,
        SPEC_MSG,
    );
    admin
        .create(&PP, &gw2)
        .await
        .expect("the administrator creates gw-2 (the policy does not match it)");
    assert_refused(
        "agent writes gw-2's status",
        apply_status(&agent, "gw-2", "10.6.6.6:7000").await,
        "may write only the EdgeNode named after its own node (gw-1), not gw-2",
    );
    assert_refused(
        "agent merge-patches gw-2's status",
        agent
            .patch_status(
                "gw-2",
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": { "endpoint": "10.6.6.6:7000" } })),
            )
            .await,
        "not gw-2",
    );

    // --- the administrator and the operator are not confined ------------------------------------------
    let labelled = admin
        .patch("gw-1", &PatchParams::default(), &label_patch)
        .await
        .expect("the administrator's identical label patch is allowed");
    let labels = labelled.metadata.labels.unwrap_or_default();
    assert_eq!(labels.get("role").map(String::as_str), Some("gateway"));
    admin
        .patch(
            "gw-1",
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {
                    "finalizers": ["pollen.dev/revocation"],
                    "annotations": { "pollen.dev/issued-certificates": "[{\"serial\":\"ab\"}]" }
                },
                "spec": { "assignments": [assignment("default/fw")] }
            })),
        )
        .await
        .expect("the operator's finalizer, ledger and assignment are allowed");

    // --- what the agent keeps doing on a labelled, assigned node -------------------------------------
    // Status writes leave metadata alone (the status strategy copies the stored labels over), so the
    // policy's label equality holds for them.
    let after = apply_status(&agent, "gw-1", "10.0.0.1:7002")
        .await
        .expect("the agent may still apply its own status once the node is labelled and assigned");
    assert_eq!(after.metadata.labels.unwrap_or_default(), labels);
    assert_eq!(after.spec.assignments.len(), 1);
    // Its server-side apply of the EdgeNode itself without labels (an empty spec claims no assignment)
    // leaves the administrator's labels and the operator's assignment alone: allowed.
    let register = json!({
        "apiVersion": "pollen.dev/v1alpha1", "kind": "EdgeNode",
        "metadata": { "name": "gw-1" },
        "spec": {},
    });
    let registered = agent
        .patch(
            "gw-1",
            &PatchParams::apply(AGENT_MANAGER).force(),
            &Patch::Apply(&register),
        )
        .await
        .expect("the agent's label-less apply of its EdgeNode is allowed");
    assert_eq!(registered.metadata.labels.unwrap_or_default(), labels);
    assert_eq!(registered.spec.assignments.len(), 1);
    // ... but the same apply with a label of its own is refused.
    let mut register_labelled = register.clone();
    register_labelled["metadata"]["labels"] = json!({ "pollen.dev/node-name": "gw-1" });
    assert_refused(
        "agent applies its EdgeNode with a label",
        agent
            .patch(
                "gw-1",
                &PatchParams::apply(AGENT_MANAGER).force(),
                &Patch::Apply(&register_labelled),
            )
            .await,
        LABELS_MSG,
    );
    assert_refused(
        "agent removes the revocation finalizer",
        agent
            .patch(
                "gw-1",
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "finalizers": null } })),
            )
            .await,
        "the edge-node agent must not change EdgeNode finalizers",
    );
    assert_refused(
        "agent rewrites the issued-certificates ledger",
        agent
            .patch(
                "gw-1",
                &PatchParams::default(),
                &Patch::Merge(json!({
                    "metadata": { "annotations": { "pollen.dev/issued-certificates": "[]" } }
                })),
            )
            .await,
        "the edge-node agent must not write the pollen.dev/issued-certificates annotation",
    );
    assert_refused(
        "agent writes spec.assignments on the assigned node",
        agent.patch("gw-1", &PatchParams::default(), &spec_patch).await,
        SPEC_MSG,
    );

    let end = admin.get("gw-1").await.expect("gw-1 reads");
    assert_eq!(end.metadata.labels.unwrap_or_default(), labels);
    assert_eq!(end.spec.assignments.len(), 1);
    assert_eq!(end.spec.assignments[0].rollout, "default/fw");
    assert_eq!(
        end.status.and_then(|s| s.endpoint).as_deref(),
        Some("10.0.0.1:7002")
    );
    let gw2 = admin.get("gw-2").await.expect("gw-2 reads");
    assert_eq!(gw2.status.and_then(|s| s.endpoint), None);
}
