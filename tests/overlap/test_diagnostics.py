"""Intra-modal overlap diagnostics on features with analytically known answers, the overlap
figure, and ``clipimo overlap`` on a tiny image folder, a fake benchmark and features files."""
from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pytest
import torch
from conftest import TINY, assert_figure, assert_png, make_images

from clipimo import add_adapters, load_clip, save_adapters
from clipimo.cli.app import build_parser
from clipimo.cli.config import apply
from clipimo.errors import ClipimoError
from clipimo.overlap import stats as dg
from clipimo.report import figures
from clipimo.utils import log
from clipimo.utils.log import RANDOM_INIT_WARNING


def even(a: float, b: float, m: int) -> np.ndarray:
    """``m`` points evenly filling ``[a, b]`` (bin midpoints of a fine grid: an exact uniform)."""
    return a + (b - a) * (np.arange(m) + 0.5) / m


def two_level_features(n_classes: int, per_class: int, a: float, b: float, seed: int = 0, rotation: int = 0):
    """Unit features whose same-class cosine similarities are all ``a`` and different-class all ``b``.

    f_i = sqrt(b) g + sqrt(a - b) u_{c(i)} + sqrt(1 - a) e_i with g, u_c, e_i orthonormal, then a
    random rotation (which preserves every inner product). The row order (hence the labels)
    depends on ``seed`` only, so two calls differing in ``rotation`` or (a, b) share labels.
    """
    n = n_classes * per_class
    dim = 1 + n_classes + n
    labels = np.repeat(np.arange(n_classes), per_class)
    x = np.zeros((n, dim))
    x[:, 0] = np.sqrt(b)
    x[np.arange(n), 1 + labels] = np.sqrt(a - b)
    x[np.arange(n), 1 + n_classes + np.arange(n)] = np.sqrt(1 - a)
    q, _ = np.linalg.qr(np.random.default_rng(1000 + rotation).normal(size=(dim, dim)))
    perm = np.random.default_rng(seed + 1).permutation(n)
    return x[perm] @ q, labels[perm]


# ---- densities, overlap, Bhattacharyya --------------------------------------------------------

def test_two_uniforms_have_the_analytic_overlap_and_bhattacharyya():
    # p = U[0, 0.5] (density 2), q = U[0.25, 1] (density 4/3): they intersect on [0.25, 0.5].
    p = dg.density(dg.histogram(even(0.0, 0.5, 5000), 200))
    q = dg.density(dg.histogram(even(0.25, 1.0, 7500), 200))
    width = 2 / 200
    assert p.sum() * width == pytest.approx(1.0) and q.sum() * width == pytest.approx(1.0)
    assert dg.overlap_area(p, q) == pytest.approx(0.25 * 4 / 3, abs=1e-9)
    assert dg.bhattacharyya(p, q) == pytest.approx(0.25 * np.sqrt(2 * 4 / 3), abs=1e-9)
    # Symmetric, and the same answer on coarser bins aligned with the interval ends.
    assert dg.overlap_area(q, p) == pytest.approx(1 / 3, abs=1e-9)
    p8, q8 = dg.density(dg.histogram(even(0.0, 0.5, 400), 8)), dg.density(dg.histogram(even(0.25, 1.0, 600), 8))
    assert dg.overlap_area(p8, q8) == pytest.approx(1 / 3, abs=1e-9)


def test_identical_gives_one_and_disjoint_gives_zero():
    v = np.random.default_rng(0).uniform(-0.3, 0.8, 10_000)
    p = dg.density(dg.histogram(v, 200))
    assert dg.overlap_area(p, p) == pytest.approx(1.0) and dg.bhattacharyya(p, p) == pytest.approx(1.0)
    q = dg.density(dg.histogram(even(-0.9, -0.4, 1000), 200))
    r = dg.density(dg.histogram(even(0.1, 0.6, 1000), 200))
    assert dg.overlap_area(q, r) == 0.0 and dg.bhattacharyya(q, r) == 0.0


def test_bins_match_numpy_histogram_including_edges_and_out_of_range():
    edges = dg.bin_edges(200)
    v = np.concatenate([edges, np.random.default_rng(1).uniform(-1, 1, 5000), [-1.0000001, 1.0000002]])
    ref, _ = np.histogram(np.clip(v, -1, 1), bins=200, range=(-1, 1))
    np.testing.assert_array_equal(dg.histogram(v, 200), ref)
    assert dg.histogram([1.0 + 1e-6])[-1] == 1 and dg.histogram([-1.5])[0] == 1
    assert len(dg.histogram([0.0])) == dg.FINE_BINS == 4000  # the counting grid
    with pytest.raises(ValueError):
        dg.bin_edges(0)


