"""One verb each (put, fetch, tier, eviction, cleanup, leases, verify, manifest): policy over
storage and transfer."""
