//! Plumbing shared by every k3rs daemon: logging set-up, the one signal handler, readiness, the
//! health/metrics HTTP endpoint, kubeconfig files and the agent's join client; with the `client`
//! feature, what Kubernetes API clients share: leader election, events, label selectors, taints.

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "client")]
pub mod events;
pub mod health;
pub mod join;
pub mod jwt;
pub mod kubeconfig;
#[cfg(feature = "client")]
pub mod leader;
pub mod logging;
pub mod quantity;
pub mod readiness;
pub mod resources;
#[cfg(feature = "client")]
pub mod selector;
pub mod signal;
#[cfg(feature = "client")]
pub mod taints;

pub use health::{HealthServer, HealthState};
pub use readiness::Readiness;
