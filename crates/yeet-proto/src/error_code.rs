//! Every error code the yeet API answers with, its wire name and its HTTP status, declared
//! once. The server maps its refusals through this table, clients match on it, and the
//! README's API section is checked against it.

/// Declares `ErrorCode` from one table: variant, wire name, HTTP status, meaning.
macro_rules! error_codes {
    ($($variant:ident => $name:literal, $status:literal, $meaning:literal;)+) => {
        /// A stable, machine-readable reason for a refused request.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $(#[doc = $meaning] $variant,)+
        }

        impl ErrorCode {
            /// Every code, in the order of the table (the README lists them in this order).
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),+];

            /// The name sent in `{"error":{"code":...}}`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $name),+
                }
            }

            /// The HTTP status a response with this code has.
            pub fn http_status(self) -> u16 {
                match self {
                    $(ErrorCode::$variant => $status),+
                }
            }

            /// What the code means, for people (the README's API section).
            pub fn meaning(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $meaning),+
                }
            }
        }

        impl std::str::FromStr for ErrorCode {
            type Err = String;
            /// The first variant with this wire name (a name may carry two statuses, see
            /// `UnknownHostInRequest`); unknown names are an error so that a newer server's
            /// codes reach the caller as text.
            fn from_str(s: &str) -> Result<Self, String> {
                // A second variant with a name already listed is never chosen here.
                #[allow(unreachable_patterns)]
                match s {
                    $($name => Ok(ErrorCode::$variant),)+
                    other => Err(format!("unknown error code {other:?}")),
                }
            }
        }
    };
}

