"""Issue 22, item 3: prompt templates and class names are data, never format strings."""
from __future__ import annotations

import json
import logging
import random

import numpy as np
import pytest
import torch
from conftest import TINY, make_task

from clipimo.cli.app import main
from clipimo.data.prompts import read_classnames, read_templates
from clipimo.data.templates import format_prompts
from clipimo.errors import ClipimoError

BRACES = "{}{}x.}{ _0a"


def _expected(template: str, name: str) -> str:
    """The prompt written out by hand: the text before the one '{}', the name, the text after."""
    i = template.index("{}")
    return template[:i] + name.replace("_", " ") + template[i + 2:]


@pytest.mark.parametrize("template", ["a photo of {{}}", "{x} of a {}", "a {.__class__} {}", "a {} }", "{ {} {0}"])
def test_braces_besides_the_one_slot_are_literal_and_prompts_differ_per_class(template):
    prompts = [format_prompts([template], name)[0] for name in ("cat", "dog_x", "{0}", "{}")]
    assert prompts == [_expected(template, n) for n in ("cat", "dog_x", "{0}", "{}")]
    assert len(set(prompts)) == 4


def test_property_random_brace_strings_substitute_exactly_one_slot():
    rng = random.Random(22)
    for _ in range(3000):
        template = "".join(rng.choice(BRACES) for _ in range(rng.randint(0, 12)))
        name = "".join(rng.choice(BRACES) for _ in range(rng.randint(1, 6)))
        if template.count("{}") == 1:
            assert format_prompts([template], name) == [_expected(template, name)]
        else:
            with pytest.raises(ClipimoError, match="needs exactly one '{}'"):
                format_prompts([template], name)


def test_template_files_keep_literal_braces_or_name_file_and_line(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("\ufeffa {{ {} }}\n# comment\n{x}: a {}\n")
    assert read_templates(path) == ["a {{ {} }}", "{x}: a {}"]  # BOM gone, braces kept
    path.write_text("a photo\n{{}} {}\n{x} and {{}}\n")
    with pytest.raises(ClipimoError, match=r"t\.txt: line\(s\) \[1, 2\] need exactly one '\{\}'"):
        read_templates(path)
    path.write_bytes("a {} caf\xe9\n".encode("latin-1"))
    with pytest.raises(ClipimoError, match=r"templates file .*t\.txt, line 1: not UTF-8 text \(byte 0xe9\)"):
        read_templates(path)


def test_classnames_file_drops_the_bom_and_refuses_non_utf8(tmp_path):
    path = tmp_path / "names.txt"
    path.write_bytes("\ufeffcat: a cat\ndog: a dog\n".encode("utf-8"))
    assert read_classnames(path) == {"cat": "a cat", "dog": "a dog"}
    path.write_bytes(b"cat: a cat\ndog: a d\xf6g\n")
    with pytest.raises(ClipimoError, match=r"class names file .*names\.txt, line 2: not UTF-8"):
        read_classnames(path)


def test_cli_reads_braces_as_text_and_refuses_a_bad_line_in_one_line(tmp_path, capsys):
    make_task(tmp_path)
    (tmp_path / "t.txt").write_text("a {} of {x}\n")
    argv = ["features", "--task", str(tmp_path / "task"), "--shots", "1", "--model", TINY, "--cache-dir",
            str(tmp_path / "cache"), "--templates", str(tmp_path / "t.txt"), "--out", str(tmp_path / "f.npz")]
    assert main(argv) == 0
    assert json.loads(str(np.load(tmp_path / "f.npz")["meta"]))["templates"] == ["a {} of {x}"]
    (tmp_path / "t.txt").write_text("a {} of {x}\n}\n")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].endswith("t.txt: line(s) [2] need exactly one '{}' where the class name "
                                                 "goes, e.g. 'a photo of a {}.'")


def test_two_classes_with_identical_text_weights_are_warned_about(tmp_path, caplog):
    from clipimo import FeatureExtractor, load_clip

    extractor = FeatureExtractor(load_clip(TINY), cache_dir=tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="clipimo"):
        weights = extractor.text_weights(["sea_lion", "cat", "sea lion"], ["a {{}}"])
    assert torch.equal(weights[:, 0], weights[:, 2]) and not torch.equal(weights[:, 0], weights[:, 1])
    assert "1 pair(s) of classes have identical text weights" in caplog.text
    assert "'sea_lion' and 'sea lion'" in caplog.text
