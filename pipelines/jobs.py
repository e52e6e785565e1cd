"""`nasplat jobs list|status|logs|stop`: the Ray Jobs of a cluster, through Ray's job submission client.

Also the pieces `nasplat submit` shares: the dashboard address, the authentication token and the
client. Ray 2.60 clusters check a token on every dashboard request when token authentication is on
(the default for new clusters): the client sends it as ``Authorization: Bearer <token>``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from nasplat.training.config import ConfigError

DEFAULT_DASHBOARD_PORT = 8265
DEFAULT_ADDRESS = f"http://127.0.0.1:{DEFAULT_DASHBOARD_PORT}"
DEFAULT_TOKEN_FILE = Path("~/.ray/auth_token")
"""Where ``ray get-auth-token --generate`` and ``ray start`` keep the token (Ray's default)."""
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
AUTH_MODE_ENV = "RAY_AUTH_MODE"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
EXIT_STATUS = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 130}
"""Exit status of `nasplat submit` / `nasplat jobs logs --follow` for each terminal job status."""


def default_address() -> str:
    """``RAY_API_SERVER_ADDRESS`` or ``RAY_ADDRESS`` when they hold a dashboard URL, else the local dashboard."""
    for name in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        value = os.environ.get(name, "")
        if value.startswith(("http://", "https://")):
            return value
    return DEFAULT_ADDRESS


def dashboard_url(address: str) -> str:
    """``HOST[:PORT]`` or ``http(s)://HOST[:PORT]`` -> ``http(s)://HOST:PORT`` (port 8265 when left out)."""
    url = address if "://" in address else f"http://{address}"
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"--address must be the Ray dashboard's http://HOST:PORT (default port "
                          f"{DEFAULT_DASHBOARD_PORT}), got {address!r}")
    port = parsed.port or DEFAULT_DASHBOARD_PORT
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    return f"{parsed.scheme}://{host}:{port}"


def is_loopback(address: str) -> bool:
    """True when the dashboard address is this machine."""
    return urlparse(dashboard_url(address)).hostname in LOOPBACK_HOSTS


def _read_token(path: Path, origin: str) -> str:
    try:
        token = path.expanduser().read_text().strip()
    except OSError as err:
        raise ConfigError(f"cannot read the Ray auth token file {path} ({origin}): {err.strerror}") from None
    if not token:
        raise ConfigError(f"the Ray auth token file {path} ({origin}) is empty")
    return token


def resolve_token(address: str, token_file: str | None = None) -> str | None:
    """The token to send, or None. First match wins:

    1. ``--token-file PATH``;
    2. ``RAY_AUTH_TOKEN`` (the token itself);
    3. ``RAY_AUTH_TOKEN_PATH`` (a file holding it);
    4. ``~/.ray/auth_token``, only for a dashboard on this machine or with ``RAY_AUTH_MODE=token``
       (as Ray's own clients do), so a default token is not sent to a cluster nobody named it for.
    """
    if token_file:
        return _read_token(Path(token_file), "--token-file")
    if os.environ.get(TOKEN_ENV, "").strip():
        return os.environ[TOKEN_ENV].strip()
    if os.environ.get(TOKEN_PATH_ENV):
        return _read_token(Path(os.environ[TOKEN_PATH_ENV]), TOKEN_PATH_ENV)
    default = DEFAULT_TOKEN_FILE.expanduser()
    wanted = is_loopback(address) or os.environ.get(AUTH_MODE_ENV, "").lower() == "token"
    if wanted and default.is_file():
        return _read_token(default, "Ray's default token file")
    return None


def auth_headers(token: str | None) -> dict[str, str]:
    """The HTTP header Ray's dashboard checks (ray/_private/authentication/http_token_authentication.py)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def connect(address: str, token_file: str | None = None) -> Any:
    """A ``JobSubmissionClient`` for the dashboard at ``address``, sending the token if there is one."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    url = dashboard_url(address)
    token = resolve_token(address, token_file)
    try:
        client = JobSubmissionClient(url, headers=auth_headers(token))
    except ConnectionError as err:
        raise ConfigError(f"no Ray dashboard answers at {url} ({err}); start the cluster or check --address") from None
    except AuthenticationError:
        raise _refused(url, token is not None) from None
    client.nasplat_token_sent = token is not None
    return client


def _refused(url: str, token_sent: bool) -> ConfigError:
    """The dashboard's 401/403, naming where a token comes from."""
    hint = (
        "it rejected the token sent" if token_sent else
        f"no token was sent: set {TOKEN_ENV}, {TOKEN_PATH_ENV} or --token-file (the cluster's token: "
        "`ray get-auth-token` on the head node)"
    )
    return ConfigError(f"the Ray dashboard at {url} refused the request (token authentication): {hint}")


