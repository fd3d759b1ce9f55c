"""``clipimo run --corrections``: every correction's "-imo" results beside the adapter's, one
encoding of the original features, and the report's method x correction section."""
from __future__ import annotations

import json

import numpy as np

from clipimo import corrections as corr
from clipimo import load_clip
from clipimo.cli import main
from clipimo.evaluate import evaluate_features
from clipimo.featurefile import load_features

from conftest import TINY, assert_png
from test_runner import _args, task  # noqa: F401  (the module fixture)

CORRECTIONS = ["imo", "isoclip", "textpca", "imagepca"]


def test_run_compares_corrections_and_reports_them(task, tmp_path, capsys):  # noqa: F811
    names = tmp_path / "classnames.txt"
    names.write_text("tench\ngoldfish\ngreat white shark\ntiger shark\nhammerhead\n")
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