# ---- features -> pairs -------------------------------------------------------------------------

def test_two_level_features_give_point_masses_and_zero_overlap():
    a, b = 0.735, 0.215  # mid-bin values
    x, labels = two_level_features(4, 5, a, b)
    h = dg.similarity_histograms(x, labels, bins=200, chunk_elements=37)
    assert h.exact and h.total_pairs == 20 * 19 // 2
    assert h.n_paired == 4 * (5 * 4 // 2) and h.n_unpaired == h.total_pairs - h.n_paired
    assert h.paired[int((a + 1) * 100)] == h.n_paired and h.unpaired[int((b + 1) * 100)] == h.n_unpaired
    rec = dg.overlap_record(dg.similarity_histograms(x, labels, chunk_elements=37), dg.feature_variance(x))
    assert rec["overlap"] == 0.0 and rec["bhattacharyya"] == 0.0
    assert rec["paired_mean_sim"] == pytest.approx(a) and rec["unpaired_mean_sim"] == pytest.approx(b)
    # Equal levels: the two point masses coincide, overlap and Bhattacharyya are 1 (0.41525: the middle
    # of a fine counting bin, so float rounding cannot split the mass across two bins).
    y, lab = two_level_features(3, 4, 0.41525, 0.41525)
    same = dg.overlap_stats(y, lab)
    assert same["overlap"] == pytest.approx(1.0) and same["bhattacharyya"] == pytest.approx(1.0)


def test_chunked_exact_equals_direct_full_matrix():
    rng = np.random.default_rng(2)
    n, classes = 157, 6
    centres = rng.normal(size=(classes, 24))
    labels = rng.integers(0, classes, n)
    x = centres[labels] + 0.9 * rng.normal(size=(n, 24))
    x[10] = x[3] * 2.5  # a duplicate direction: similarity 1 (or 1 + eps) lands in the last bin
    labels[10] = labels[3]
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = xn @ xn.T
    iu = np.triu_indices(n, 1)
    same = labels[iu[0]] == labels[iu[1]]
    ref_p, _ = np.histogram(np.clip(s[iu][same], -1, 1), bins=200, range=(-1, 1))
    ref_u, _ = np.histogram(np.clip(s[iu][~same], -1, 1), bins=200, range=(-1, 1))
    for chunk in (1, 157, 1000, 10 ** 9):
        h = dg.similarity_histograms(x, labels, bins=200, chunk_elements=chunk)
        np.testing.assert_array_equal(h.paired, ref_p)
        np.testing.assert_array_equal(h.unpaired, ref_u)
        assert h.paired_sum == pytest.approx(s[iu][same].sum()) and h.unpaired_sum == pytest.approx(s[iu][~same].sum())
    assert dg.similarity_histograms(x, labels, chunk_elements=1).extra["chunks"] == n - 1
    assert h.paired[-1] >= 1
    assert h.n_paired + h.n_unpaired == n * (n - 1) // 2  # i < j only, no self-pairs


def test_sampled_estimate_is_close_to_exact_reproducible_and_states_its_size():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 8, 400)
    x = rng.normal(size=(8, 32))[labels] + 1.2 * rng.normal(size=(400, 32))
    exact = dg.overlap_stats(x, labels)
    est = dg.overlap_stats(x, labels, sample_pairs=200_000, seed=7)
    assert exact["mode"] == "exact" and exact["sample_size"] is None
    assert est["mode"] == "sampled" and est["sample_size"] == 200_000 and est["seed"] == 7
    assert est["n_pairs"]["total"] == 200_000 and est["total_pairs"] == 400 * 399 // 2
    assert abs(est["overlap"] - exact["overlap"]) < 0.03
    assert abs(est["bhattacharyya"] - exact["bhattacharyya"]) < 0.01
    assert est == dg.overlap_stats(x, labels, sample_pairs=200_000, seed=7)
    assert est["paired_density"] != dg.overlap_stats(x, labels, sample_pairs=200_000, seed=8)["paired_density"]
    i, j = dg.sample_pair_indices(5, 50_000, seed=0)
    assert np.all(i < j) and np.all(j < 5)
    freq = np.bincount(i * 5 + j, minlength=25)[[a * 5 + b for a in range(5) for b in range(a + 1, 5)]]
    assert freq.sum() == 50_000 and np.all(np.abs(freq / 5000 - 1) < 0.08)  # uniform over the 10 pairs


