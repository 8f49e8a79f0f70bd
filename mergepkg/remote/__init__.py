"""Remotes: stores of built steps shared between machines, on any fsspec URL.

`config.py` keeps the configured remotes and trusted keys (`remotes.toml`), `record.py`
is the small record written last beside each artifact, `sign.py` signs and checks
records (ed25519), `transfer.py` moves files atomically per backend, `store.py` is a
remote (`Remote`: has, record, push, pull, gc), `hub.py` the Hugging Face Hub one (one
commit per artifact), `adopt.py` makes files staged on a remote an artifact's there
(a split step's in-place assembly) and `sync.py` joins remotes and the local store
(push an artifact, substitute one). See docs/remote.md.
"""