def call(client: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    """``getattr(client, method)(...)`` with Ray's errors for auth and unknown jobs turned into ConfigError."""
    from ray.exceptions import AuthenticationError

    try:
        return getattr(client, method)(*args, **kwargs)
    except AuthenticationError:
        raise _refused(client.get_address(), getattr(client, "nasplat_token_sent", False)) from None
    except RuntimeError as err:
        text = str(err)
        if args and ("does not exist" in text or "not found" in text.lower()):
            raise ConfigError(f"no such Ray job: {args[0]} ({text.strip()})") from None
        raise


def follow_logs(client: Any, job_id: str, out=None) -> str:
    """Stream the job's logs until it ends; return its final status (``SUCCEEDED``, ``FAILED``, ``STOPPED``)."""
    import asyncio

    out = out or sys.stdout

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    asyncio.run(tail())
    return wait_for_end(client, job_id, poll_s=0.5)


def wait_for_end(client: Any, job_id: str, poll_s: float = 2.0, on_change=None) -> str:
    """Poll the job's status until it is terminal; return it. ``on_change(status)`` sees each new status."""
    last = None
    while True:
        status = str(call(client, "get_job_status", job_id))
        if status != last and on_change is not None:
            on_change(status)
        last = status
        if status in EXIT_STATUS:
            return status
        time.sleep(poll_s)


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    """``--address`` and ``--token-file``, shared by `nasplat submit` and `nasplat jobs`."""
    parser.add_argument("--address", default=None, metavar="URL",
                        help="the Ray dashboard, http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS or RAY_ADDRESS "
                        f"when they are http URLs, else {DEFAULT_ADDRESS})")
    parser.add_argument("--token-file", default=None, metavar="PATH",
                        help=f"file holding the cluster's auth token (default: {TOKEN_ENV}, then {TOKEN_PATH_ENV}, "
                        f"then ~/.ray/auth_token for a dashboard on this machine or with {AUTH_MODE_ENV}=token)")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "jobs", help="list, inspect, follow or stop the Ray Jobs of a cluster",
        description="Ray Jobs on the cluster whose dashboard is --address (as submitted by `nasplat submit`).",
    )
    actions = parser.add_subparsers(dest="jobs_command", required=True)
    listing = actions.add_parser("list", help="every job: id, status, start time, entrypoint")
    add_connection_args(listing)
    for name, text in (("status", "a job's status and message"), ("stop", "stop a running job")):
        action = actions.add_parser(name, help=text)
        add_connection_args(action)
        action.add_argument("job_id", help="the submission id `nasplat submit` printed (raysubmit_...)")
    logs = actions.add_parser("logs", help="a job's logs (its entrypoint's output)")
    add_connection_args(logs)
    logs.add_argument("job_id", help="the submission id `nasplat submit` printed (raysubmit_...)")
    logs.add_argument("--follow", action="store_true", help="keep streaming until the job ends; exit with its status")
    parser.set_defaults(handler=run_jobs)


def _started(job: Any) -> str:
    if not getattr(job, "start_time", None):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.start_time / 1000))


def format_jobs(jobs: list[Any]) -> str:
    """One line per job, newest first."""
    jobs = sorted(jobs, key=lambda j: getattr(j, "start_time", 0) or 0, reverse=True)
    rows = [("JOB ID", "STATUS", "STARTED", "ENTRYPOINT")]
    rows += [(j.submission_id or j.job_id or "-", str(j.status), _started(j), j.entrypoint) for j in jobs]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows)


def run_jobs(args: argparse.Namespace) -> int:
    client = connect(args.address or default_address(), args.token_file)
    if args.jobs_command == "list":
        print(format_jobs(call(client, "list_jobs")))
        return 0
    if args.jobs_command == "status":
        info = call(client, "get_job_info", args.job_id)
        print(f"{args.job_id}: {info.status}" + (f" ({info.message})" if info.message else ""))
        return 0
    if args.jobs_command == "stop":
        stopped = call(client, "stop_job", args.job_id)
        print(f"{args.job_id}: " + ("stop requested" if stopped else "not running"))
        return 0
    if args.follow:
        try:
            status = follow_logs(client, args.job_id)
        except KeyboardInterrupt:
            print(f"\n[nasplat] stopped following; the job keeps running (nasplat jobs stop {args.job_id})", file=sys.stderr)
            return 130
        print(f"[nasplat] job {args.job_id} {status}", file=sys.stderr)
        return EXIT_STATUS[status]
    sys.stdout.write(call(client, "get_job_logs", args.job_id))
    return 0
