"""ConfusionMatrix: cityscapesScripts mIoU conventions (REFERENCES.md section 6).

IoU_c = TP / (TP + FP + FN); GT 255 is dropped (void GT is never a false positive); a class with a
zero denominator is NaN and left out of the mean. Rows = ground truth, columns = prediction.
"""
import math
import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nasplat import IGNORE_INDEX, ConfusionMatrix

# ---- the hand-worked example used below (3 classes) ------------------------------------------
# GT      Pred
# 0 0 1   0 1 1
# 1 2 255 2 2 0
# pixels: (gt0,p0) (gt0,p1) (gt1,p1) (gt1,p2) (gt2,p2) and (gt255,p0) which is ignored.
# CM (rows GT, cols pred):   [[1,1,0],[0,1,1],[0,0,1]]
# class 0: TP 1, FP 0 (the void pixel predicted 0 is not an FP), FN 1 -> 1/2   (1/3 if void counted)
# class 1: TP 1, FP 1 (gt0->1), FN 1 (gt1->2)                          -> 1/3
# class 2: TP 1, FP 1 (gt1->2), FN 0                                   -> 1/2
# mIoU = (1/2 + 1/3 + 1/2) / 3 = 4/9; pixel accuracy = 3/5


GT = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
PRED = torch.tensor([[[0, 1, 1], [2, 2, 0]]])
HAND_MATRIX = [[1, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_ignore_index_is_255():
    assert IGNORE_INDEX == 255


def test_hand_example_matrix_iou_miou():
    cm = ConfusionMatrix(3)
    cm.update(PRED, GT)
    assert cm.matrix.tolist() == HAND_MATRIX
    iou = cm.iou().tolist()
    assert iou == pytest.approx([1 / 2, 1 / 3, 1 / 2])
    assert cm.miou() == pytest.approx(4 / 9)
    assert cm.pixel_accuracy() == pytest.approx(3 / 5)


def test_void_gt_is_never_a_false_positive():
    # every void pixel predicted as class 1 must change nothing
    gt = torch.tensor([0, 1, 255, 255, 255])
    pred = torch.tensor([0, 1, 1, 1, 0])
    cm = ConfusionMatrix(2)
    cm.update(pred, gt)
    assert cm.matrix.tolist() == [[1, 0], [0, 1]]
    assert cm.iou().tolist() == [1.0, 1.0]
    assert cm.miou() == 1.0


def test_all_void_batch_adds_nothing():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1, 2]), torch.tensor([255, 255, 255]))
    assert int(cm.matrix.sum()) == 0
    assert all(math.isnan(v) for v in cm.iou().tolist())
    assert math.isnan(cm.miou())
    assert math.isnan(cm.pixel_accuracy())


def test_class_absent_from_gt_and_prediction_is_nan_and_excluded():
    cm = ConfusionMatrix(4)  # class 3 appears nowhere
    cm.update(PRED, GT)
    iou = cm.iou().tolist()
    assert iou[:3] == pytest.approx([1 / 2, 1 / 3, 1 / 2])
    assert math.isnan(iou[3])
    assert cm.miou() == pytest.approx(4 / 9)  # not (4/3)/4 = 1/3


def test_class_only_in_predictions_has_iou_zero_and_counts():
    # GT [0,0,0,1], pred [0,3,1,1], 4 classes
    # gt0: p0, p3, p1; gt1: p1
    # class 0: TP 1, FN 2, FP 0 -> 1/3
    # class 1: TP 1, FN 0, FP 1 -> 1/2
    # class 2: absent -> NaN
    # class 3: TP 0, FP 1, FN 0 -> 0 (counts)
    # mIoU = (1/3 + 1/2 + 0) / 3 = 5/18
    cm = ConfusionMatrix(4)
    cm.update(torch.tensor([0, 3, 1, 1]), torch.tensor([0, 0, 0, 1]))
    iou = cm.iou().tolist()
    assert iou[0] == pytest.approx(1 / 3)
    assert iou[1] == pytest.approx(1 / 2)
    assert math.isnan(iou[2])
    assert iou[3] == 0.0
    assert cm.miou() == pytest.approx(5 / 18)


def test_class_only_in_gt_has_iou_zero():
    # GT [0,2], pred [0,0]: class 2 TP 0, FN 1 -> 0; class 0 TP 1 FP 1 -> 1/2; class 1 NaN
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 0]), torch.tensor([0, 2]))
    iou = cm.iou().tolist()
    assert iou[0] == pytest.approx(0.5) and math.isnan(iou[1]) and iou[2] == 0.0
    assert cm.miou() == pytest.approx(0.25)


def _reference_matrix(pred, gt, n):
    """Independent pure-Python confusion matrix."""
    m = [[0] * n for _ in range(n)]
    for p, g in zip(pred.reshape(-1).tolist(), gt.reshape(-1).tolist()):
        if g != 255:
            m[g][p] += 1
    return m


def _random_batch(gen, n=5, shape=(2, 6, 7)):
    gt = torch.randint(0, n, shape, generator=gen)
    gt[torch.rand(shape, generator=gen) < 0.2] = 255
    pred = torch.randint(0, n, shape, generator=gen)
    return pred, gt


