"""Building recipes: reuse or build each step, write the lock, place outputs with their
model cards; check what is built (plan status, validate) and verify it against the lock."""
