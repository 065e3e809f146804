//! The API calls of the plugin, with the kubeconfig read the way kubectl reads it: `--kubeconfig`, else
//! `KUBECONFIG`, else `~/.kube/config`, else the in-cluster service account (kube's `Config::infer`);
//! `--context` picks a context; the namespace is `-n`, else the context's.
//!
//! Non-goals: retries and caching (each command is one short conversation with the API server).

use std::path::PathBuf;

use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use pollen_crds::{EdgeNode, UpdateRollout};

/// Errors talking to the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No kubeconfig or in-cluster configuration could be used.
    #[error("cannot load a Kubernetes configuration: {0}")]
    Config(String),
    /// The client could not be built.
    #[error("cannot build a Kubernetes client")]
    Client(#[source] kube::Error),
    /// A request failed.
    #[error("{what}")]
    Api {
        /// What was being done.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

/// Where the kubeconfig comes from.
#[derive(Clone, Debug, Default)]
pub struct Target {
    /// `--kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
    /// `--context`.
    pub context: Option<String>,
    /// `-n/--namespace`.
    pub namespace: Option<String>,
}

/// A connected client and the namespace commands act in.
pub struct Cluster {
    client: Client,
    namespace: String,
}

impl Cluster {
    /// Connects as kubectl would with the same flags.
    pub async fn connect(t: &Target) -> Result<Self, ClusterError> {
        let options = KubeConfigOptions {
            context: t.context.clone(),
            ..Default::default()
        };
        let config = match (&t.kubeconfig, &t.context) {
            (Some(path), _) => {
                let kc = Kubeconfig::read_from(path).map_err(|e| ClusterError::Config(e.to_string()))?;
                Config::from_custom_kubeconfig(kc, &options)
                    .await
                    .map_err(|e| ClusterError::Config(e.to_string()))?
            }
            (None, Some(_)) => Config::from_kubeconfig(&options)
                .await
                .map_err(|e| ClusterError::Config(e.to_string()))?,
            (None, None) => Config::infer()
                .await
                .map_err(|e| ClusterError::Config(e.to_string()))?,
        };
        let namespace = t
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).map_err(ClusterError::Client)?;
        Ok(Self { client, namespace })
    }

    /// The namespace commands act in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn rollouts(&self) -> Api<UpdateRollout> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The rollout `name`.
    pub async fn rollout(&self, name: &str) -> Result<UpdateRollout, ClusterError> {
        self.rollouts()
            .get(name)
            .await
            .map_err(|source| ClusterError::Api {
                what: format!("cannot get updaterollout {}/{name}", self.namespace),
                source,
            })
    }

    /// Every EdgeNode, or those matching a label `selector` (kubectl's `-l` syntax).
    pub async fn edge_nodes(&self, selector: Option<&str>) -> Result<Vec<EdgeNode>, ClusterError> {
        let api: Api<EdgeNode> = Api::all(self.client.clone());
        let mut lp = ListParams::default();
        if let Some(s) = selector {
            lp = lp.labels(s);
        }
        api.list(&lp)
            .await
            .map(|l| l.items)
            .map_err(|source| ClusterError::Api {
                what: "cannot list edgenodes".into(),
                source,
            })
    }

    /// Applies a merge patch to rollout `name`.
    pub async fn patch_rollout(&self, name: &str, body: &serde_json::Value) -> Result<(), ClusterError> {
        self.rollouts()
            .patch(name, &PatchParams::default(), &Patch::Merge(body))
            .await
            .map(|_| ())
            .map_err(|source| ClusterError::Api {
                what: format!("cannot patch updaterollout {}/{name}", self.namespace),
                source,
            })
    }

    /// Deletes rollout `name` (its finalizer withdraws the assignments).
    pub async fn delete_rollout(&self, name: &str) -> Result<(), ClusterError> {
        self.rollouts()
            .delete(name, &DeleteParams::default())
            .await
            .map(|_| ())
            .map_err(|source| ClusterError::Api {
                what: format!("cannot delete updaterollout {}/{name}", self.namespace),
                source,
            })
    }
}