def test_feature_variance_formula():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(50, 12)) + 2.0
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    v = dg.feature_variance(x)
    assert v == pytest.approx(np.mean(np.var(xn, axis=0)))
    assert v == pytest.approx((1 - np.sum(xn.mean(axis=0) ** 2)) / 12)  # unit rows
    assert dg.feature_variance(3.7 * x) == pytest.approx(v)  # computed on the L2-normalised rows
    n = 9  # one-hot rows: each dimension holds a single 1, variance 1/n - 1/n^2
    assert dg.feature_variance(np.eye(n)) == pytest.approx(1 / n - 1 / n ** 2)
    assert dg.feature_variance(np.tile(xn[:1], (5, 1))) == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError, match="zero norm"):
        dg.feature_variance(np.zeros((3, 4)))


def test_compare_streams_and_undefined_cases():
    x, labels = two_level_features(3, 4, 0.63525, 0.30525)  # mid fine-bin values
    y, _ = two_level_features(3, 4, 0.90525, 0.10525, rotation=5)
    rec = dg.compare_streams(x, y, labels, bins=100, sample_pairs=3000, seed=1)
    # Both streams' similarities lie in fine bins 2210-3810 (width 0.0005, from -1), 1,601 of them, so
    # 100 bins of 17 fine bins (0.0085), the 99 spare fine bins split 49 below, 50 above.
    assert rec["bins"]["count"] == 100 and rec["bins"]["rule"] == "fixed"
    assert rec["bins"]["width"] == pytest.approx(0.0085)
    assert rec["bins"]["low"] == pytest.approx(-1 + (2210 - 49) * 0.0005)
    assert rec["bins"]["high"] == pytest.approx(-1 + (2210 - 49 + 1700) * 0.0005)
    assert len(rec["original"]["paired_density"]) == 100
    assert rec["original"]["n_pairs"] == rec["corrected"]["n_pairs"]  # same sampled pairs
    assert rec["original"]["overlap"] == 0.0 and rec["corrected"]["overlap"] == 0.0
    assert rec["corrected"]["paired_mean_sim"] == pytest.approx(0.90525)
    assert rec["delta"]["variance"] == pytest.approx(rec["corrected"]["variance"] - rec["original"]["variance"])
    assert dg.compare_streams(x, None, labels)["corrected"] is None
    one_class = dg.overlap_stats(x, np.zeros(len(x), dtype=int))
    assert one_class["overlap"] is None and one_class["n_pairs"]["unpaired"] == 0
    with pytest.raises(ValueError, match="labels"):
        dg.overlap_stats(x, labels[:-1])
    with pytest.raises(ValueError, match="shape"):
        dg.compare_streams(x, y[:, :5], labels)


def test_overlap_figure_is_a_valid_png(tmp_path):
    x, labels = two_level_features(3, 4, 0.635, 0.305)
    rng = np.random.default_rng(0)
    noisy = x + 0.05 * rng.normal(size=x.shape)
    rec = dg.compare_streams(noisy, x, labels)
    rec.update(random_init=True, source={"description": "synthetic"})
    assert_figure(figures.overlap_figure(rec, tmp_path / "sub" / "overlap"), ("png",), 200)
    rec2 = dg.compare_streams(noisy, None, labels)
    assert_figure(figures.overlap_figure(rec2, tmp_path / "single"))
    assert not list(tmp_path.rglob(".*.tmp*"))  # atomic writes leave no temporaries


# ---- clipimo overlap ---------------------------------------------------------------------------

def cli(argv):
    """The command line as clipimo.cli.app parses it, with errors raised instead of printed."""
    log.configure()  # as clipimo.cli.app does: messages to this test's stderr
    parser = build_parser()
    args = parser.parse_args(argv)
    apply(args, parser, argv)
    return args.func(args)


@pytest.fixture(scope="module")
def adapter_file(tmp_path_factory):
    bb = load_clip(TINY)
    add_adapters(bb.model, bottleneck=8)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for block in bb.model.visual.transformer.resblocks:
            for p in block.adapter.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    path = tmp_path_factory.mktemp("adapter") / "adapter.safetensors"
    save_adapters(bb.model, path)
    return path


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree")
    items = make_images(root / "flat", 12, n_classes=3)
    for i, (path, label) in enumerate(items):
        dest = root / "tree" / f"class_{label}" / f"img_{i:02d}.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest)
    return root / "tree"


