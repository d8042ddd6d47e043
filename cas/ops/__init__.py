"""One verb each, policy over storage and transfer: put, record (publish then record, shared by
put, fetch and pull), lookup, names, fetch, tier, manifest, leases, eviction and cleanup, upkeep,
verify; writing wires those that write, on a store's first write. No op imports the façade
(cas/store.py): one that needs another's service takes a callable or a small interface."""
