//! `[cluster]`: the engine's contract on every backend (conformance: a real
//! etcd and the Kubernetes Lease API fake), what only the Lease backend has
//! (kubernetes.rs), and whole daemons failing over on etcd (failover.rs,
//! veza_failover.rs). Each test starts its own engine and stops it at the end.

mod conformance;
mod failover;
mod kubernetes;
mod membership;
mod partition;
mod rebalance;
mod validate;
mod veza_failover;
