"""``clipimo run --corrections``: every correction's "-imo" results beside the adapter's, one
encoding of the original features, and the report's method x correction section."""
from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest
from conftest import TINY, assert_png
from test_runner import _args, task  # noqa: F401  (the module fixture)

from clipimo import load_clip
from clipimo.cli.app import main
from clipimo.features import corrections as corr
from clipimo.features.file import load_features
from clipimo.methods.evaluate import evaluate_features, run_methods

CORRECTIONS = ["imo", "isoclip", "textpca", "imagepca"]


def test_run_compares_corrections_and_reports_them(task, tmp_path, capsys):  # noqa: F811
    names = tmp_path / "classnames.txt"
    names.write_text("".join(f"class {i}\n" for i in range(40)))  # > D / 2 = 32 of the tiny model
    out = tmp_path / "res"
    argv = _args(task, out, "--shots", "1", "--seeds", "1,2", "--methods", "zs,tip,tip-imo,ape,ape-imo",
                 "--corrections", ",".join(CORRECTIONS), "--textpca-classnames", str(names),
                 "--imagepca-images", str(task / "task" / "train"), "--imagepca", "abtt-1", "--save-features")
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert [c["name"] for c in results["meta"]["corrections"]] == CORRECTIONS
    assert results["meta"]["corrections"][3]["mode"] == "abtt-1"
    iso = corr.isoclip(*corr.projections(load_clip(TINY).model))
    for cell in results["cells"]:
        assert list(cell["corrections"]) == CORRECTIONS
        assert cell["corrections"]["imo"]["methods"] == {m: cell["methods"][m] for m in ("tip-imo", "ape-imo")}
        assert set(cell["corrections"]["isoclip"]["methods"]) == {"tip-imo", "ape-imo"}
        assert cell["settings"]["ape"]["text"] == "templates, no CuPL"
        # the isoclip column is the -imo methods on the isoclip map of the ORIGINAL features
        feats = load_features(out / "features" / f"{cell['dataset']}_k1_s{cell['seed']}.npz")
        want = evaluate_features(corr.corrected_features(feats, iso), ["tip-imo", "ape-imo"])
        assert cell["corrections"]["isoclip"]["methods"] == want

    capsys.readouterr()
    assert main(["evaluate", "--features", str(out / "features" / f"{results['cells'][0]['dataset']}_k1_s1.npz"),
                 "--methods", "proker,proker-imo,ape,ape-imo,tip-f,tip-f-imo"]) == 0
    printed = capsys.readouterr()
    assert "corrected stream of the -imo methods: imo" in printed.err
    assert "no CuPL" in printed.out and "views=all" in printed.out

    report_dir = tmp_path / "report"
    assert main(["report", "--results", str(out / "results.json"), "--out", str(report_dir)]) == 0
    text = (report_dir / "report.md").read_text()
    section = text.split("## Overlap corrections")[1]
    assert "OUR control" in section and "| Dataset | Method | imo | isoclip | textpca | imagepca |" in section
    gains = [c["corrections"]["textpca"]["methods"]["tip-imo"]["test_acc"] - c["methods"]["tip"]["test_acc"]
             for c in results["cells"]]
    assert f"{np.mean(gains):+.2f} ± {np.std(gains, ddof=1):.2f}" in section.split(f"| {results['cells'][0]['dataset']} | tip |")[1].splitlines()[0]
    assert_png(report_dir / "plots" / "corrections_k1.png", 300, 200)
    assert "no CuPL" in text

    # another set of corrections is another configuration: the folder refuses it
    capsys.readouterr()
    assert main(_args(task, out, "--shots", "1", "--seeds", "1,2", "--methods", "zs,tip,tip-imo,ape,ape-imo",
                      "--corrections", "imo,isoclip")) == 2
    assert "corrections" in capsys.readouterr().err


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _hand_maps(task, names_file, meta: dict) -> dict:
    """Each correction's map built here from its definition (docs/methods.md, "Training-free corrections"), as
    ``x -> normalize((x - mean) @ matrix)``; only the encoding of text and images is clipimo's."""
    from clipimo.api import build_extractor
    from clipimo.data.generic import read_image_folder
    from clipimo.data.templates import IMAGENET_TEMPLATES

    model = load_clip(TINY).model
    proj = model.visual.proj.detach().double().numpy()           # [width, D]
    text_proj = model.text_projection.detach().double().numpy()  # [width_t, D]
    u = np.linalg.svd(proj @ text_proj.T)[0]
    ktop, kbottom = meta["isoclip"]["ktop"], meta["isoclip"]["kbottom"]
    uk = u[:, ktop: proj.shape[1] - kbottom]
    iso = np.linalg.pinv(proj) @ uk @ uk.T @ proj

    ext = build_extractor(TINY, cache_dir=task / "cache", workers=0, progress=False)
    names = [n for n in names_file.read_text().splitlines() if n]
    text = ext.text_weights(names, IMAGENET_TEMPLATES).double().numpy().T  # [classes, D]
    centred = text - text.mean(0)
    evals, vecs = np.linalg.eigh(centred.T @ centred / (len(text) - 1))
    top = vecs[:, np.argsort(-evals)[: text.shape[1] // 2]]

    generic = ext.image_features(read_image_folder(task / "task" / "train")[0]).original.double().numpy()
    mean = generic.mean(0)
    g_evals, g_vecs = np.linalg.eigh(np.cov((generic - mean).T))
    first = g_vecs[:, np.argmax(g_evals)][:, None]  # abtt-1
    return {"isoclip": (iso, None), "textpca": (top @ top.T, None),
            "imagepca": (np.eye(len(mean)) - first @ first.T, mean)}


def test_every_correction_is_scored_on_its_own_corrected_stream(task, tmp_path, capsys):  # noqa: F811
    """Each correction's -imo numbers equal the methods run on that correction's map of the saved
    ORIGINAL features (maps built by hand here), and differ between corrections; ProKeR's views
    mode and Tip-F's batch given to `run` reach every correction and the cell fingerprint."""
    from clipimo.features.file import read_meta, read_npz
    from clipimo.methods.common import MethodOptions

    names = tmp_path / "classnames.txt"
    names.write_text("".join(f"class {i}\n" for i in range(40)))  # > D / 2 = 32 of the tiny model
    out = tmp_path / "res"
    imo_methods = ["tip-imo", "proker-imo", "ape-imo", "tip-f-imo"]
    base = ["--shots", "2", "--seeds", "1", "--methods", "zs,tip,proker,ape,tip-f," + ",".join(imo_methods),
            "--corrections", ",".join(CORRECTIONS), "--textpca-classnames", str(names),
            "--imagepca-images", str(task / "task" / "train"), "--imagepca", "abtt-1", "--save-features",
            "--tipf-batch", "4"]
    assert main(_args(task, out, *base, "--proker-views", "mean")) == 0
    results = json.loads((out / "results.json").read_text())
    (cell,) = results["cells"]
    meta = {c["name"]: c for c in results["meta"]["corrections"]}
    path = out / "features" / f"{cell['dataset']}_k2_s1.npz"
    feats = load_features(path)
    assert read_meta(read_npz(path), str(path))["correction"] == meta["imo"]
    options = MethodOptions(seed=1, tipf_batch=4, proker_views="mean", dataset="task")

    streams = {"imo": feats.val_feats_corrected}
    for name, (matrix, mean) in _hand_maps(task, names, meta).items():
        def apply(x):
            return _unit((x.astype(np.float64) - (0 if mean is None else mean)) @ matrix).astype(np.float32)
        hand = dataclasses.replace(feats, **{f"{k}_corrected": apply(getattr(feats, k)) for k in (
            "cache_keys", "cache_views", "val_feats", "test_feats")})
        streams[name] = hand.val_feats_corrected
        got = cell["corrections"][name]
        want = run_methods(hand, imo_methods, options=options)
        assert got["methods"] == {m: r.as_dict() for m, r in want.items()}, name
        assert got["settings"]["proker-imo"]["views"] == "mean" and got["settings"]["tip-f-imo"]["batch"] == 4
    assert cell["corrections"]["imo"]["methods"] == {m: cell["methods"][m] for m in imo_methods}
    for a, b in itertools.combinations(CORRECTIONS, 2):  # the streams differ, and so do the answers
        assert not np.allclose(streams[a], streams[b], atol=1e-4), (a, b)
        assert cell["corrections"][a]["methods"] != cell["corrections"][b]["methods"], (a, b)

    report_dir = tmp_path / "report"
    assert main(["report", "--results", str(out / "results.json"), "--out", str(report_dir)]) == 0
    section = (report_dir / "report.md").read_text().split("## Overlap corrections")[1]
    for method in ("tip", "proker", "ape", "tip-f"):
        row = section.split(f"| {cell['dataset']} | {method} |")[1].splitlines()[0]
        gains = [cell["corrections"][c]["methods"][f"{method}-imo"]["test_acc"] - cell["methods"][method]["test_acc"]
                 for c in CORRECTIONS]
        assert [float(v.split()[0]) for v in row.strip(" |").split("|")] == pytest.approx(gains, abs=0.006)

    # another views mode is another result: the cell is recomputed, saying why
    capsys.readouterr()
    assert main(_args(task, out, *base, "--proker-views", "all")) == 0
    assert "changed: method_options" in capsys.readouterr().err
    again = json.loads((out / "results.json").read_text())["cells"][0]
    assert again["settings"]["proker"]["views"] == "all"


def test_an_official_config_the_task_lacks_stops_the_run_before_any_work(task, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "res"
    for flag, method in (("--ape-config", "ape"), ("--tipf-config", "tip-f-imo"), ("--proker-grid", "proker")):
        assert main(_args(task, out, "--methods", f"zs,{method}", flag, "official")) == 2
        err = capsys.readouterr().err
        assert f"{flag} official: no official configuration for dataset 'task'" in err and "Traceback" not in err
        assert not out.exists() or not any(out.iterdir())
