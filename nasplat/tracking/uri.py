"""Where the MLflow store is: resolving a tracking URI to an absolute one, and the UI command for it."""
from __future__ import annotations

import os
import re
from pathlib import Path

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"


def resolve_tracking_uri(uri: str | None, base_dir: str | Path | None = None, create: bool = True) -> str:
    """``uri``, else ``MLFLOW_TRACKING_URI`` (as MLflow itself does), else ``sqlite:///<cwd>/mlflow.db``.

    Relative SQLite paths become absolute. A plain folder path means ``<folder>/mlflow.db``; the folder is
    made unless ``create`` is False.
    """
    base = Path(base_dir or Path.cwd()).resolve()
    uri = uri or os.environ.get(TRACKING_URI_ENV)
    if uri is None or uri == "":
        return f"sqlite:///{base / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(base / uri[len('sqlite:///'):]).resolve()}"
    if "://" not in uri and ":" not in uri[:2]:
        path = (base / uri).resolve()
        db = path if path.suffix == ".db" else path / "mlflow.db"
        if create:
            db.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{db}"
    return uri


def existing_store_uri(uri: str | None) -> str:
    """The resolved URI of a store that must already exist (reading commands never create one)."""
    resolved = resolve_tracking_uri(uri, create=False)
    if resolved.startswith("sqlite:///") and not Path(resolved[len("sqlite:///"):]).is_file():
        raise FileNotFoundError(f"no MLflow store at {resolved} (the file does not exist); run `nasplat search` "
                                "in this folder first, or pass --tracking-uri")
    if resolved.startswith("file://") and not Path(resolved[len("file://"):]).is_dir():
        raise FileNotFoundError(f"no MLflow store at {resolved} (the folder does not exist)")
    return resolved


def local_artifact_root(tracking_uri: str) -> str | None:
    """For a local SQLite store, an absolute ``mlartifacts`` folder beside the database."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None


def ui_command(tracking_uri: str) -> str:
    if tracking_uri.startswith("sqlite:///"):
        root = local_artifact_root(tracking_uri)
        return f"mlflow ui --backend-store-uri {tracking_uri} --default-artifact-root {root} --host 127.0.0.1 --port 5000"
    return f"open {tracking_uri} in a browser"


_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")


def mask_credentials(text: str) -> str:
    """``scheme://user:secret@host`` -> ``scheme://***@host`` anywhere in ``text`` (URIs in params, tags, logs)."""
    return _CREDENTIALS.sub(lambda m: f"{m.group('scheme')}***@", text)
