"""``ocibuild serve``: the image's scoring server run on the host, to try an entry script before packaging.

The model is laid out as in the image (``AZUREML_MODEL_DIR/<file>``): one model's folder is its parent directory;
several models are linked into a temp ``azureml-models/<name>/1/`` tree, as the image has them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .errors import InputError
from .models.placement import model_name_for
from .packaging.entry_script import check_entry_script


def serve_locally(
    entry_script: Path, models: Sequence[Path], port: int, source_dir: Path | None = None
) -> int:
    script = (
        (source_dir / entry_script)
        if source_dir is not None and not entry_script.is_absolute()
        else entry_script
    )
    check_entry_script(script)
    for m in models:
        if not m.exists():
            raise InputError(f"model {m}: no such file or directory")
    tmp = None
    if len(models) == 1:
        model_dir = str(models[0].resolve().parent)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="ocibuild-serve-"))
        for m in models:
            dest = tmp / "azureml-models" / model_name_for(m) / "1"
            dest.mkdir(parents=True, exist_ok=True)
            os.symlink(m.resolve(), dest / m.name)
        model_dir = str(tmp / "azureml-models") if models else str(tmp)
    try:
        from . import serving

        return serving.serve(str(script.resolve()), port=port, model_dir=model_dir)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
