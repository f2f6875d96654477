-- The network a registration came from (an IPv4 address or an IPv6 /64), so that a full
-- table evicts from the network holding the most pending keys, never a lone waiting host.
ALTER TABLE registrations ADD COLUMN source TEXT NOT NULL DEFAULT '';
