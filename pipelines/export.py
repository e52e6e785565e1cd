"""``nasplat export``: a model logged in MLflow, written as ONNX or TorchScript and checked against PyTorch.

A retrain run holds its model as an MLflow logged model (``mlflow.pytorch.log_model(model,
name="model")``, MLflow 3's default pt2 format); a retrain parent run names the run holding the
model in the tag ``nasplat.model_run`` (``pipelines.retrain.MODEL_RUN_TAG``), which is followed
when the given run holds no model itself.
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from nasplat.training.config import ConfigError, ExperimentConfig

if TYPE_CHECKING:
    import torch
    from torch import nn

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
DEFAULT_SIZE = (512, 1024)
DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3


class ExportMismatch(RuntimeError):
    """The exported model's output differs from PyTorch's by more than the tolerance."""


def add_parser(subparsers) -> None:
    """Register the ``export`` subcommand."""
    parser = subparsers.add_parser(
        "export", help="write a logged model as ONNX or TorchScript and check it against PyTorch",
        description="Load the model logged in an MLflow run (or in the run named by its nasplat.model_run tag), "
        "export it for a fixed input size with batch 1, run the exported file (ONNX Runtime, or the "
        "TorchScript module) and PyTorch on the same random input, print the largest absolute difference and "
        "exit with status 1 when it exceeds atol + rtol * max|PyTorch output|.",
    )
    parser.add_argument("--run", required=True, metavar="RUN_ID", help="MLflow run id: a retrain run or its parent")
    parser.add_argument("--format", choices=tuple(FORMATS), default="onnx", help="output format")
    parser.add_argument("--out", help="output file (default: ./<model run id>.onnx or .pt)")
    parser.add_argument("--tracking-uri", help=ExperimentConfig.help_texts()["tracking_uri"])
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                        help="input height and width (default: the logged signature's, else 512 1024)")
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL, help="absolute tolerance")
    parser.add_argument("--rtol", type=float, default=DEFAULT_RTOL,
                        help="tolerance relative to the largest PyTorch output magnitude")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random check input")
    parser.set_defaults(handler=run_export)


# ------------------------------------------------------------------------------------------ finding the model


def signature_size(model_uri: str) -> tuple[int, int] | None:
    """Height and width of the logged input signature when they are fixed, else None."""
    from mlflow.models import get_model_info

    signature = get_model_info(model_uri).signature
    if signature is None or signature.inputs is None or not signature.inputs.inputs:
        return None
    shape = getattr(signature.inputs.inputs[0], "shape", None)
    if shape is None or len(shape) != 4 or min(shape[2:]) < 1:
        return None
    return int(shape[2]), int(shape[3])


# ------------------------------------------------------------------------------------------ export and check


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """``torch.onnx.export`` (the dynamo exporter, onnxscript) for the example's fixed shape."""
    import torch

    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    with warnings.catch_warnings():
        # a torch.export module (MLflow's pt2 format) reports training=True, but its graph was captured in eval mode
        warnings.filterwarnings("ignore", message="Exporting a model while it is in training mode")
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=["image"],
                                    output_names=["logits"], verbose=False)
    program.save(str(path), external_data=param_bytes > 2**31 - 2**26)  # the protobuf limit is 2 GiB


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """``torch.jit.trace`` on the example (eval mode), saved with ``torch.jit.save``.

    PyTorch deprecates TorchScript in favour of ``torch.export``; its deprecation and tracer
    warnings are silenced here (the docs say so). Traced shapes are fixed to the example's.
    """
    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(path))


def run_exported(fmt: str, path: Path, x: torch.Tensor) -> torch.Tensor:
    """Run the written file on ``x``: ONNX Runtime (CPU) or ``torch.jit.load``."""
    import torch

    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (output,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        return torch.from_numpy(output)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        return module(x)


def export_and_check(model: nn.Module, fmt: str, path: Path, size: tuple[int, int], seed: int = 0,
                     atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL) -> dict[str, float]:
    """Export ``model`` (moved to CPU, eval mode) for input ``[1,3,H,W]``, then compare on a second,
    independent random input. Returns ``max_abs_diff``, ``max_abs_ref`` and ``tolerance``
    (``atol + rtol * max_abs_ref``); raises ExportMismatch above the tolerance (the file is kept)."""
    import torch

    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {list(FORMATS)}, got {fmt!r}")
    try:
        model = model.cpu().eval()
    except NotImplementedError:  # a torch.export module (MLflow's pt2 format): loaded on the CPU, mode fixed at export
        pass
    generator = torch.Generator().manual_seed(seed)
    example, check = (torch.randn(1, 3, *size, generator=generator) for _ in range(2))
    path.parent.mkdir(parents=True, exist_ok=True)
    (export_onnx if fmt == "onnx" else export_torchscript)(model, example, path)
    with torch.inference_mode():
        reference = model(check)
    exported = run_exported(fmt, path, check)
    if exported.shape != reference.shape:
        raise ExportMismatch(f"{path}: output shape {tuple(exported.shape)}, PyTorch gives {tuple(reference.shape)}")
    result = {
        "max_abs_diff": float((exported.float() - reference.float()).abs().max()),
        "max_abs_ref": float(reference.abs().max()),
    }
    result["tolerance"] = atol + rtol * result["max_abs_ref"]
    if not result["max_abs_diff"] <= result["tolerance"]:  # also catches NaN
        raise ExportMismatch(
            f"{path}: max |{fmt} - PyTorch| = {result['max_abs_diff']:.3g} exceeds the tolerance "
            f"{result['tolerance']:.3g} (atol {atol:g} + rtol {rtol:g} x max |PyTorch| {result['max_abs_ref']:.3g})"
        )
    return result


def run_export(args: argparse.Namespace) -> int:
    """The ``export`` command; returns 0, or 1 when the exported output is out of tolerance."""
    import importlib.util
    import sys

    import mlflow.pytorch
    from mlflow.exceptions import MlflowException
    from nasplat.tracking.queries import logged_model
    from nasplat.tracking.uri import existing_store_uri

    if args.format == "onnx":
        missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
        if missing:
            raise ConfigError(f"--format onnx needs {', '.join(missing)}: pip install 'nasplat[export]'")
    uri = existing_store_uri(args.tracking_uri)
    model_id, model_run = logged_model(uri, args.run)
    model_uri = f"models:/{model_id}"
    mlflow.set_tracking_uri(uri)
    size = tuple(args.size) if args.size else signature_size(model_uri) or DEFAULT_SIZE
    out = Path(args.out or f"{model_run}{FORMATS[args.format]}").expanduser().resolve()
    print(f"[nasplat] loading {model_uri} (run {model_run}) from {uri}")
    try:
        model = mlflow.pytorch.load_model(model_uri, map_location="cpu")
    except MlflowException as err:
        if "pickle" not in err.message:
            raise
        raise ConfigError(
            f"the model of run {model_run} is saved with pickle, which MLflow refuses to load by default; "
            "if you trust this store, set MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true and run again"
        ) from None
    try:
        result = export_and_check(model, args.format, out, size, args.seed, args.atol, args.rtol)
    except ExportMismatch as err:
        print(f"nasplat: error: {err}", file=sys.stderr)
        return 1
    print(f"[nasplat] {args.format} model for input 1x3x{size[0]}x{size[1]} written to {out}")
    print(f"[nasplat] check on a random input: max |{args.format} - PyTorch| = {result['max_abs_diff']:.3g} "
          f"<= tolerance {result['tolerance']:.3g} (max |PyTorch| {result['max_abs_ref']:.3g})")
    return 0
