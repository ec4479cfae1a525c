"""``python3 -m ocibuild_serving``: the image's entrypoint (and ``python -m ocibuild.serving`` on a host)."""

from __future__ import annotations

from .launcher import main

raise SystemExit(main())
