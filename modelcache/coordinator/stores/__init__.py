"""Where the coordinator's objects live: an embedded SQLite file, or the Kubernetes API server.

Both implement `Store` (see `base.py`); the kube store (`kube/`) is the only package that imports
kubernetes_asyncio, and it is imported lazily so the embedded mode never loads it.
"""
