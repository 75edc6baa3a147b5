"""A diffusers/transformers folder's own config.json and a tokenizer folder's declared class are the truth;
failures are ModelFileErrors naming the file (docs/models.md, "Folders: their config is the truth").

The odd-sized folder is engine/zoo/flux1_odd.py (its parity with FluxPipeline: tests/parity/).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engine.models.common.safetensors_io import ModelFileError
from engine.models.flux1.checkpoint import load_flux_checkpoint
from engine.models.flux1.text_encoders import load_flux_text_encoders
from engine.models.flux1.tokenizer_files import load_tokenizer_dir
from engine.models.flux1.transformer import load_flux_transformer
from engine.models.flux1.vae import load_flux_vae
from engine.zoo.flux1_odd import write_odd_flux1_folder
from engine.zoo.tokenizers import make_clip_tokenizer

pytestmark = pytest.mark.usefixtures("single_torch_thread")

PROMPT = "A Photo of a Cat"


@pytest.fixture(scope="module")
def odd(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("odd") / "flux1-odd-dev"
    write_odd_flux1_folder(folder)
    return folder


@pytest.fixture()
def copy(odd: Path, tmp_path: Path) -> Path:
    """A copy of the odd folder a test may break."""
    target = tmp_path / "broken"
    shutil.copytree(odd, target)
    return target


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(changes)
    path.write_text(json.dumps(data), encoding="utf-8")


def test_each_part_is_built_from_its_folder_config(odd: Path) -> None:
    model, encoders, vae = load_flux_checkpoint(odd)
    assert model.variant == "dev"
    assert model.transformer.config.attention_head_dim == 16
    assert list(model.transformer.config.axes_dims_rope) == [4, 6, 6]  # the convention would say (2, 7, 7)
    assert encoders.clip.config.num_attention_heads == 6  # 8 wide; the convention: 64
    assert encoders.t5.config.relative_attention_max_distance == 64  # not visible in the weights
    assert vae.vae.config.norm_num_groups == 4  # the convention: 32
    # the separate loaders read the same folder the same way
    assert load_flux_transformer(odd).transformer.config.axes_dims_rope == model.transformer.config.axes_dims_rope
    assert load_flux_vae(odd / "vae").vae.config.norm_num_groups == 4
    pair = load_flux_text_encoders([odd / "text_encoder_2", odd / "text_encoder"])
    assert pair.clip.config.num_attention_heads == 6


def test_a_folder_config_that_contradicts_its_weights_is_refused(copy: Path) -> None:
    _edit_json(copy / "transformer" / "config.json", num_attention_heads=8)
    with pytest.raises(ModelFileError, match="shape") as info:
        load_flux_transformer(copy)
    assert str(copy / "transformer") in str(info.value)


def test_unusable_rope_axes_are_refused_at_loading(copy: Path) -> None:
    _edit_json(copy / "transformer" / "config.json", axes_dims_rope=[2, 7, 7])
    with pytest.raises(ModelFileError, match="axes_dims_rope"):
        load_flux_transformer(copy)


@pytest.mark.parametrize("part,changes,loader", [
    ("vae", {"norm_num_groups": 5}, load_flux_vae),  # 5 does not divide the channels: torch's ValueError
    ("text_encoder", {"hidden_size": 50}, lambda p: load_flux_text_encoders([p])),  # 50 / 6 heads
    ("text_encoder", {"model_type": "no_such_model"}, lambda p: load_flux_text_encoders([p])),
])
def test_library_errors_from_a_folder_config_are_model_file_errors(copy: Path, part, changes, loader) -> None:
    _edit_json(copy / part / "config.json", **changes)
    with pytest.raises(ModelFileError) as info:
        loader(copy / part)
    assert str(copy / part) in str(info.value)


def test_a_config_that_is_not_an_object_is_refused(copy: Path) -> None:
    (copy / "vae" / "config.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ModelFileError, match="JSON object"):
        load_flux_vae(copy / "vae")


def test_the_declared_tokenizer_class_is_used(odd: Path) -> None:
    from transformers import AutoTokenizer, CLIPTokenizer

    ours = load_tokenizer_dir(odd / "tokenizer", "clip_l")
    declared = AutoTokenizer.from_pretrained(str(odd / "tokenizer"), local_files_only=True)
    assert ours(PROMPT).input_ids == declared(PROMPT).input_ids
    forced = CLIPTokenizer.from_pretrained(str(odd / "tokenizer"), local_files_only=True)
    assert forced(PROMPT).input_ids != ours(PROMPT).input_ids  # forcing CLIPTokenizer lowercases: other ids


def test_a_t5_slot_holding_another_declared_tokenizer_loads(tmp_path: Path) -> None:
    """Forcing T5Tokenizer on a BPE folder crashes inside transformers; the declared class loads."""
    folder = tmp_path / "bpe"
    make_clip_tokenizer().save_pretrained(str(folder))
    _edit_json(folder / "tokenizer_config.json", tokenizer_class="CLIPTokenizerFast")
    tokenizer = load_tokenizer_dir(folder, "t5xxl")
    assert tokenizer(PROMPT).input_ids == make_clip_tokenizer()(PROMPT).input_ids


def test_without_a_declared_class_the_kind_decides(tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    make_clip_tokenizer().save_pretrained(str(folder))
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("tokenizer_class", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    assert load_tokenizer_dir(folder, "clip_l")(PROMPT).input_ids == make_clip_tokenizer()(PROMPT).input_ids


@pytest.mark.parametrize("change", ["no tokenizer.json", "not json"])
def test_a_bad_tokenizer_folder_is_a_model_file_error(copy: Path, change) -> None:
    path = copy / "tokenizer" / "tokenizer_config.json"
    if change == "no tokenizer.json":  # declared PreTrainedTokenizerFast, nothing to build it from
        (copy / "tokenizer" / "tokenizer.json").unlink()
    else:
        path.write_text(change, encoding="utf-8")
    with pytest.raises(ModelFileError) as info:
        load_tokenizer_dir(copy / "tokenizer", "clip_l")
    assert str(copy / "tokenizer") in str(info.value)


def test_flux2_folders_are_built_from_their_config(tmp_path: Path) -> None:
    """FLUX.2 too: rope theta and batch-norm eps live only in config.json."""
    from engine.models.flux2.transformer import load_flux2_transformer
    from engine.models.flux2.vae import load_flux2_vae
    from tests.support.flux import zoo_base

    folder = tmp_path / "flux2-klein-4b-tiny"
    shutil.copytree(zoo_base() / "models" / "diffusers" / "flux2-klein-4b-tiny", folder)
    _edit_json(folder / "transformer" / "config.json", rope_theta=500)
    _edit_json(folder / "vae" / "config.json", batch_norm_eps=0.25)
    assert load_flux2_transformer(folder).transformer.config.rope_theta == 500
    assert load_flux2_vae(folder).vae.inner.config.batch_norm_eps == 0.25


@pytest.mark.parametrize("index", ['{"weight_map": ["a"]}', '{"weight_map": {"x": 3}}', "[]"])
def test_a_broken_shard_index_is_a_model_file_error(copy: Path, index: str) -> None:
    weights = copy / "vae" / "diffusion_pytorch_model.safetensors"
    weights.unlink()
    (copy / "vae" / "diffusion_pytorch_model.safetensors.index.json").write_text(index, encoding="utf-8")
    with pytest.raises(ModelFileError, match="invalid shard index"):
        load_flux_vae(copy / "vae")


def test_a_flux2_text_encoder_config_the_library_refuses_is_a_model_file_error(tmp_path: Path) -> None:
    from engine.models.flux2.text_encoders import load_flux2_text_encoder
    from tests.support.flux import zoo_base

    folder = tmp_path / "klein"
    shutil.copytree(zoo_base() / "models" / "diffusers" / "flux2-klein-4b-tiny", folder)
    config = json.loads((folder / "text_encoder" / "config.json").read_text(encoding="utf-8"))
    _edit_json(folder / "text_encoder" / "config.json",
               num_attention_heads=config["num_attention_heads"] + 1, head_dim=None)
    with pytest.raises(ModelFileError) as info:
        load_flux2_text_encoder(folder)
    assert str(folder / "text_encoder") in str(info.value)
