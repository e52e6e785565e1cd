"""`nasplat export`: models logged to a temporary SQLite MLflow store, exported, reloaded and compared."""
import pytest
import torch
from torch import nn

import nasplat
from pipelines.cli import main
from pipelines.export import ExportMismatch, export_and_check, run_exported
from search_spaces.darts import DARTS_V2

SIZE = 32


def small_darts() -> nn.Module:
    torch.manual_seed(0)
    net = nasplat.get_space("darts").build(DARTS_V2, num_classes=3, C=4, layers=3, head_channels=8)
    # non-trivial BN statistics, so eval mode differs from train mode
    with torch.no_grad():
        net.train()
        net(torch.randn(4, 3, SIZE, SIZE))
    return net.eval()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite store with a retrain-like layout: a trial run holding the model, a parent run pointing to it
    with the nasplat.model_run tag, and a run without any model."""
    import mlflow
    import mlflow.pytorch
    from mlflow.models import infer_signature

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("export-test", artifact_location=(root / "artifacts").as_uri())
    model = small_darts()
    example = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        signature = infer_signature(example.numpy(), model(example).numpy())
    with mlflow.start_run(experiment_id=experiment, run_name="parent") as parent:
        with mlflow.start_run(experiment_id=experiment, run_name="trial", nested=True) as trial:
            mlflow.pytorch.log_model(  # as pipelines/retrain.py logs it (pt2, the MLflow 3 default format)
                model, name="model", input_example=example.numpy(), signature=signature,
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            )
        mlflow.set_tag("nasplat.model_run", trial.info.run_id)
    with mlflow.start_run(experiment_id=experiment, run_name="search-like") as empty:
        mlflow.log_metric("val_miou", 0.5)
    mlflow.set_tracking_uri(None)
    return {"uri": uri, "parent": parent.info.run_id, "trial": trial.info.run_id, "empty": empty.info.run_id,
            "model": model}


@pytest.mark.slow  # MLflow store + torch.export of the logged model (pt2)
def test_export_onnx_from_parent_run_matches_pytorch(store, tmp_path, capsys):
    import onnx

    out = tmp_path / "net.onnx"
    status = main(["export", "--run", store["parent"], "--format", "onnx", "--out", str(out),
                   "--tracking-uri", store["uri"]])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert store["trial"] in printed  # the tag was followed to the run holding the model
    onnx.checker.check_model(onnx.load(str(out)))
    x = torch.randn(1, 3, SIZE, SIZE)  # an input the command never saw
    with torch.inference_mode():
        expected = store["model"](x)
    assert torch.allclose(run_exported("onnx", out, x), expected, atol=1e-4, rtol=1e-3)
    assert "max |onnx - PyTorch|" in printed


@pytest.mark.slow  # MLflow store + torch.export of the logged model (pt2)
def test_export_torchscript_from_model_run_matches_pytorch(store, tmp_path, capsys):
    out = tmp_path / "net.pt"
    status = main(["export", "--run", store["trial"], "--format", "torchscript", "--out", str(out),
                   "--tracking-uri", store["uri"]])
    assert status == 0, capsys.readouterr()
    module = torch.jit.load(str(out))
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.inference_mode():
        assert torch.allclose(module(x), store["model"](x), atol=1e-4, rtol=1e-3)


@pytest.mark.slow  # MLflow store + torch.export of the logged model (pt2)
def test_run_without_model_names_the_run(store, capsys):
    assert main(["export", "--run", store["empty"], "--tracking-uri", store["uri"]]) == 2
    err = capsys.readouterr().err
    assert f"run {store['empty']} (search-like) holds no logged model" in err
    assert main(["export", "--run", "0" * 32, "--tracking-uri", store["uri"]]) == 2
    assert "no MLflow run '" + "0" * 32 in capsys.readouterr().err


@pytest.mark.slow  # MLflow store + torch.export of the logged model (pt2)
def test_out_of_tolerance_exits_1(store, tmp_path, capsys, monkeypatch):
    from pipelines import export

    def perturbed(fmt, path, x):
        return run_exported(fmt, path, x) + 0.1

    monkeypatch.setattr(export, "run_exported", perturbed)
    out = tmp_path / "bad.pt"
    assert main(["export", "--run", store["trial"], "--format", "torchscript", "--out", str(out),
                 "--tracking-uri", store["uri"]]) == 1
    assert "exceeds the tolerance" in capsys.readouterr().err


class _CountingModel(nn.Module):
    """Output depends on Python state (calls so far), which tracing freezes: the traced copy is wrong."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x * self.calls


def test_check_catches_a_wrong_export(tmp_path):
    with pytest.raises(ExportMismatch, match="exceeds the tolerance"):
        export_and_check(_CountingModel(), "torchscript", tmp_path / "counting.pt", (4, 4))
    # a faithful export passes with a tight tolerance
    conv = nn.Conv2d(3, 2, 3, padding=1).eval()
    export_and_check(conv, "torchscript", tmp_path / "conv.pt", (8, 8), atol=1e-6, rtol=0.0)
    x = torch.randn(1, 3, 8, 8)
    with torch.inference_mode():
        assert torch.allclose(run_exported("torchscript", tmp_path / "conv.pt", x), conv(x), atol=1e-6, rtol=0.0)


def test_icnet_exports_to_onnx(tmp_path):
    """Pyramid pooling (adaptive bins 1/2/3/6 on a non-divisible map) and the cascade resizes survive ONNX."""
    import onnxruntime  # noqa: F401  (the check runs the file in ONNX Runtime)

    torch.manual_seed(0)
    model = nasplat.get_model("icnet", num_classes=5, aux=False).eval()
    export_and_check(model, "onnx", tmp_path / "icnet.onnx", (96, 192))
    x = torch.randn(1, 3, 96, 192)  # an input the check never saw
    with torch.inference_mode():
        expected = model(x)
    exported = run_exported("onnx", tmp_path / "icnet.onnx", x)
    assert exported.shape == (1, 5, 96, 192)
    assert torch.allclose(exported, expected, atol=1e-4, rtol=1e-3 * float(expected.abs().max()))
