"""Where images are read from and written to: one reference parser (``location``), one opener (``open``), the
publishers (``publish``, ``engine``). A new transport is a reader in ``oci``/``registry``, a branch in ``open``
and a publisher here."""
