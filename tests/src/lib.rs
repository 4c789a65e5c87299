//! Shared test support for k3rs: start component processes and fixtures, wait for them, clean up.
