//! The Kubernetes API client configuration every component builds the same way: from `--kubeconfig`
//! when given, else as kubectl finds one (`KUBECONFIG`, `~/.kube/config`) or in-cluster.

use std::path::Path;

/// The client configuration from `kubeconfig`, or the environment when `None`.
pub async fn config(kubeconfig: Option<&Path>) -> Result<kube::Config, String> {
    match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .map_err(|e| e.to_string())
        }
        None => kube::Config::infer().await.map_err(|e| e.to_string()),
    }
}
