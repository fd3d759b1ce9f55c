"""The -imo streams through the paths that carry features between the methods and the user: a saved
classifier (``clipimo predict``), the corrections' slot, and the ProKeR / APE / Tip-F variants.
Each expectation is hand-written (``imo_reference`` or written out here) on a task where the
corrected and the original stream give different answers, so a swapped stream changes the number."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import imo_reference as ref
from clipimo.classifier import Classifier, load_classifier

POINT = {"alpha": 3.0, "beta": 4.0, "gamma": 7.0}
META = {"backbone": {"model": "tiny"}, "adapter": {"sha256": "ab" * 32}}


@pytest.fixture(scope="module")
def task():
    return ref.contrast_task(seed=1)


def _hp(base: str) -> dict:
    return {"gda": {"alpha": POINT["alpha"]}, "tip": {k: POINT[k] for k in ("alpha", "beta")}}.get(base, POINT)


def _want(task, method, wiring):
    base = method.removesuffix("-imo")
    if base == "gda":
        return ref.gda_logits(task, "test", wiring, _hp(base)["alpha"])
    return ref.fixed_point(task, "test", wiring, base == "tipx", _hp(base))


@pytest.mark.parametrize("method", ["tip-imo", "tipx-imo", "gda-imo", "tip", "tipx", "gda"])
def test_saved_classifier_takes_each_term_from_the_right_stream(task, tmp_path, method):
    """Save, load and classify the test split in one call (Tip-X rescales over it): the logits are
    the reference's, and every wrong choice of stream would give others."""
    feats = ref.as_featureset(task)
    path = tmp_path / "clf.safetensors"
    Classifier.from_features(feats, method, _hp(method.removesuffix("-imo")),
                             {**META, "classnames": list("abcd")}).save(path)
    clf = load_classifier(path)
    got = clf.logits(torch.from_numpy(task["test_feats"]), torch.from_numpy(task["test_feats_corrected"]))
    right = ref.Wiring.imo() if method.endswith("-imo") else ref.Wiring.original()
    want = _want(task, method, right)
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-4, atol=1e-3)
    kl_terms = method.startswith("tipx")
    for wrong in right.wrong_variants():
        if kl_terms or (wrong.kl, wrong.range) == (right.kl, right.range):
            assert np.abs(_want(task, method, wrong) - want).max() > 0.05, wrong
