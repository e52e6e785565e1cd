"""Sharded validation: with 2 workers and 63 validation samples every sample is counted exactly once."""
from __future__ import annotations

import os

import torch
from conftest import spawn_gloo

from nasplat.data.sources import search_data
from nasplat.searching.config import SearchConfig
from nasplat.searching.loop import SupernetSearch
from nasplat.training.metrics import IGNORE_INDEX

CONFIG = dict(image_size=16, train_samples=8, val_samples=63, epochs=1, batch_size=4, workers=2,
              space_options={"C": 2, "layers": 2, "reductions": 1})


def _evaluate(rank: int, out_dir: str) -> None:
    search = SupernetSearch(SearchConfig(**CONFIG))
    result = search.evaluate()
    seen = [int(i) for i in search.loaders["val"].dataset.indices]
    torch.save({"result": result, "seen": seen}, os.path.join(out_dir, f"rank{rank}.pt"))


def test_two_workers_count_each_of_63_validation_samples_once(tmp_path):
    spawn_gloo(_evaluate, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    seen = ranks[0]["seen"] + ranks[1]["seen"]
    assert sorted(seen) == list(range(63))  # disjoint shards covering the split
    data = search_data("synthetic", 16, 8, 63, 0)
    labelled = sum(int((data.val[i][1] != IGNORE_INDEX).sum()) for i in range(63))
    for rank in ranks:
        matrix = torch.tensor(rank["result"]["confusion_matrix"])
        assert int(matrix.sum()) == labelled  # every labelled pixel of the 63 images, none twice
    # the same numbers as one worker evaluating the whole split
    single = SupernetSearch(SearchConfig(**{**CONFIG, "workers": 1})).evaluate()
    assert ranks[0]["result"]["confusion_matrix"] == single["confusion_matrix"]
    assert abs(ranks[0]["result"]["val_loss"] - single["val_loss"]) < 1e-6  # float32 sums in another order