error_codes! {
    // The request's signature (see the signing scheme).
    Unsigned => "unsigned", 401, "The request carries no signature headers.";
    MalformedSignature => "malformed_signature", 401, "A signature header cannot be parsed.";
    StaleTimestamp => "stale_timestamp", 401, "The signed timestamp is outside the allowed clock skew.";
    UnknownKey => "unknown_key", 401, "No user, host or pending registration has this key (or it was removed or rejected).";
    BadSignature => "bad_signature", 401, "The signature does not verify for the claimed key.";
    ReplayedNonce => "replayed_nonce", 401, "The nonce was already used: a replayed request.";
    WrongServer => "wrong_server", 401, "The request was signed for another server's origin.";
    Forbidden => "forbidden", 403, "The signer's role (or host identity) may not do this.";
    RateLimited => "rate_limited", 429, "Too many requests from this key or network; slow down and retry.";
    // The request's shape.
    NoSuchEndpoint => "no_such_endpoint", 404, "No endpoint has this path.";
    MethodNotAllowed => "method_not_allowed", 405, "The endpoint does not accept this method.";
    BodyTimeout => "body_timeout", 408, "The body did not arrive (or an upload stalled) within the time allowed.";
    BodyTooLarge => "body_too_large", 413, "The body is larger than the server accepts.";
    BodyUnreadable => "body_unreadable", 400, "The body was cut short.";
    NotJson => "not_json", 415, "The body is not sent as application/json.";
    InvalidJson => "invalid_json", 400, "The body is not the JSON this endpoint expects.";
    InvalidQuery => "invalid_query", 400, "The query string is not what this endpoint expects.";
    InvalidPath => "invalid_path", 400, "A path segment (a release id) is malformed.";
    // Enrollment.
    KeyMismatch => "key_mismatch", 422, "The registered public key is not the key that signed the request.";
    OperatorKey => "operator_key", 409, "The key belongs to an operator; a host must register with its own key.";
    UnknownCode => "unknown_code", 404, "No pending registration has this approval code.";
    CodeExpired => "code_expired", 410, "The approval code expired; the agent shows a fresh one.";
    UnknownRegistration => "unknown_registration", 404, "No pending registration has this key.";
    NameTaken => "name_taken", 409, "Another host already has this name.";
    InvalidName => "invalid_name", 422, "The name is not a valid host or user name.";
    UnknownUser => "unknown_user", 404, "No user has this name.";
    LastAdmin => "last_admin", 409, "The change would leave no admin who acts on the whole fleet.";
    OwnRights => "own_rights", 403, "Users cannot change their own role, scope or existence; another admin can.";
    InvalidTag => "invalid_tag", 422, "A tag is outside the tag alphabet or too long, or there are too many.";
    InvalidKey => "invalid_key", 422, "The public key is not an OpenSSH ed25519 key.";
    KeyInUse => "key_in_use", 409, "The key already belongs to a host or user.";
    UserExists => "user_exists", 409, "A user with this name exists.";
    // Hosts, releases and activations.
    UnknownHost => "unknown_host", 404, "No host has this name.";
    UnknownHostInRequest => "unknown_host", 422, "The request body names a host that is not in the fleet.";
    UnknownRelease => "unknown_release", 404, "No release has this id.";
    EmptyRelease => "empty_release", 422, "A release must name at least one host.";
    MessageTooLong => "message_too_long", 422, "The release message is too long.";
    RevisionTooLong => "revision_too_long", 422, "The source revision is too long.";
    InvalidStorePath => "invalid_store_path", 422, "A store path is malformed.";
    NothingToRollBack => "nothing_to_roll_back", 422, "The host has no older system that it confirmed to go back to.";
    InvalidRollback => "invalid_rollback", 422, "A rollback names both hosts and a release, or neither.";
    NothingToRetry => "nothing_to_retry", 422, "A retry names no host, or a host without a desired system.";
    NoActivation => "no_activation", 404, "The host has not reported an activation yet.";
    InvalidLog => "invalid_log", 422, "The activation log is not base64-encoded gzip.";
    LogTooLarge => "log_too_large", 422, "The activation log is larger than the server keeps.";
    DetachRefused => "detach_refused", 403, "The host's policy does not let it detach; an admin can allow it with `yeet host policy HOST --allow-detach`.";
    NotDetached => "not_detached", 409, "The host is not detached.";
    // Rollouts.
    UnknownPolicy => "unknown_policy", 404, "No rollout policy has this name; `yeet rollout policy list` shows them.";
    InvalidPolicy => "invalid_policy", 422, "The rollout policy or its name is malformed (waves, bake, thresholds), or a release names a policy that does not exist.";
    UnknownRollout => "unknown_rollout", 404, "No rollout has this id.";
    RolloutConflict => "rollout_conflict", 409, "The rollout cannot do that in its state (a halted rollout cannot resume; a finished one cannot pause).";
    UnknownWindow => "unknown_window", 404, "No maintenance window has this name; `yeet window list` shows them.";
    InvalidWindow => "invalid_window", 422, "The maintenance window or its name is malformed (tags, days, times, time zone).";
    // Binary caches.
    NoEmbeddedCache => "no_embedded_cache", 404, "This server's embedded cache is disabled.";
    NotACacheFile => "not_a_cache_file", 404, "The upload's path is not a narinfo or NAR file name.";
    MissingDigest => "missing_digest", 400, "An upload does not declare its body's SHA-256.";
    DigestMismatch => "digest_mismatch", 400, "The uploaded body does not match its declared SHA-256.";
    InvalidNarinfo => "invalid_narinfo", 422, "A narinfo cannot be parsed, or does not fit its file name.";
    NarMismatch => "nar_mismatch", 422, "An uploaded NAR does not match the narinfo that names it.";
    MissingNar => "missing_nar", 422, "A narinfo names a NAR that was not uploaded first.";
    MissingNarinfo => "missing_narinfo", 422, "A released store path has no narinfo in the cache.";
    UntrustedClosure => "untrusted_closure", 422, "A released or uploaded store path is not signed by a trusted cache key.";
    TooManyPaths => "too_many_paths", 422, "The request asks about more store paths than one request may.";
    CacheNotAllowed => "cache_not_allowed", 422, "The release names a cache the server does not fetch from.";
    CacheUnreachable => "cache_unreachable", 422, "The server cannot read the named cache to check signatures.";
    UncheckableCache => "uncheckable_cache", 422, "The named cache's URL scheme cannot be checked by the server.";
    InvalidKeep => "invalid_keep", 422, "Garbage collection must keep at least one release per host.";
    // Secrets.
    UngrantedSecret => "ungranted_secret", 422, "A user scoped by tags keeps each of their secrets granted to at least one of their hosts.";
    UnknownSecret => "unknown_secret", 404, "No secret has this name.";
    SecretExists => "secret_exists", 409, "A secret with this name exists; `yeet secret rotate` stores a new version.";
    InvalidSecretName => "invalid_secret_name", 422, "The name is not a valid secret name.";
    InvalidSecret => "invalid_secret", 422, "The ciphertext is not an age file for this server's recipient, or is empty or too large.";
    InvalidRecipient => "invalid_recipient", 422, "The recipient is not an age X25519 recipient (age1...).";
    TooManySecrets => "too_many_secrets", 422, "The request names more secrets than one fetch may carry.";
    // osquery.
    OsqueryUnauthorized => "osquery_unauthorized", 401, "osquery: the node key is unknown, or the enroll secret is wrong; osqueryd is told `node_invalid` and enrolls again.";
    OsqueryNodeInUse => "osquery_node_in_use", 409, "osquery: a node with this host_identifier is still checking in; it keeps its key.";
    OsqueryNotSetUp => "osquery_not_set_up", 503, "osquery enrollment is off until an admin adds the secret `osquery-enroll` (`yeet secret add osquery-enroll`).";
    InvalidOsqueryRequest => "invalid_osquery_request", 400, "osquery: the body is not what osqueryd sends to this endpoint.";
    UnknownCarve => "unknown_carve", 404, "No carve session has this id, or it belongs to another node.";
    InvalidCarve => "invalid_carve", 422, "osquery: the carve or block does not match its session (size, count, id or checksum).";
    UnknownNode => "unknown_node", 404, "No osquery node has this identifier.";
    UnknownScheduledQuery => "unknown_scheduled_query", 404, "No scheduled query has this name.";
    ScheduledQueryExists => "scheduled_query_exists", 409, "A scheduled query with this name exists; remove it first.";
    InvalidScheduledQuery => "invalid_scheduled_query", 422, "The scheduled query's name, SQL, interval or hosts are invalid.";
    InvalidOsqueryOption => "invalid_osquery_option", 422, "The option's name or value is invalid.";
    UnknownCampaign => "unknown_campaign", 404, "No distributed query has this id.";
    InvalidCampaign => "invalid_campaign", 422, "The distributed query names no node, or its SQL or timeout is invalid.";
    // The server itself.
    Busy => "busy", 503, "The server is busy; retry after the seconds its Retry-After header names.";
    DiskFull => "disk_full", 507, "The server's disk is full; free space or run `yeet cache gc`.";
    Internal => "internal", 500, "The server failed; its log has the details.";
}

/// The message of every `internal` error: details stay in the server log.
pub const INTERNAL_MESSAGE: &str = "internal server error; the server log has details";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_only_documented_aliases_share_one() {
        for code in ErrorCode::ALL {
            let parsed: ErrorCode = code.as_str().parse().unwrap();
            assert_eq!(parsed.as_str(), code.as_str());
            if parsed != *code {
                assert_eq!(*code, ErrorCode::UnknownHostInRequest);
            }
            assert!(
                code.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{code:?}"
            );
            assert!((400..600).contains(&code.http_status()), "{code:?}");
        }
        assert!("no_such_code".parse::<ErrorCode>().is_err());
    }
}
