"""Builds on a Ray cluster (docs/cluster.md): the driver plans and keys as a local build
does, every step neither stored here nor on the remote becomes a Ray task that reads its
inputs from the node's own caches or the remote and pushes its result to the remote.

Ray is imported only in this package, and only when a cluster build starts
(`mergepkg[ray]`); nothing here is imported by the rest of mergepkg but the CLI.
"""