def test_random_batch_matches_independent_count_and_formula():
    gen = torch.Generator().manual_seed(0)
    pred, gt = _random_batch(gen)
    cm = ConfusionMatrix(5)
    cm.update(pred, gt)
    ref = _reference_matrix(pred, gt, 5)
    assert cm.matrix.tolist() == ref
    for c in range(5):
        tp = ref[c][c]
        fp = sum(ref[g][c] for g in range(5)) - tp
        fn = sum(ref[c]) - tp
        assert cm.iou()[c].item() == pytest.approx(tp / (tp + fp + fn))


def test_accumulating_two_batches_equals_one_concatenated_batch():
    gen = torch.Generator().manual_seed(1)
    p1, g1 = _random_batch(gen)
    p2, g2 = _random_batch(gen)
    two = ConfusionMatrix(5)
    two.update(p1, g1)
    two.update(p2, g2)
    one = ConfusionMatrix(5)
    one.update(torch.cat([p1, p2]), torch.cat([g1, g2]))
    assert torch.equal(two.matrix, one.matrix)
    assert two.matrix.tolist() == _reference_matrix(torch.cat([p1, p2]), torch.cat([g1, g2]), 5)
    assert two.miou() == pytest.approx(one.miou())
    a, b = ConfusionMatrix(5), ConfusionMatrix(5)
    a.update(p1, g1)
    b.update(p2, g2)
    assert torch.equal(two.matrix, a.matrix + b.matrix)


def test_reset():
    cm = ConfusionMatrix(3)
    cm.update(PRED, GT)
    cm.reset()
    assert int(cm.matrix.sum()) == 0
    cm.update(PRED, GT)
    assert cm.matrix.tolist() == HAND_MATRIX


def test_logits_are_argmaxed_over_the_class_dim():
    # logits [N, C, H, W] whose argmax over C is PRED; make the max NOT at the same place on other dims
    n, h, w = PRED.shape
    logits = torch.full((n, 3, h, w), -1.0)
    logits.scatter_(1, PRED.unsqueeze(1), 2.0)
    # add a large constant along H so an argmax over the wrong dim would differ
    logits = logits + torch.arange(h).view(1, 1, h, 1) * 10.0
    cm = ConfusionMatrix(3)
    cm.update(logits, GT)
    assert cm.matrix.tolist() == HAND_MATRIX
    assert cm.miou() == pytest.approx(4 / 9)


def test_uint8_targets_with_255_work():
    cm = ConfusionMatrix(3)
    cm.update(PRED.to(torch.uint8), GT.to(torch.uint8))
    assert cm.matrix.tolist() == HAND_MATRIX


@pytest.mark.parametrize("bad", [3, 7, 254, -1])
def test_out_of_range_target_raises_naming_the_value(bad):
    cm = ConfusionMatrix(3)
    gt = torch.tensor([0, 1, bad, 255])
    with pytest.raises(ValueError) as info:
        cm.update(torch.tensor([0, 1, 2, 0]), gt)
    assert str(bad) in str(info.value)
    assert int(cm.matrix.sum()) == 0  # nothing partially added


def test_out_of_range_prediction_raises():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError):
        cm.update(torch.tensor([0, 5]), torch.tensor([0, 1]))


def test_shape_mismatch_raises():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError):
        cm.update(torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError):
        cm.update(torch.zeros(1, 3, 4, 5), torch.zeros(1, 4, 4, dtype=torch.long))


def test_bad_num_classes():
    with pytest.raises(ValueError):
        ConfusionMatrix(0)


def test_all_reduce_is_noop_without_process_group():
    assert not (dist.is_available() and dist.is_initialized())
    cm = ConfusionMatrix(3)
    cm.update(PRED, GT)
    cm.all_reduce()
    assert cm.matrix.tolist() == HAND_MATRIX


# ---- two gloo workers ------------------------------------------------------------------------


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dist_data():
    gen = torch.Generator().manual_seed(42)
    return [_random_batch(gen, n=4, shape=(3, 5, 6)) for _ in range(2)]


def _worker(rank, world, port, outdir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        pred, gt = _dist_data()[rank]
        cm = ConfusionMatrix(4)
        cm.update(pred, gt)
        cm.all_reduce()
        torch.save({"matrix": cm.matrix.clone(), "miou": cm.miou()}, os.path.join(outdir, f"rank{rank}.pt"))
        dist.barrier()  # no rank tears gloo down while the other still communicates
    finally:
        dist.destroy_process_group()


def test_all_reduce_sums_across_two_gloo_workers():
    data = _dist_data()
    single = ConfusionMatrix(4)
    for pred, gt in data:
        single.update(pred, gt)
    # the two halves differ, so summing is observable
    halves = [ConfusionMatrix(4) for _ in data]
    for cm, (pred, gt) in zip(halves, data):
        cm.update(pred, gt)
    assert not torch.equal(halves[0].matrix, single.matrix)

    with tempfile.TemporaryDirectory() as outdir:
        mp.spawn(_worker, args=(2, _free_port(), outdir), nprocs=2, join=True)
        results = [torch.load(os.path.join(outdir, f"rank{r}.pt")) for r in range(2)]
    expected = _reference_matrix(torch.cat([d[0] for d in data]), torch.cat([d[1] for d in data]), 4)
    for res in results:
        assert res["matrix"].tolist() == expected
        assert res["matrix"].tolist() == single.matrix.tolist()
        assert res["miou"] == pytest.approx(single.miou())
