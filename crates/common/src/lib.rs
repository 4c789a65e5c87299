//! Plumbing shared by every k3rs daemon: logging set-up, the one signal handler, readiness, the
//! health/metrics HTTP endpoint, kubeconfig files and the agent's join client.

pub mod health;
pub mod join;
pub mod jwt;
pub mod kubeconfig;
pub mod logging;
pub mod quantity;
pub mod readiness;
pub mod signal;

pub use health::{HealthServer, HealthState};
pub use readiness::Readiness;
