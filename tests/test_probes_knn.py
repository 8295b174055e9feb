"""The probes' classifiers, metrics, results files and plot, on plain tensors and files.

The kNN is checked against a brute-force reference written independently
here: the full similarity matrix in float64, neighbours sorted by
(-similarity, memory index), weighted votes summed in a dict, classes sorted
by (-vote, class index), classes without a vote never predicted.
"""
import json
import math

import numpy as np
import pytest
import soco_d2  # noqa: F401
import torch

from probe_utils import one_thread
from soco_d2.evaluation import (
    ProbeResults,
    classification_metrics,
    knn_rank,
    load_probe_results,
    plot_metrics,
    probe_results_markdown,
    rank_logits,
    train_linear_probe,
    write_probe_results,
)
from soco_d2.engine.metrics import read_metrics


def brute_force_knn(memory, labels, queries, num_classes, k, temperature, topk=5):
    m = memory.double().numpy()
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    q = queries.double().numpy()
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    similarity = q @ m.T
    out = []
    for row in similarity:
        neighbours = sorted(range(len(row)), key=lambda j: (-row[j], j))[:k]
        votes = {}
        for j in neighbours:
            votes[int(labels[j])] = votes.get(int(labels[j]), 0.0) + math.exp(row[j] / temperature)
        ranked = sorted(votes, key=lambda c: (-votes[c], c))[: min(topk, num_classes)]
        out.append(ranked + [-1] * (min(topk, num_classes) - len(ranked)))
    return out


def _random_problem(seed, n=60, q=40, d=16, num_classes=7):
    g = torch.Generator().manual_seed(seed)
    memory = torch.randn(n, d, generator=g)
    labels = torch.randint(num_classes, (n,), generator=g)
    queries = torch.randn(q, d, generator=g)
    return memory, labels, queries


@pytest.mark.parametrize("k", [1, 5, 20, 60, 200])  # 60 = memory size, 200 > memory size
@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_knn_equals_brute_force_on_random_features(k, temperature):
    memory, labels, queries = _random_problem(seed=k)
    ranked = knn_rank(memory, labels, queries, 7, k=k, temperature=temperature)
    assert ranked.tolist() == brute_force_knn(memory, labels, queries, 7, k, temperature)


def test_knn_ties_in_similarity_and_in_votes():
    memory, labels, queries = _random_problem(seed=1, n=30, q=6, num_classes=4)
    # six copies of one feature (equal similarity to every query) with different labels
    memory[10:16] = memory[3]
    labels[3], labels[10:16] = 2, torch.tensor([0, 1, 3, 1, 0, 2])
    queries[0] = memory[3]  # the copies are its 7 nearest: k=3 must take indices 3, 10, 11
    queries[1] = memory[3] * 5  # same direction, another norm
    # a pair of copies with different labels, alone nearest to query 2: a vote tie at k=2
    memory[20], labels[20], labels[21] = memory[21], 3, 1
    queries[2] = memory[21]
    for k in (2, 3, 8):
        ranked = knn_rank(memory, labels, queries, 4, k=k, temperature=0.07)
        assert ranked.tolist() == brute_force_knn(memory, labels, queries, 4, k, 0.07), k
    ranked = knn_rank(memory, labels, queries, 4, k=3)
    assert ranked[0, 0] == 0  # labels 2, 0, 1 of indices 3, 10, 11: three equal votes, lowest class wins
    assert ranked[0].tolist()[:3] == [0, 1, 2] and ranked[0, 3] == -1  # class 3 got no vote
    assert knn_rank(memory, labels, queries, 4, k=2)[2, :2].tolist() == [1, 3]  # vote tie: class 1 first


def test_knn_k_larger_than_memory_uses_every_item():
    memory, labels, queries = _random_problem(seed=3, n=9, q=5)
    assert torch.equal(knn_rank(memory, labels, queries, 7, k=50), knn_rank(memory, labels, queries, 7, k=9))


def test_knn_rejects_bad_input():
    memory, labels, queries = _random_problem(seed=0)
    with pytest.raises(ValueError, match="empty"):
        knn_rank(memory[:0], labels[:0], queries, 7)
    with pytest.raises(ValueError, match="labels must lie"):
        knn_rank(memory, labels + 7, queries, 7)
    with pytest.raises(ValueError, match="k must be"):
        knn_rank(memory, labels, queries, 7, k=0)


def test_metrics_on_a_hand_checked_example():
    ranked = torch.tensor([[0, 1], [1, 0], [1, -1], [2, 0]])
    labels = torch.tensor([0, 0, 1, 1])
    metrics, per_class = classification_metrics(ranked, labels, ["a", "b", "c"])
    assert metrics["top1"] == 50.0  # rows 0 and 2
    assert per_class == {"a": 50.0, "b": 50.0}  # "c" has no query
    assert metrics["mean_class_acc"] == 50.0
    assert math.isnan(metrics["top5"])  # 3 classes: top-5 undefined
    ranked6 = torch.tensor([[5, 4, 3, 2, 1], [0, 1, 2, 3, 4]])
    metrics6, _ = classification_metrics(ranked6, torch.tensor([1, 5]), [str(i) for i in range(6)])
    assert (metrics6["top1"], metrics6["top5"]) == (0.0, 50.0)
    assert rank_logits(torch.tensor([[0.5, 2.0, 2.0, -1.0]])).tolist() == [[1, 2, 0, 3]]  # tie: lower class first


