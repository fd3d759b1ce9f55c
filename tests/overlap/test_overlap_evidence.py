"""The overlap figure as evidence: bins over the data's range (count from the number of pairs),
the overlap re-derived by hand on those bins, the sampling noise that makes few pairs meaningless,
and the figures that show it; the gain figures without error caps for a single seed."""
import math

import numpy as np
import pytest

from clipimo.overlap import stats as dg
from clipimo.report import figures
from clipimo.report.style import FigureOptions


def clustered(n_classes: int, per_class: int, spread: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    x = rng.normal(size=(n_classes, 24))[labels] + spread * rng.normal(size=(len(labels), 24)) + 0.5
    return x, labels


def pair_similarities(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair i < j's cosine similarity in float64, split into same / different class."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    i, j = np.triu_indices(len(x), 1)
    sims = np.einsum("nd,nd->n", xn[i], xn[j])
    same = labels[i] == labels[j]
    return sims[same], sims[~same]


def test_bins_cover_the_data_range_and_the_overlap_matches_a_hand_histogram():
    x, labels = clustered(6, 25, 1.3)
    y, _ = clustered(6, 25, 0.7, seed=1)
    rec = dg.compare_streams(x, y, labels)
    b = rec["bins"]
    same_x, diff_x = pair_similarities(x, labels)
    same_y, diff_y = pair_similarities(y, labels)
    everything = np.concatenate([same_x, diff_x, same_y, diff_y])
    assert b["low"] <= everything.min() and everything.max() <= b["high"]
    assert b["high"] - b["low"] < everything.max() - everything.min() + b["width"] + 0.0005
    smaller = min(len(same_x), len(diff_x))  # 6 x C(25, 2) = 1,800 same-class pairs
    assert smaller == 1800 and b["count"] == math.ceil(2 * 1800 ** (1 / 3)) == 25
    assert b["rule"] == "auto: Rice rule on 1,800 pairs"
    edges = np.linspace(b["low"], b["high"], b["count"] + 1)
    for stats, same, diff in ((rec["original"], same_x, diff_x), (rec["corrected"], same_y, diff_y)):
        p = np.histogram(same, edges)[0] / len(same)
        q = np.histogram(diff, edges)[0] / len(diff)
        assert stats["overlap"] == pytest.approx(np.minimum(p, q).sum(), abs=1e-9)
        assert stats["bhattacharyya"] == pytest.approx(np.sqrt(p * q).sum(), abs=1e-9)
        assert np.sum(stats["paired_density"]) * b["width"] == pytest.approx(1.0)
        assert stats["overlap_noise"] == pytest.approx(
            math.sqrt(25 * (1 / len(same) + 1 / len(diff)) / (2 * math.pi)))


def test_overlap_noise_is_what_two_samples_of_one_distribution_read():
    rng = np.random.default_rng(5)
    n_p, n_u, k = 300, 3000, 14
    readings = []
    for _ in range(400):  # two samples of one uniform distribution, on k bins over its range
        a, b = rng.uniform(0.2, 0.8, n_p), rng.uniform(0.2, 0.8, n_u)
        edges = np.linspace(0.2, 0.8, k + 1)
        readings.append(np.minimum(np.histogram(a, edges)[0] / n_p, np.histogram(b, edges)[0] / n_u).sum())
    shortfall = 1 - np.mean(readings)
    assert dg.overlap_noise(n_p, n_u, k) == pytest.approx(shortfall, rel=0.1)
    assert dg.overlap_noise(0, 10, 5) is None


def test_few_pairs_warn_many_do_not():
    x, labels = clustered(3, 4, 1.0)
    few = dg.compare_streams(x, None, labels)  # 18 same-class pairs
    warning = figures.few_pairs_warning(few)
    noise = few["original"]["overlap_noise"]
    assert noise == pytest.approx(math.sqrt(10 * (1 / 18 + 1 / 48) / (2 * math.pi)))  # 10 bins (the floor)
    assert warning.startswith("too few pairs for a meaningful overlap: with 18 same-class and 48 different-class pairs")
    assert f"differences below {noise:.2f} are sampling noise" in warning
    x, labels = clustered(10, 60, 1.0)
    many = dg.compare_streams(x, None, labels)  # 17,700 same-class pairs: noise 0.023
    assert many["original"]["overlap_noise"] < 0.05 and figures.few_pairs_warning(many) is None


def test_overlap_figure_draws_both_groups_per_stream_and_states_the_noise(tmp_path):
    x, labels = clustered(3, 4, 1.0)
    rec = dg.compare_streams(x, x[:, ::-1] + 0.1, labels)
    svg = figures.overlap_figure(rec, tmp_path / "few", options=FigureOptions(formats=("svg",)))["svg"].read_text()
    for text in ("original: overlap", "corrected: overlap", "same class, mean", "different class, mean",
                 "same- vs different-class overlap", "Too few pairs for a meaningful overlap"):
        assert text in svg, text
    x, labels = clustered(10, 60, 1.0)
    many = dg.compare_streams(x, None, labels)
    svg = figures.overlap_figure(many, tmp_path / "many", options=FigureOptions(formats=("svg",)))["svg"].read_text()
    assert "original: overlap" in svg and "corrected: overlap" not in svg and "Too few pairs" not in svg
    old = {**many, "bins": {"count": len(many["original"]["paired_density"])}}  # a record without its range
    assert figures.overlap_figure(old, tmp_path / "old")["png"].is_file()


def test_single_seed_points_get_no_error_caps(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, stem, options: drawn.append(fig) or {})
    rows = [{"dataset": "d", "shots": s, "method": "tip", "mean": 1.0 + s, "std": None, "n": 1} for s in (1, 2, 4)]
    rows += [{"dataset": "d", "shots": s, "method": "zs", "mean": 2.0, "std": 0.5, "n": 3} for s in (1, 2, 4)]
    figures.gain_figure(rows, tmp_path / "g", "gain", {})
    bars = {c.get_label(): c for c in drawn[0].axes[0].containers}
    caps_one, caps_three = bars["tip-imo − tip"].lines[1], bars["zs-imo − zs"].lines[1]
    assert all(np.isnan(np.asarray(cap.get_ydata(), float)).all() for cap in caps_one)
    assert [list(np.asarray(cap.get_ydata(), float)) for cap in caps_three] == [[1.5, 1.5, 1.5], [2.5, 2.5, 2.5]]


def test_report_section_says_when_the_pairs_are_too_few(tmp_path):
    from clipimo.report.sections import overlap_section

    x, labels = clustered(3, 4, 1.0)
    few = {**dg.compare_streams(x, None, labels), "source": {"description": "few"}}
    x, labels = clustered(10, 60, 1.0)
    many = {**dg.compare_streams(x, None, labels), "source": {"description": "many"}}
    text = "\n".join(overlap_section([("few.json", few), ("many.json", many)], tmp_path, FigureOptions()))
    few_part, many_part = text.split("### many")
    assert "Too few pairs for a meaningful overlap: with 18 same-class and 48 different-class pairs" in few_part
    assert "Too few pairs" not in many_part
