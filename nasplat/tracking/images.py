"""Pictures as MLflow images: ``log_image(key=..., step=...)``, so the run's *Images* panel steps through each
picture by epoch and puts two runs' pictures side by side.

Records go through the run's queue (:mod:`nasplat.tracking.outbox`) like every other record: the PNG is copied
when queued, so the caller may delete it at once, and a tracking server that does not answer stops nothing.
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Iterable

from nasplat.tracking.logger import RunLogger
from nasplat.tracking.outbox import outbox_for

_KEY_CHARS = re.compile(r"[^a-zA-Z0-9_\-./ ]")
"""What MLflow refuses in an image key."""


def image_key(name: str) -> str:
    """``name`` with the characters MLflow does not allow in an image key replaced by ``_``."""
    return _KEY_CHARS.sub("_", name)


def log_image(logger: RunLogger, path: str | Path, key: str, step: int) -> None:
    """Queue the picture at ``path`` as image ``key`` at ``step`` of the logger's run."""
    outbox = outbox_for(logger.tracking_uri, logger.run_id)
    outbox.put({"op": "image", "path": outbox.spool_copy(path), "key": image_key(key), "step": int(step),
                "timestamp": int(time.time() * 1000)})


def log_images(logger: RunLogger, paths: Iterable[str | Path], step: int) -> list[str]:
    """Every PNG among ``paths`` as an image keyed by its file name without the suffix (``cell_normal``,
    ``arch_heatmap``, ``predictions``) at ``step``; returns the keys."""
    keys = []
    for path in sorted(Path(p) for p in paths):
        if path.suffix.lower() == ".png":
            log_image(logger, path, path.stem, step)
            keys.append(image_key(path.stem))
    return keys
