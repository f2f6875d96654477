//! The yeet protocol: the JSON wire types of the agent and admin APIs, their error codes, the
//! identities that sign requests (OpenSSH ed25519 keys), and the request-signing scheme. Pure
//! but for `clock`: callers bring randomness and files, so both server and clients share
//! exactly one definition.

/// Gives an enum its wire names once: `as_str` and `FromStr` agree with each other and with
/// the kebab-case serde names, and the database stores the same strings.
macro_rules! wire_names {
    ($ty:ident, $what:literal { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($name => Ok($ty::$variant),)+
                    other => Err(format!(concat!("unknown ", $what, " {:?} (expected one of: {})"), other, [$($name),+].join(", "))),
                }
            }
        }
    };
}

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
pub mod rollout;
pub mod secrets;
pub mod signing;
pub mod text;
pub mod windows;

pub use error_code::ErrorCode;
pub use identity::{Identity, IdentityError, PublicIdentity};
pub use signing::{AuthError, NonceCache, SignatureHeaders};

/// Every API path starts with this prefix.
pub const API_PREFIX: &str = "/v1";
