"""What of the working folder `nasplat submit` uploads with a Ray Job.

Ray zips the folder and sends it to the cluster, where every job of the cluster's users can read it. Left out:
virtual environments, tracking stores, run folders and .git (:data:`WORKING_DIR_EXCLUDES`), and files that look
like credentials (:data:`SECRET_PATTERNS`) unless the user names them with ``--include-secret``. The patterns are
gitignore patterns, matched by the same matcher Ray's packaging uses, so the files listed as left out are the ones
Ray leaves out.
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from pathlib import Path

from nasplat.training.config import ConfigError

WORKING_DIR_EXCLUDES: tuple[str, ...] = (
    ".venv*", "venv", "mlruns", "mlartifacts", "nasplat_runs", "*.db", ".git", "__pycache__", "*.egg-info",
    ".pytest_cache", ".nasplat-local",
)
"""Left out of the uploaded working folder (gitignore syntax; Ray also honours .gitignore files)."""

SECRET_PATTERNS: tuple[str, ...] = (
    ".env", ".env.*", "*.pem", "*.key", "*.p12", "*.pfx", "*.jks", "*.keystore", "*.kdbx",
    "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*",
    ".netrc", "_netrc", ".git-credentials", ".pypirc", ".npmrc", ".pgpass", ".htpasswd",
    "credentials.json", "client_secret*.json", "service-account*.json",
    "**/.aws/**", "**/.ssh/**", "**/.gnupg/**", "**/.azure/**", "**/.config/gcloud/**",
    "**/.docker/config.json", "**/.kube/config",
)
"""Files that look like credentials (gitignore syntax): left out of the upload unless ``--include-secret`` names
them."""


@dataclasses.dataclass(frozen=True)
class Upload:
    """The excludes to give Ray for a working folder, and the secret files they leave out (relative paths)."""

    excludes: list[str]
    secrets_left_out: list[str]


def _spec(patterns: Sequence[str]):
    from ray._private.thirdparty.pathspec import PathSpec  # Ray's own matcher for runtime_env excludes

    return PathSpec.from_lines("gitwildmatch", list(patterns))


def _literal(relative: str) -> str:
    """``relative`` as a gitignore pattern that matches that path only, anchored at the folder."""
    escaped = re.sub(r"([\\\[\]*?!#])", r"\\\1", relative)
    return "/" + (escaped[:-1] + "\\ " if escaped.endswith(" ") else escaped)


def secret_files(folder: Path) -> list[str]:
    """The files under ``folder`` (relative, ``/``-separated, sorted) that :data:`SECRET_PATTERNS` match, outside
    the folders that are never uploaded."""
    never, secret = _spec(WORKING_DIR_EXCLUDES), _spec(SECRET_PATTERNS)
    found = []
    for top, dirs, files in os.walk(folder):
        base = Path(top).relative_to(folder).as_posix()
        prefix = "" if base == "." else base + "/"
        dirs[:] = [d for d in dirs if not never.match_file(prefix + d)]
        found += [prefix + f for f in files if not never.match_file(prefix + f) and secret.match_file(prefix + f)]
    return sorted(found)


def select_upload(folder: str | Path, include_secrets: Sequence[str] = ()) -> Upload:
    """What Ray should leave out of ``folder``: the usual excludes and every secret file but those under the paths
    ``include_secrets`` names (relative to the current folder, or absolute). A named path that holds no secret file
    of ``folder`` is an error, so a typo does not pass unnoticed."""
    folder = Path(folder).expanduser().resolve()
    found = secret_files(folder)
    included: set[str] = set()
    for given in include_secrets:
        path = Path(given).expanduser().resolve()
        try:
            relative = path.relative_to(folder).as_posix()
        except ValueError:
            raise ConfigError(f"--include-secret {given}: not inside the uploaded folder {folder}") from None
        chosen = {name for name in found if relative in (".", name) or name.startswith(relative + "/")}
        if not chosen:
            raise ConfigError(f"--include-secret {given}: no file there is left out as a secret (left out: "
                              f"{', '.join(found) or 'none'}); it needs no flag")
        included |= chosen
    left_out = [name for name in found if name not in included]
    excludes = [*WORKING_DIR_EXCLUDES, *SECRET_PATTERNS, *("!" + _literal(name) for name in sorted(included))]
    return Upload(excludes, left_out)


def describe_left_out(names: Sequence[str], shown: int = 10) -> str | None:
    """One line for the user about the secret files left out of the upload, or None when there are none."""
    if not names:
        return None
    listed = ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
    return (f"left out of the uploaded folder as possible secrets: {listed}. Upload one with --include-secret PATH "
            "(repeatable), or pass it to the job another way (--env KEY=VALUE, the cluster's secret store)")
