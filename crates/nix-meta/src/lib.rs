//! Nix metadata formats, pure and I/O-free: store paths, nix32, narinfo files, binary-cache
//! signing keys and narinfo signatures.
//!
//! Everything here is checked against files that real `nix` writes (see `tests/real_nix.rs`),
//! because a host's decision to activate a closure rests on these bytes being read correctly.

pub mod export;
pub mod hash;
pub mod keys;
pub mod narinfo;
pub mod nix32;
pub mod path_info;
pub mod store_path;

pub use hash::{NarHash, NarHashError};
pub use keys::{KeyError, PublicKey, SecretKey, Signature};
pub use narinfo::{NarInfo, NarInfoError, VerifyError};
pub use path_info::{PathInfo, PathInfoError};
pub use store_path::{DEFAULT_STORE_DIR, StorePath, StorePathError};
