"""Every -imo method takes corrected features in its image-image terms and original ones in its text
terms (docs/methods.md, "Training-free methods"), checked against the hand-written references of
``imo_reference`` on a task
where each wrong choice of stream gives another answer."""
from __future__ import annotations

import json

import imo_reference as ref
import numpy as np
import pytest
import torch

from clipimo.cli.app import main
from clipimo.features.file import save_features
from clipimo.methods.common import Problem, Split
from clipimo.methods.predict import accuracy_at, logits_at
from clipimo.methods.registry import METHODS

SEARCHED = ["tip", "tip-imo", "tipx", "tipx-imo", "gda", "gda-imo"]
SECTION8 = ("test_acc", "val_acc", "hparams")  # top-5 and recall are checked in test_metrics
# A point where every term weighs: alpha, beta and gamma all non-zero.
POINT = {"alpha": 3.0, "beta": 4.0, "gamma": 7.0}


@pytest.fixture(scope="module")
def task():
    return ref.contrast_task(seed=0)


@pytest.fixture(scope="module")
def problem(task):
    return Problem.from_features(ref.as_featureset(task))


def _wiring(method: str) -> ref.Wiring:
    return ref.Wiring.imo() if method.endswith("-imo") else ref.Wiring.original()


def _terms(method: str) -> list[ref.Wiring]:
    """The wrong wirings that concern ``method``: Tip and GDA have no KL term."""
    right = _wiring(method)
    return [w for w in right.wrong_variants()
            if method.startswith("tipx") or (w.kl, w.range) == (right.kl, right.range)]


def _ref_logits(task, method, split, wiring, hp):
    base = method.removesuffix("-imo")
    if base == "gda":
        return ref.gda_logits(task, split, wiring, hp["alpha"])
    return ref.fixed_point(task, split, wiring, base == "tipx", hp)


def _hp(method):
    base = method.removesuffix("-imo")
    return {"alpha": POINT["alpha"]} if base == "gda" else \
        {k: POINT[k] for k in (("alpha", "beta", "gamma") if base == "tipx" else ("alpha", "beta"))}


@pytest.mark.parametrize("method", SEARCHED)
def test_fixed_point_logits_take_each_term_from_the_right_stream(task, problem, method):
    hp = _hp(method)
    got = torch.cat([lg for _, lg in logits_at(problem, problem.test, method, hp)]).double().numpy()
    want = _ref_logits(task, method, "test", _wiring(method), hp)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    for wrong in _terms(method):  # the check has power: each wrong stream moves the logits
        assert np.abs(_ref_logits(task, method, "test", wrong, hp) - want).max() > 0.05, wrong


@pytest.mark.parametrize("method", ["zs"] + SEARCHED)
def test_registry_search_equals_the_reference_search(task, problem, method):
    got = {k: v for k, v in METHODS[method](problem).as_dict().items() if k in SECTION8}
    want = ref.method(task, method)
    assert got == want
    for wrong in (_terms(method) if method != "zs" else []):
        if method == "tipx-imo" and wrong.range != _wiring(method).range:
            continue  # the range only rescales gamma: covered at a fixed point above
        assert ref.method(task, method, wrong) != want, wrong


def test_imo_beats_original_on_the_contrast_task(problem):
    """The task is built so the corrected cache helps: the variants must give different answers."""
    for base in ("tip", "tipx", "gda"):
        assert METHODS[f"{base}-imo"](problem).test_acc > METHODS[base](problem).test_acc


@pytest.mark.parametrize("method", ["zs"] + SEARCHED)
def test_restricted_accuracy_at_a_fixed_point(task, problem, method):
    """Shift's -A/-R scoring: logits restricted to a class subset, labels indexing that subset."""
    hp = {} if method == "zs" else _hp(method)
    classes = [3, 1]  # not sorted: the label of a row is its position in this list
    keep = np.isin(task["test_labels"], classes)
    sub_labels = np.array([classes.index(int(y)) for y in task["test_labels"][keep]])
    # The cache stays the full task's; the queries are the subset (Tip-X rescales over them).
    sub = {**task, "test_feats": task["test_feats"][keep], "test_feats_corrected": task["test_feats_corrected"][keep]}
    full = ref.zeroshot(sub, "test") if method == "zs" else _ref_logits(sub, method, "test", _wiring(method), hp)
    want = ref.percent(ref.hits(full[:, classes], sub_labels), len(sub_labels))
    ignored = ref.percent(ref.hits(full, sub_labels), len(sub_labels))
    assert want != ignored  # scoring without the restriction gives another number
    t = problem.test
    split = Split(t.feats[keep], t.feats_corrected[keep], torch.from_numpy(sub_labels))
    assert accuracy_at(problem, split, method, hp, classes=classes) == pytest.approx(want)


def test_evaluate_cli_equals_the_reference(task, tmp_path):
    path = tmp_path / "f.npz"
    save_features(path, ref.as_featureset(task))
    out = tmp_path / "r.json"
    assert main(["evaluate", "--features", str(path), "--methods", ",".join(["zs"] + SEARCHED),
                 "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert {m: {k: r[k] for k in SECTION8} for m, r in got.items()} == {m: ref.method(task, m) for m in ["zs"] + SEARCHED}