def test_linear_probe_is_deterministic_and_separates_separable_classes():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 32, generator=g) * 3
    labels = torch.arange(200) % 5
    features = centres[labels] + torch.randn(200, 32, generator=g)
    queries_labels = torch.arange(50) % 5
    queries = centres[queries_labels] + torch.randn(50, 32, generator=g)
    with one_thread():
        first = train_linear_probe(features, labels, 5)
        second = train_linear_probe(features, labels, 5)
    assert torch.equal(first.weight, second.weight) and torch.equal(first.bias, second.bias)
    accuracy = (first.logits(queries).argmax(1) == queries_labels).float().mean().item()
    assert accuracy >= 0.95, accuracy
    with pytest.raises(ValueError, match="no training features"):
        train_linear_probe(features[:0], labels[:0], 5)


def _results():
    results = ProbeResults()
    results.add("coco_val", "region_knn", {"top1": 41.25, "top5": 80.0, "mean_class_acc": 30.0}, {"cat": 41.25})
    results.add("coco_val", "region_linear", {"top1": 50.0, "top5": math.nan, "mean_class_acc": 45.0}, {"cat": 50.0})
    results.add("imagenet_val", "image_knn", {"top1": 12.5, "top5": 30.0, "mean_class_acc": 12.0}, {})
    return results


def test_results_file_schema_markdown_and_scalars(tmp_path):
    path = write_probe_results(str(tmp_path), _results(), weights="w/model_final.pth", iteration=99)
    record = json.load(open(path))
    assert set(record) == {"weights", "label", "iteration", "results", "per_class"}
    assert record["weights"] == "w/model_final.pth" and record["iteration"] == 99
    assert record["results"]["coco_val"]["region_linear"]["top5"] is None  # NaN -> null
    assert record["results"]["coco_val"]["region_knn"] == {"top1": 41.25, "top5": 80.0, "mean_class_acc": 30.0}
    assert record["per_class"]["coco_val"]["region_knn"] == {"cat": 41.25}
    assert load_probe_results(str(tmp_path))["results"] == record["results"]
    table = (tmp_path / "probe_results.md").read_text().splitlines()
    assert table[0].startswith("| Weights | Dataset | img kNN top-1 |")
    assert "| w/model_final.pth | coco_val | – | – | – | 41.2 | 80.0 | 30.0 | 50.0 | – | 45.0 |" in table
    random = write_probe_results(str(tmp_path / "r"), _results(), weights="")
    assert json.load(open(random))["label"] == "random init" and json.load(open(random))["iteration"] is None
    both = probe_results_markdown([("a", record["results"]), ("b", record["results"])], delta=True)
    assert "Δ" not in both  # two datasets per run: no single pair to subtract
    one = {"coco_val": record["results"]["coco_val"]}
    delta = probe_results_markdown([("a", one), ("b", one)], delta=True)
    assert "| Δ (a − b) |  | +0.0 | +0.0 | +0.0 | +0.0 | – | +0.0 |" in delta
    assert _results().scalars() == {
        "probe/region_knn_top1": 41.25, "probe/region_knn_top5": 80.0, "probe/region_knn_mean_class_acc": 30.0,
        "probe/region_linear_top1": 50.0, "probe/region_linear_mean_class_acc": 45.0,
        "probe/image_knn_top1": 12.5, "probe/image_knn_top5": 30.0, "probe/image_knn_mean_class_acc": 12.0,
    }


def test_plot_metrics_reads_resumed_and_truncated_files(tmp_path):
    lines = [{"iteration": i, "total_loss": 2.0 - 0.1 * i, "lr": 0.1} for i in range(6)]
    lines.insert(3, {"iteration": 2, "probe/region_knn_top1": 40.0, "probe/image_knn_top1": 20.0})
    lines += [{"iteration": 4, "total_loss": 9.0}, {"iteration": 5, "probe/region_knn_top1": 55.0}]  # resumed at 4
    path = tmp_path / "metrics.json"
    path.write_text("\n".join(json.dumps(x) for x in lines) + '\n{"iteration": 6, "total_lo')  # killed mid-line
    metrics = {r["iteration"]: r for r in read_metrics(str(path), key=None)}  # the engine's one reader
    assert sorted(metrics) == [0, 1, 2, 3, 4, 5]
    assert metrics[4]["total_loss"] == 9.0 and metrics[2]["probe/region_knn_top1"] == 40.0
    assert metrics[5] == {"iteration": 5, "total_loss": 1.5, "lr": 0.1, "probe/region_knn_top1": 55.0}  # rows merged
    assert [r["iteration"] for r in read_metrics(str(path))] == [0, 1, 2, 3, 4, 5]  # default: rows with a loss
    png = plot_metrics(str(path))
    assert png == str(tmp_path / "loss_curve.png")
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    assert Image.open(png).size == (700, 600)  # two panels: loss and probes
    loss_only = tmp_path / "loss_only"
    loss_only.mkdir()
    (loss_only / "metrics.json").write_text("\n".join(json.dumps(x) for x in lines[:3]))
    assert Image.open(plot_metrics(str(loss_only / "metrics.json"))).size == (700, 350)
    (tmp_path / "empty.json").write_text(json.dumps({"iteration": 0, "lr": 1}))
    with pytest.raises(ValueError, match="total_loss"):
        plot_metrics(str(tmp_path / "empty.json"))


def test_non_finite_features_are_an_error():
    from soco_d2.evaluation import FeatureSet, evaluate_feature_sets

    memory, labels, queries = _random_problem(seed=0, num_classes=3)
    queries[3, 2] = float("nan")
    index = torch.arange(len(memory))
    with pytest.raises(ValueError, match="NaN"):
        evaluate_feature_sets(FeatureSet(memory, labels, index, ["a", "b", "c"]),
                              FeatureSet(queries, labels[: len(queries)], index[: len(queries)], ["a", "b", "c"]))
