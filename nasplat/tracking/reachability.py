"""Whether a tracking server answers, asked before MLflow is imported; URIs and errors as messages show them."""
from __future__ import annotations

import re

from nasplat.tracking.uri import mask_credentials
from nasplat.training.config import ConfigError

ANSWER_TIMEOUT_S = 5.0
"""How long a reading command waits for a tracking server's health endpoint (to connect, then to read)."""


def shown_uri(uri: str) -> str:
    """``uri`` with any user name and password replaced by ``***``, for messages."""
    return mask_credentials(uri)


def brief_error(error: BaseException) -> str:
    """The operating system's reason inside an HTTP client's long error text (``Connection refused``), else the
    text, shortened."""
    text = str(error)
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if found:
        return found.group(1).strip()
    if "timed out" in text.lower():
        return "timed out"
    return text if len(text) <= 200 else text[:200] + "..."


def check_answers(tracking_uri: str, timeout: float = ANSWER_TIMEOUT_S) -> None:
    """ConfigError naming the URI unless the tracking server of an http(s) URI answers ``GET /health`` within
    ``timeout`` s (any answer below 500 counts: a proxy asking for a login still answers). Other stores pass."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import requests  # MLflow's own HTTP client

    try:
        response = requests.get(tracking_uri.rstrip("/") + "/health", timeout=timeout)
    except requests.RequestException as err:
        problem = f"no answer within {timeout:g} s" if isinstance(err, requests.Timeout) else brief_error(err)
        raise ConfigError(f"MLflow tracking server at {shown_uri(tracking_uri)} does not answer ({problem}); "
                          "check --tracking-uri and that the server is running") from None
    if response.status_code >= 500:
        raise ConfigError(f"MLflow tracking server at {shown_uri(tracking_uri)} does not answer (its health check "
                          f"returned HTTP {response.status_code}); check that the server is running")
