"""The scoring server that ships inside every image and runs under ``ocibuild serve``.

This directory is copied into images as the top-level package ``ocibuild_serving``
(``/opt/ocibuild/server/ocibuild_serving``, started as ``python3 -m ocibuild_serving``), where only the image's own
Python exists: 3.9 or newer (tested on Debian bullseye's 3.9 and bookworm's 3.11). So it must use only the standard
library and only relative imports, and this ``__init__`` imports nothing: the host CLI can import the package
without pulling in the HTTP stack.

Python API (what ``ocibuild serve`` calls; both block and must run on the main thread, which owns the signals)::

    serve(entry_script: str | None = None, host: str | None = None, port: int | None = None, *,
          model_dir: str | None = None, workers: int | None = None,
          max_request_bytes: int | None = None) -> int      # the process exit status
    main(argv: list[str] | None = None) -> int               # --entry-script --model-dir --port --host --workers

An argument left as ``None`` falls back to its environment variable, then to the default:

=============================  ===========================================================================
``AZUREML_ENTRY_SCRIPT``       the entry script defining ``init()`` and ``run(...)``; relative paths are
                               taken from the working directory (the app root ``/var/azureml-app`` in images)
``AZUREML_MODEL_DIR``          exported for the entry script (``model_dir`` / ``--model-dir`` sets it)
``OCIBUILD_HOST``              listen address, default ``0.0.0.0``
``OCIBUILD_PORT``              listen port, default ``5001``
``OCIBUILD_MAX_REQUEST_BYTES`` request body limit, default 100 MiB; larger bodies get 413 unread
``WORKER_COUNT``               worker processes, default 1; each loads the script and runs ``init()``
``SCORING_TIMEOUT_MS``         if set, a ``run()`` slower than this answers 504 (Azure answers 500; the call
                               itself cannot be stopped and finishes in the background)
``OCIBUILD_MAX_CONCURRENT_RUNS`` if set, at most this many ``run()`` calls at once per process (1 = one at a
                               time, as Azure's sync workers do, for scripts that are not thread-safe)
``OCIBUILD_GRACEFUL_TIMEOUT``  seconds in-flight requests get to finish after SIGTERM/SIGINT, default 30
``OCIBUILD_MODEL_NAME``        the model's name in the KServe V2 routes, default ``model``
``OCIBUILD_MODEL_VERSION``     its version there (``/v2/models/{name}/versions/{version}/...``), default none
``AML_CORS_ORIGINS``           comma-separated origins (or ``*``) allowed by CORS, as in Azure; default none
``SERVICE_NAME``, ``SERVICE_VERSION``, ``SERVICE_PATH_PREFIX``  title, version and path prefix in /swagger.json
``AZUREML_LOG_LEVEL``          server log level, default ``INFO``
``TMPDIR``                     where ``@rawhttp`` uploads go beyond 1 MiB per request (unlinked files), default /tmp
=============================  ===========================================================================

``run()`` is called in Azure's three styles (see ``entry``): ``run(raw_data)`` with the body as a str;
``run(**params)`` from the JSON object's keys when it carries ``inference_schema``'s ``@input_schema``;
``run(request)`` when marked ``@rawhttp``: Flask's own ``Request`` where the image has Flask or werkzeug (see
``wsgi``), else a standard-library one with Flask's API, uploads included (``files``, multipart ``form``; see
``rawhttp``); it may return an ``AMLResponse``. ``request_headers`` is passed when ``run`` declares it.

Routes (Azure's errors are JSON ``{"message": ...}``, the V2 routes' ``{"error": ...}``):

- ``GET|HEAD /``: 200 ``Healthy`` once ``init()`` has finished (503 before); any other method 405.
- ``GET /health/live``: 200 while the process serves, even during ``init()`` (Kubernetes liveness).
- ``GET /health/ready``: 200 once ``init()`` has finished, 503 before it and while draining (readiness).
  With ``WORKER_COUNT`` > 1 a worker takes connections only once it is ready, so during start-up connections wait
  in the listen backlog instead of getting 503 (see ``workers``).
- ``POST /score``: the UTF-8 JSON body, unchanged, to ``run(raw_data)``; the result as JSON. 400 on a body that is
  not UTF-8 or not JSON (or, for ``@input_schema`` scripts, not an object with the required parameters), 413 over
  the limit, 500 if ``run()`` raises (traceback in the log only), 504 past ``SCORING_TIMEOUT_MS``.
  ``@rawhttp`` scripts get any body; a multipart/form-data one is checked before ``run()`` (see ``multipart``): 400
  when malformed, 413 for more than 1000 parts. The standard-library request also refuses a text field over 500 kB
  (413) and keeps uploads in memory up to 1 MiB per request, the rest in temporary files closed once ``run()`` has
  returned; Flask's/werkzeug's ``Request`` does the same with its own limits.
- ``GET /score``: ``run()`` with the query parameters as a JSON object string (Azure's behaviour);
  ``OPTIONS /score``: 200, empty (with CORS headers for allowed origins); ``@rawhttp`` scripts get GET, POST and
  non-preflight OPTIONS requests themselves.
- ``GET /swagger.json[?version=2|3|3.1]``: OpenAPI 2 (default) or 3 from the script's ``inference_schema``
  decorators, its ``input_sample``/``output_sample``, or a ``swagger*.json`` the user wrote (see ``swagger``);
  an unknown version is a 404 naming the supported ones.
- ``GET /metrics``: Prometheus text: requests by route template and status, a latency histogram, in-flight
  requests, ready workers; summed over all worker processes (see ``metrics``).
- KServe V2 / Open Inference Protocol (see ``v2`` for how tensors map onto ``run()``): ``GET /v2`` (server
  metadata), ``GET /v2/health/live`` and ``/v2/health/ready`` (200, or 400 when not ready, empty bodies, as the
  protocol says), ``GET /v2/models/{name}[/versions/{v}]`` (metadata; inputs/outputs from the schema or samples
  when the script declares them), ``.../ready``, ``POST .../infer`` (JSON or binary tensor data; 400 for malformed
  requests, 404 for another model name, 503 before ``init()`` has finished).

Every request gets one access-log line, logfmt after the word ``access``:
``access method=POST path=/score route=/score status=200 ms=1.234 request_id=...``.

Exit status: 0 after a graceful stop, 2 for bad configuration, 3 when the entry script cannot be loaded or its
``init()`` raises (gunicorn's and Azure's boot-error code), 1 when the port cannot be bound.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "main", "serve"]


def __getattr__(name: str) -> Any:
    """Import the server only when ``serve``/``main`` are asked for, so importing the package stays free."""
    if name in ("serve", "main"):
        from . import launcher

        return getattr(launcher, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