def test_cli_overlap_on_images_with_adapter_and_on_its_features_file(tmp_path, image_tree, adapter_file, capsys):
    common = ["--model", TINY, "--adapter", str(adapter_file), "--cache-dir", str(tmp_path / "cache"),
              "--workers", "0", "--no-progress"]
    out = tmp_path / "ov"
    assert cli(["overlap", "--images", str(image_tree), "--out", str(out)] + common) == 0
    printed = capsys.readouterr()
    assert RANDOM_INIT_WARNING in printed.err and RANDOM_INIT_WARNING not in printed.out
    assert "original" in printed.out and "corrected" in printed.out and "bins: 10 over [" in printed.out
    assert "too few pairs for a meaningful overlap: with 18 same-class and 48 different-class pairs" in printed.err
    rec = json.loads((out / "overlap.json").read_text())
    assert rec["random_init"] is True and rec["adapter"]["sha256"] and rec["backbone"]["model"] == TINY
    assert rec["n_items"] == 12 and rec["n_classes"] == 3
    for stream in ("original", "corrected"):
        s = rec[stream]
        assert s["mode"] == "exact" and s["sample_size"] is None
        assert s["n_pairs"] == {"paired": 3 * 6, "unpaired": 66 - 18, "total": 66}
        assert 0 <= s["overlap"] <= 1 and 0 <= s["bhattacharyya"] <= 1 + 1e-9 and s["variance"] > 0
        # --bins auto: 18 paired pairs, Rice rule ceil(2 * 18^(1/3)) = 6, raised to the floor of 10.
        assert len(s["paired_density"]) == rec["bins"]["count"] == 10
    assert rec["corrected"]["paired_mean_sim"] != rec["original"]["paired_mean_sim"]  # the adapter changed things
    assert_figure({"png": out / "overlap.png"})

    # The same images through `clipimo features`, then `clipimo overlap --features`: identical figures.
    npz = tmp_path / "feats.npz"
    assert cli(["features", "--images", str(image_tree), "--out", str(npz)] + common) == 0
    out2 = tmp_path / "ov2"
    assert cli(["overlap", "--features", str(npz), "--out", str(out2), "--format", "png,pdf,svg", "--dpi", "150",
                "--xlim=-0.5,1"]) == 0
    assert_figure({f: out2 / f"overlap.{f}" for f in ("png", "pdf", "svg")}, ("png", "pdf", "svg"), 150)
    rec2 = json.loads((out2 / "overlap.json").read_text())
    assert rec2["random_init"] is True and rec2["source"]["kind"] == "features"
    for stream in ("original", "corrected"):
        for key in ("overlap", "bhattacharyya", "variance", "n_pairs"):
            assert rec2[stream][key] == pytest.approx(rec[stream][key], abs=1e-6)

    # A pair sample states its size in the JSON and the printed table.
    out3 = tmp_path / "ov3"
    assert cli(["overlap", "--features", str(npz), "--out", str(out3), "--sample-pairs", "500", "--seed", "2"]) == 0
    assert "sampled 500" in capsys.readouterr().out
    rec3 = json.loads((out3 / "overlap.json").read_text())
    assert rec3["original"]["mode"] == "sampled" and rec3["original"]["sample_size"] == 500
    assert rec3["corrected"]["n_pairs"]["total"] == 500


def test_cli_overlap_on_a_benchmark_split(tmp_path, adapter_file):
    # A fake EuroSAT (10 classes) in the CoOp split_zhou layout, 2 test images per class.
    base = tmp_path / "data" / "eurosat"
    items = make_images(tmp_path / "px", 20, n_classes=10, size=32)
    split = {"train": [], "val": [], "test": []}
    for i, (path, label) in enumerate(items):
        rel = f"c{label}/t{i}.png"
        (base / "2750" / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, base / "2750" / rel)
        split["test"].append([rel, label, f"class {label}"])
    split["train"], split["val"] = split["test"][:10], split["test"][10:]
    (base / "split_zhou_EuroSAT.json").write_text(json.dumps(split))
    out = tmp_path / "ov"
    assert cli(["overlap", "--dataset", "EuroSAT", "--root", str(tmp_path / "data"), "--out", str(out),
                "--model", TINY, "--adapter", str(adapter_file), "--cache-dir", str(tmp_path / "cache"),
                "--workers", "0", "--no-progress", "--bins", "50"]) == 0
    rec = json.loads((out / "overlap.json").read_text())
    assert rec["source"]["split"] == "test" and rec["source"]["dataset"] == "EuroSAT"
    assert rec["original"]["n_pairs"]["paired"] == 10 and len(rec["corrected"]["unpaired_density"]) == 50


