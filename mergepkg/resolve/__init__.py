"""Resolution: every source pinned (hub commits, file hashes), every step keyed, the
lock held or refreshed. No tensor data is read."""
