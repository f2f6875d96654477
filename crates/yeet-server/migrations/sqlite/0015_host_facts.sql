-- More of what each host reports about itself: its OS release (NixOS or nix-darwin version),
-- kernel, and when it booted, for `yeet host show`.
ALTER TABLE hosts ADD COLUMN os_version TEXT NOT NULL DEFAULT '';
ALTER TABLE hosts ADD COLUMN kernel TEXT NOT NULL DEFAULT '';
ALTER TABLE hosts ADD COLUMN booted_at BIGINT;