def section8_file(path, **drop):
    x, labels = two_level_features(3, 4, 0.735, 0.215)
    y, _ = two_level_features(3, 4, 0.935, 0.015, rotation=9)
    x, y = x.astype(np.float32), y.astype(np.float32)
    arrays = {"text_weights": np.eye(x.shape[1], 3, dtype=np.float32),
              "cache_keys": x, "cache_keys_corrected": y, "cache_labels": labels,
              "val_feats": x[:6], "val_feats_corrected": y[:6], "val_labels": labels[:6],
              "test_feats": x, "test_feats_corrected": y, "test_labels": labels}
    for key in drop:
        arrays.pop(key)
    np.savez(path, **arrays)
    return path


def test_cli_overlap_on_section8_features_file(tmp_path, capsys):
    npz = section8_file(tmp_path / "s8.npz")
    assert cli(["overlap", "--features", str(npz), "--split", "cache", "--out", str(tmp_path / "o")]) == 0
    rec = json.loads((tmp_path / "o" / "overlap.json").read_text())
    assert rec["source"]["kind"] == "features-section8" and rec["source"]["split"] == "cache"
    assert rec["random_init"] is None  # a features file does not record its backbone
    assert rec["original"]["overlap"] == 0.0 and rec["corrected"]["overlap"] == 0.0
    assert rec["original"]["paired_mean_sim"] == pytest.approx(0.735, abs=1e-5)
    assert rec["corrected"]["unpaired_mean_sim"] == pytest.approx(0.015, abs=1e-5)
    assert "not record" in capsys.readouterr().err
    assert_png(tmp_path / "o" / "overlap.png")
    assert cli(["overlap", "--features", str(npz), "--out", str(tmp_path / "t")]) == 0  # default: test
    assert json.loads((tmp_path / "t" / "overlap.json").read_text())["source"]["split"] == "test"


def test_auto_bins_follow_the_pair_count():
    assert dg.auto_bins(450) == 16  # ceil(2 * 450^(1/3)) = ceil(15.33)
    assert dg.auto_bins(2) == 10  # ceil(2 * 2^(1/3)) = 3, raised to the floor of 10
    assert dg.auto_bins(495_000) == 159  # ceil(2 * 79.1)
    assert dg.auto_bins(10 ** 7) == 200  # 431, capped
    # The smaller group decides: 10 classes of 10 images, 450 same-class pairs of 4,950.
    labels = np.repeat(np.arange(10), 10)
    x = np.random.default_rng(0).normal(size=(100, 16))
    assert dg.compare_streams(x, None, labels)["bins"] == pytest.approx(
        {**dg.compare_streams(x, None, labels, bins=16)["bins"], "rule": "auto: Rice rule on 450 pairs"})


@pytest.mark.parametrize("flags, message", [
    (["--format", "png,tiff"], r"format\(s\) \['tiff'\] not supported"),
    (["--dpi", "20"], "--dpi must be between 50 and 1200"),
    (["--xlim", "0.5"], "--xlim must be LOW,HIGH"),
    (["--xlim", "0.5,1.5"], "-1 <= LOW < HIGH <= 1"),
    (["--bins", "many"], "--bins must be an integer from 1 to 10000 or 'auto'"),
])
def test_cli_overlap_figure_flag_errors(tmp_path, flags, message):
    npz = section8_file(tmp_path / "s8.npz")
    with pytest.raises(ClipimoError, match=message):
        cli(["overlap", "--features", str(npz), "--out", str(tmp_path / "o")] + flags)
    assert not (tmp_path / "o").exists()


def test_cli_overlap_errors_name_the_file_and_key(tmp_path):
    bad = section8_file(tmp_path / "nolabels.npz", test_labels=None)
    with pytest.raises(ClipimoError, match=r"nolabels\.npz.*'test_labels'"):
        cli(["overlap", "--features", str(bad), "--out", str(tmp_path / "o")])
    np.savez(tmp_path / "other.npz", foo=np.zeros(3))
    with pytest.raises(ClipimoError, match=r"other\.npz.*missing key 'feats'"):
        cli(["overlap", "--features", str(tmp_path / "other.npz"), "--out", str(tmp_path / "o")])
    np.savez(tmp_path / "pickled.npz", feats=np.array([{"a": 1}], dtype=object), labels=np.zeros(1, dtype=int))
    with pytest.raises(ClipimoError, match="pickle"):
        cli(["overlap", "--features", str(tmp_path / "pickled.npz"), "--out", str(tmp_path / "o")])
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ClipimoError, match=r"junk\.npz"):
        cli(["overlap", "--features", str(tmp_path / "junk.npz"), "--out", str(tmp_path / "o")])
    one = tmp_path / "one.npz"
    np.savez(one, feats=np.eye(4, dtype=np.float32), labels=np.zeros(4, dtype=np.int64))
    with pytest.raises(ClipimoError, match="2 classes"):
        cli(["overlap", "--features", str(one), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()
