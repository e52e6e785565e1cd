"""`nasplat submit`: run any nasplat command on a Ray cluster as a Ray Job.

The job's entrypoint is ``nasplat <command> ...``. Its runtime environment carries the project (the
working directory, zipped and uploaded by Ray, minus virtual environments, tracking stores, run
folders, .git and files that look like secrets: see :mod:`pipelines.upload`) and/or pip packages,
plus the MLflow tracking URI, which is passed to the command as ``--tracking-uri`` so the job records
into the store the user reads. The search (and retrain) parent run gets the job's submission id as
the tag ``nasplat.ray_job_id`` (see ``nasplat.tracking.runs.ray_job_tags``).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from nasplat.training.config import ConfigError
from pipelines.jobs import EXIT_STATUS, add_connection_args, call, connect, default_address, follow_logs, is_loopback, wait_for_end
from pipelines.upload import WORKING_DIR_EXCLUDES, describe_left_out, select_upload

LOCAL_STORES = ("sqlite:", "file:")


def _log(message: str) -> None:
    print(f"[nasplat] {message}", file=sys.stderr, flush=True)


def command_options(command: str) -> set[str]:
    """The option strings (``--tracking-uri`` ...) the nasplat subcommand ``command`` accepts."""
    from pipelines.cli import build_parser

    parser = build_parser()
    for action in parser._subparsers._group_actions:  # argparse keeps subcommands here
        if command in action.choices:
            return {flag for sub in action.choices[command]._actions for flag in sub.option_strings}
    raise ConfigError(f"nasplat submit: unknown nasplat command {command!r} after '--'")


def _option_value(args: Sequence[str], flag: str) -> str | None:
    """The value given to ``flag`` in ``args`` (``--flag V`` or ``--flag=V``), last one wins."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def _given(command: Sequence[str], flag: str) -> str | None:
    """The value of ``flag`` in the command, else of its key in the command's ``--config`` file, else None."""
    value = _option_value(command, flag)
    config_file = _option_value(command, "--config")
    if value is None and config_file and Path(config_file).is_file():
        from nasplat.training.config import load_config_file

        value = load_config_file(config_file).get(flag[2:].replace("-", "_"))
    return None if value is None else str(value)


def _set_option(command: list[str], flag: str, value: str) -> list[str]:
    """``command`` without any ``flag`` given in it, then ``flag value`` at the end."""
    kept: list[str] = []
    skip = False
    for arg in command:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            kept.append(arg)
    return [*kept, flag, value]


def job_command(command: Sequence[str], tracking_uri: str | None, address: str) -> list[str]:
    """The nasplat command line the job runs, with the tracking URI and storage made absolute here.

    The job runs in a temporary copy of the working directory on the head node, so relative paths
    would land there. The tracking URI is ``--tracking-uri`` of submit, else the one in the
    command, else the local default; a relative SQLite path is made absolute on this machine. A
    local store (``sqlite:`` / ``file:``) or storage folder only works when the cluster runs on
    this machine: otherwise it is warned about.
    """
    from nasplat.tracking.uri import resolve_tracking_uri

    command = list(command)
    if command and command[0] == "--":
        command = command[1:]
    if command and command[0] == "nasplat":
        command = command[1:]
    if not command:
        raise ConfigError("nasplat submit: give the nasplat command to run after '--', e.g. -- search --epochs 3")
    options = command_options(command[0])
    local = is_loopback(address)
    if "--tracking-uri" in options:
        given = tracking_uri or _given(command, "--tracking-uri") or os.environ.get("MLFLOW_TRACKING_URI")
        if given is None and not local:
            _log("note: no --tracking-uri: the job records to the cluster's MLFLOW_TRACKING_URI if its nodes set "
                 "one, else to a SQLite file in its temporary folder on the head node")
        else:
            uri = resolve_tracking_uri(given)
            if uri.startswith(LOCAL_STORES) and not local:
                _log(f"warning: the MLflow store {uri} is a file on this machine, but the cluster at {address} is "
                     "not: the job would write to the head node's disk. Pass --tracking-uri http://MLFLOW_HOST:5000 "
                     "(an `mlflow server` every node can reach).")
            command = _set_option(command, "--tracking-uri", uri)
    if "--storage" in options:
        storage = _given(command, "--storage")
        if storage is None and not local:
            _log("warning: no --storage given: checkpoints would go to the job's temporary folder on the head "
                 "node. Pass --storage s3://BUCKET/PREFIX or a folder every node mounts (NFS).")
        elif local and (storage is None or "://" not in storage):
            command = _set_option(command, "--storage", str(Path(storage or "nasplat_runs").expanduser().resolve()))
    return ["nasplat", *command]


