//! Plumbing shared by every k3rs daemon: logging set-up, the one signal handler, readiness, and the health/metrics HTTP endpoint.

pub mod health;
pub mod join;
pub mod logging;
pub mod readiness;
pub mod signal;

pub use health::{HealthServer, HealthState};
pub use readiness::Readiness;
