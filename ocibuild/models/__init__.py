"""Registered models: a model kept in an OCI registry as an artifact (oras), versioned by tag, pinned by digest.

``placement`` says where a model sits in an image, ``artifact`` is the format (no network), ``orasclient`` is
oras-py on ocibuild's transport, ``registry`` the operations (push, pull, list, show, and resolving a reference
for ``package``). The command line for them is ``cli.model``.
"""