def runtime_env(working_dir: str | None, pip: Sequence[str], env: dict[str, str],
                include_secrets: Sequence[str] = ()) -> tuple[dict[str, Any], list[str]]:
    """The job's runtime environment (the project folder and/or pip packages, and environment variables), and the
    secret files of the folder it leaves out (all but those under ``include_secrets``)."""
    result: dict[str, Any] = {}
    left_out: list[str] = []
    if working_dir is not None:
        folder = Path(working_dir).expanduser().resolve()
        if not folder.is_dir():
            raise FileNotFoundError(f"--working-dir {working_dir}: no such directory")
        upload = select_upload(folder, include_secrets)
        result["working_dir"] = str(folder)
        result["excludes"] = upload.excludes
        left_out = upload.secrets_left_out
    elif include_secrets:
        raise ConfigError("--include-secret: no folder is uploaded (--pip without --working-dir)")
    if pip:
        result["pip"] = list(pip)
    if env:
        result["env_vars"] = dict(env)
    return result, left_out


def _parse_env(items: Sequence[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--env expects KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "submit", help="run a nasplat command on a Ray cluster as a Ray Job",
        description="Submit `nasplat COMMAND ARGS...` to the Ray cluster whose dashboard is --address, print the "
        "job id, and wait for the job (default), stream its logs (--follow) or return at once (--no-wait). "
        "Example: nasplat submit --address http://HEAD:8265 --tracking-uri http://MLFLOW:5000 -- search --epochs 3",
    )
    add_connection_args(parser)
    parser.add_argument("--working-dir", default=None, metavar="DIR",
                        help="project folder uploaded with the job (default: the current folder, unless --pip or "
                        "--pin-installed is given); leaves out " + ", ".join(WORKING_DIR_EXCLUDES)
                        + " and files that look like secrets (.env, *.pem, *.key, id_rsa*, .aws/, .ssh/, .netrc ...)")
    parser.add_argument("--include-secret", action="append", default=[], metavar="PATH",
                        help="upload this file (or the secret files under this folder) although it looks like a "
                        "secret; repeatable")
    parser.add_argument("--pip", action="append", default=[], metavar="PKG",
                        help="pip requirement installed for the job, repeatable (e.g. nasplat==0.1.0, or a wheel URL)")
    parser.add_argument("--pin-installed", action="store_true",
                        help="add nasplat==<the version installed here> to --pip")
    parser.add_argument("--tracking-uri", default=None, metavar="URI",
                        help="MLflow store for the job (default: the command's --tracking-uri or config file, else "
                        "MLFLOW_TRACKING_URI here; else, for a cluster on this machine, sqlite:///<cwd>/mlflow.db, "
                        "for a remote one the nodes' MLFLOW_TRACKING_URI)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment variable for the job, repeatable")
    parser.add_argument("--submission-id", default=None, help="job id to use (default: Ray picks raysubmit_...)")
    wait = parser.add_mutually_exclusive_group()
    wait.add_argument("--follow", action="store_true", help="stream the job's logs; exit with its status")
    wait.add_argument("--no-wait", action="store_true", help="return as soon as the job is submitted")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND ARGS",
                        help="the nasplat command to run, after '--'")
    parser.set_defaults(handler=run_submit)


def run_submit(args: argparse.Namespace) -> int:
    address = args.address or default_address()
    command = job_command(args.command, args.tracking_uri, address)
    pip = list(args.pip)
    if args.pin_installed:
        import importlib.metadata

        pip.append(f"nasplat=={importlib.metadata.version('nasplat')}")
    working_dir = args.working_dir if (args.working_dir or pip) else "."
    env, left_out = runtime_env(working_dir, pip, _parse_env(args.env), args.include_secret)
    if (note := describe_left_out(left_out)) is not None:
        _log(note)
    client = connect(address, args.token_file)
    entrypoint = shlex.join(command)
    job_id = call(client, "submit_job", entrypoint=entrypoint, runtime_env=env, submission_id=args.submission_id)
    print(job_id, flush=True)
    _log(f"submitted `{entrypoint}` as Ray job {job_id}")
    if args.no_wait:
        _log(f"follow it with: nasplat jobs logs {job_id} --follow --address {address}")
        return 0
    try:
        if args.follow:
            status = follow_logs(client, job_id)
        else:
            status = wait_for_end(client, job_id, on_change=lambda s: _log(f"job {job_id}: {s}"))
    except KeyboardInterrupt:
        _log(f"stopped waiting; the job keeps running (nasplat jobs stop {job_id} --address {address})")
        return 130
    if status != "SUCCEEDED":
        info = call(client, "get_job_info", job_id)
        _log(f"job {job_id} {status}" + (f": {info.message}" if info.message else ""))
    else:
        _log(f"job {job_id} {status}")
    return EXIT_STATUS[status]
