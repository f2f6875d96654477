-- A digest of the binary-cache keys each host trusts, as its agent reports it: when it
-- changes, a system the host refused as untrusted is offered to it again.
ALTER TABLE hosts ADD COLUMN trust_digest TEXT NOT NULL DEFAULT '';
