//! yeet-agent as a library: configuration, the daemon loop, fetching with the host's own
//! trust, the out-of-process activation, and the state that lets an interrupted activation
//! finish.

pub mod activate;
pub mod config;
pub mod daemon;
pub mod fetch;
pub mod launch;
pub mod local_client;
pub mod reboot;
pub mod secrets;
pub mod state;
pub mod system;
pub mod varlink;
