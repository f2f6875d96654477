-- Reboots inside maintenance windows (SQLite; keep in step with ../postgres/0021_reboot_policy.sql).
-- reboot_policy: what an admin set ('never' or 'in-window'); declared_reboot: what the
-- host's own agent configuration declares, reported with each check-in (NULL: nothing),
-- which holds over the admin's.
ALTER TABLE hosts ADD COLUMN reboot_policy TEXT NOT NULL DEFAULT 'never';
ALTER TABLE hosts ADD COLUMN declared_reboot TEXT;
