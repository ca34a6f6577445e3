//! `[cluster]` with a real etcd: the engine's contract (conformance, which
//! a Kubernetes Lease backend must pass too), and whole daemons failing
//! over (failover.rs). Each test starts its own etcd and kills it at the end.

mod conformance;
mod failover;
mod kubernetes;
mod membership;
mod rebalance;
mod validate;

