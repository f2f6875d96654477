//! The HTTP API in process, on a real SQLite store, as one test binary (one link on 2
//! cores): the authorization matrix, enrollment, bad input, activations, the embedded cache
//! and releases.

#![allow(clippy::unwrap_used)]

#[path = "../common/mod.rs"]
mod common;

mod activations;
mod audit;
mod authz;
mod cache;
mod detach;
mod docs;
mod enrollment;
mod harness;
mod input;
mod osquery;
mod releases;
mod rollouts;
mod scopes;
mod secrets;
mod tags;
mod users;
