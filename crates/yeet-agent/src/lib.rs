//! yeet-agent as a library: configuration, identity, and the enrollment and check-in loop.
//! Activation, the varlink socket and secrets arrive with the agent issue.

pub mod config;
pub mod daemon;
