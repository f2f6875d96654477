//! The yeet protocol: the JSON wire types of the agent and admin APIs, their error codes, the
//! identities that sign requests (OpenSSH ed25519 keys), and the request-signing scheme. Pure
//! but for `clock`: callers bring randomness and files, so both server and clients share
//! exactly one definition.

pub mod api;
pub mod audit;
#[cfg(feature = "cli-check")]
pub mod cli_check;
pub mod clock;
pub mod error_code;
pub mod fields;
pub mod identity;
pub mod names;
pub mod osquery;
pub mod secrets;
pub mod signing;
pub mod text;

pub use error_code::ErrorCode;
pub use identity::{Identity, IdentityError, PublicIdentity};
pub use signing::{AuthError, NonceCache, SignatureHeaders};

/// Every API path starts with this prefix.
pub const API_PREFIX: &str = "/v1";
