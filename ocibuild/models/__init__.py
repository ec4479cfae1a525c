"""Registered models: a model kept in an OCI registry as an artifact (oras), versioned by tag, pinned by digest.

``artifact`` is the format (no network), ``orasclient`` is oras-py on ocibuild's transport, ``registry`` the
operations (push, pull, list, show, and resolving a reference for ``package``), ``commands`` the CLI.
"""
