"""Every command starts in about 0.3 s: importing the API and the CLI, as every command does, imports no HTTP
client, oras-py or SBOM library (a local build needs none of them; each cost start-up 50 ms to 2.8 s, measured),
nor what only a conda file (yaml) or a smoke test and ``--load`` (http.client with ssl) need (10 and 5 ms)."""

import subprocess
import sys

HEAVY = ("requests", "urllib3", "oras", "jsonschema", "spdx_tools", "cyclonedx", "beartype", "cryptography", "yaml", "ssl")


def test_the_api_and_the_cli_import_none_of_the_heavy_libraries():
    probe = "import sys, ocibuild.api, ocibuild.cli; print(' '.join(sorted(m for m in sys.modules if '.' not in m)))"
    loaded = set(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split())
    assert "ocibuild" in loaded
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))
