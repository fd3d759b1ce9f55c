"""Issue 22, item 1: an output never destroys an input or a file clipimo did not write."""
from __future__ import annotations

import pytest
from conftest import TINY, make_task, put_image

from clipimo.cli.app import main


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    return err[-1]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return make_task(tmp_path_factory.mktemp("safety"))


def test_run_refuses_a_folder_it_did_not_write(task, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.csv").write_text("my own numbers\n")
    (out / "config.yaml").write_text("mine: true\n")
    code = main(["run", "--dataset", str(task / "task"), "--model", TINY, "--shots", "1", "--seeds", "1",
                 "--methods", "zs", "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    msg = _error(capsys)
    assert code == 2 and "is not a clipimo run folder" in msg and "results.csv" in msg
    assert (out / "results.csv").read_text() == "my own numbers\n"
    assert (out / "config.yaml").read_text() == "mine: true\n"
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "results.csv"]  # no lock left behind


def test_run_resumes_its_own_folder_recognised_by_its_record(task, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", "--dataset", str(task / "task"), "--model", TINY, "--shots", "1", "--seeds", "1",
            "--methods", "zs", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    assert '"format": "clipimo-run"' in (out / "run.json").read_text()
    assert main(argv) == 0  # the same folder again: a resume, not a refusal
    (out / "run.json").write_text('{"fingerprint": "a user file named run.json"}')
    assert main(argv) == 2 and "is not a clipimo run folder" in _error(capsys)


@pytest.mark.parametrize("argv, flag, source", [
    (["predict", "--classifier", "{clf}", "--images", "{list}", "--out", "{list}"], "--out", "--images"),
    (["predict", "--classifier", "{clf}", "--images", "{list}", "--out", "{link}"], "--out", "--images"),
    (["results", "merge", "{list}", "--out", "{list}"], "--out", "RUN_DIR"),
])
def test_no_command_writes_over_its_own_input(tmp_path, capsys, argv, flag, source):
    files = {"clf": tmp_path / "c.safetensors", "list": tmp_path / "list.csv", "link": tmp_path / "link.csv"}
    files["clf"].write_bytes(b"x")
    files["list"].write_text("path,label\na.png,0\n")
    files["link"].symlink_to(files["list"])
    assert main([a.format(**files) for a in argv]) == 2
    msg = _error(capsys)
    assert f"{flag} " in msg and f"is also the {source} input" in msg
    assert files["list"].read_text() == "path,label\na.png,0\n"


def test_evaluate_outputs_that_name_the_features_file_are_refused(tmp_path, capsys):
    feats = tmp_path / "f.npz"
    feats.write_bytes(b"not read")
    for extra in (["--json", str(feats)], ["--save-classifier", str(feats)]):
        assert main(["evaluate", "--features", str(feats), *extra]) == 2
        msg = _error(capsys)
        assert str(feats) in msg and ("ending in .json" in msg or "ending in .safetensors" in msg)
    link = tmp_path / "f.json"
    link.symlink_to(feats)
    assert main(["evaluate", "--features", str(feats), "--json", str(link)]) == 2
    assert "is also the --features input" in _error(capsys)
    assert feats.read_bytes() == b"not read"


def test_output_suffix_must_match_the_format(tmp_path, capsys):
    png = put_image(tmp_path / "x.png")
    before = png.read_bytes()
    assert main(["features", "--images", str(tmp_path / "imgs"), "--out", str(png)]) == 2
    msg = _error(capsys)
    assert msg == (f"clipimo features: error: --out {png}: a features file is written as .npz; "
                   "give a path ending in .npz")
    assert png.read_bytes() == before


def test_adapter_card_keeps_files_it_did_not_write_unless_forced(task, tmp_path, capsys):
    out = tmp_path / "card"
    out.mkdir()
    (out / "README.md").write_text("my project notes\n")
    adapter = str(task / "adapter.safetensors")
    assert main(["adapter", "card", adapter, "--out", str(out)]) == 2
    assert "README.md, not written by 'clipimo adapter card'" in _error(capsys)
    assert (out / "README.md").read_text() == "my project notes\n"
    assert not (out / "adapter.safetensors").exists()
    assert main(["adapter", "card", adapter, "--out", str(out), "--force"]) == 0
    assert "IMO adapter" in (out / "README.md").read_text()
    assert main(["adapter", "card", adapter, "--out", str(out)]) == 0  # its own card: rewritten freely


def test_out_inside_a_data_split_is_refused(task, tmp_path, capsys):
    split = task / "task" / "train"
    code = main(["run", "--dataset", str(task / "task"), "--model", TINY, "--out", str(split / "results")])
    assert code == 2 and f"is inside the train split of --dataset {split}" in _error(capsys)
    assert not (split / "results").exists()
    code = main(["features", "--images", str(split), "--out", str(split / "red" / "f.npz")])
    assert code == 2 and "is inside the data folder --images" in _error(capsys)


@pytest.mark.parametrize("command", ["run", "shift"])
def test_out_inside_a_benchmark_folder_under_root_is_refused(tmp_path, capsys, command):
    """ImageNet and its shift sets list their images by walking folders: a report's figures written
    there would join the data of the next run."""
    root = tmp_path / "data"
    target = root / "imagenet-rendition" / "imagenet-r" / "results"
    (root / "imagenet" / "images").mkdir(parents=True)
    target.parent.mkdir(parents=True)
    args = {"run": ["--dataset", "ImageNet"], "shift": ["--targets", "ImageNetR"]}[command]
    code = main([command, "--root", str(root), *args, "--model", TINY, "--out", str(target)])
    assert code == 2 and f"is inside the ImageNetR folder under --root {root / 'imagenet-rendition'}" in _error(capsys)
    assert not target.exists()
    main([command, "--root", str(root), *args, "--model", TINY, "--out", str(tmp_path / "elsewhere")])
    assert "is inside" not in _error(capsys)  # outside every benchmark folder: the path check lets it pass


def test_overlap_keeps_a_figure_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "figs"
    put_image(out / "overlap.png")
    before = (out / "overlap.png").read_bytes()
    assert main(["overlap", "--features", str(tmp_path / "f.npz"), "--out", str(out)]) == 2
    assert _error(capsys) == (f"clipimo overlap: error: {out} already holds overlap.png, not written by clipimo "
                              "overlap: writing there would replace them; choose another --out folder")
    assert (out / "overlap.png").read_bytes() == before
