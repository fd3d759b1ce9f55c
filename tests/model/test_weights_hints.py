"""What clipimo tells about a weights file before trusting it: the architecture its shapes imply
when it does not fit --model, and the QuickGELU warning only for files known to be OpenAI's."""
import pytest
import torch
from conftest import TINY
from safetensors.torch import save_file

from clipimo import load_clip
from clipimo.errors import ClipimoError
from clipimo.model import shapes
from clipimo.utils import log


def vit_shapes(embed: int, width: int, patch: int, image: int, layers: int, text_width: int,
               text_layers: int) -> dict[str, tuple[int, ...]]:
    """The tensors of an open_clip ViT checkpoint that tell its architecture, written out by hand."""
    out = {"visual.conv1.weight": (width, 3, patch, patch),
           "visual.positional_embedding": ((image // patch) ** 2 + 1, width), "visual.proj": (width, embed),
           "token_embedding.weight": (49408, text_width), "positional_embedding": (77, text_width),
           "text_projection": (text_width, embed), "logit_scale": ()}
    for i in range(layers):
        out[f"visual.transformer.resblocks.{i}.mlp.c_fc.weight"] = (4 * width, width)
    for i in range(text_layers):
        out[f"transformer.resblocks.{i}.mlp.c_fc.weight"] = (4 * text_width, text_width)
    return out


def test_shapes_imply_the_architecture():
    assert shapes.implied_architectures(vit_shapes(768, 1024, 14, 224, 24, 768, 12)) == ["ViT-L-14",
                                                                                        "ViT-L-14-quickgelu"]
    assert shapes.implied_architectures(vit_shapes(512, 768, 16, 224, 12, 512, 12)) == ["ViT-B-16",
                                                                                       "ViT-B-16-quickgelu"]
    assert shapes.implied_architectures(vit_shapes(512, 768, 32, 224, 12, 512, 12))[0] == "ViT-B-32"
    assert shapes.implied_architectures(vit_shapes(512, 768, 16, 224, 11, 512, 12)) == []  # no such model
    assert shapes.implied_architectures({"visual.trunk.blocks.0.attn.qkv.weight": (2304, 768)}) == []


def test_tensor_shapes_read_every_file_form(tmp_path, tiny):
    state = {k: v.contiguous() for k, v in tiny.model.state_dict().items()}
    expected = {k: tuple(v.shape) for k, v in state.items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "w.pt")
    assert shapes.tensor_shapes(tmp_path / "w.safetensors") == expected
    assert shapes.tensor_shapes(tmp_path / "w.pt") == expected
    assert shapes.implied_architectures(expected) == [TINY]


def test_weights_of_another_architecture_name_it(tmp_path, tiny):
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.model.state_dict().items()}, str(path))
    with pytest.raises(ClipimoError) as err:
        load_clip("ViT-B-16", str(path))  # --model left at its default
    assert str(err.value) == (f"weights file {path} does not fit ViT-B-16: its tensor shapes are those of {TINY}; "
                              f"pass --model {TINY}")


@pytest.mark.parametrize("name", ["vit_b16.pt", "models--timm--vit_base_patch16_clip_224.openai/snapshots/ab/x.bin",
                                  "ViT-B-16-OpenAI.safetensors", "openai/laion.safetensors"])
def test_openai_files_are_known_by_file_or_hub_repo_name(name):
    assert shapes.is_openai_file(f"/data/{name}") == (name not in ("vit_b16.pt", "openai/laion.safetensors"))


def test_quickgelu_warning_only_for_a_file_known_to_be_openais(tmp_path, capsys):
    bb = load_clip("ViT-B-16")
    plain = tmp_path / "vitb16.safetensors"
    save_file({k: v.contiguous() for k, v in bb.model.state_dict().items()}, str(plain))
    del bb
    log.configure()  # as clipimo.cli.app does: messages to this test's stderr
    load_clip("ViT-B-16", str(plain))
    assert "QuickGELU" not in capsys.readouterr().err  # may be LAION's: nothing true to warn about
    named = plain.rename(tmp_path / "vitb16-openai.safetensors")
    load_clip("ViT-B-16", str(named))
    printed = capsys.readouterr()
    assert ("WARNING: vitb16-openai.safetensors: OpenAI CLIP weights (by their name) were trained with QuickGELU, "
            "but ViT-B-16 uses plain GELU: use --model ViT-B-16-quickgelu") in printed.err
    assert printed.out == ""
    load_clip("ViT-B-16-quickgelu", str(named))
    assert "QuickGELU" not in capsys.readouterr().err
