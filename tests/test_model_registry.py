"""mogen/models/registry.py is the one table of model families: the schema, the loader and the export read it."""

import pytest
from diffusers.loaders.lora_base import LoraBaseMixin

from mogen.config import ConfigError, ModelConfig, load_recipe
from mogen.export import _format
from mogen.models.diffusers_policy import DiffusersPolicy
from mogen.models.registry import FAMILIES, resolve


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_resolves_to_an_adapter_and_a_lora_format(family):
    spec = FAMILIES[family]
    adapter = resolve(spec.adapter)
    assert callable(getattr(adapter, "from_pretrained", None))
    pipeline, transformer = _format(family)
    assert issubclass(pipeline, LoraBaseMixin) and hasattr(pipeline, "save_lora_weights")
    assert transformer is resolve(spec.transformer)
    assert ModelConfig(family=family).family == family



@pytest.mark.parametrize("family", sorted(set(FAMILIES) - {"tiny"}))
def test_a_pipeline_adapter_loads_its_own_family(family):
    """The adapter's class attributes (which folder check_pipeline_folder accepts) agree with the registry's line."""
    adapter = resolve(FAMILIES[family].adapter)
    assert issubclass(adapter, DiffusersPolicy)
    assert adapter.family == family and adapter.transformer_class == FAMILIES[family].transformer.partition(":")[2]

def test_an_unknown_family_names_the_field_and_the_known_ones(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {family: sdxl}\nrewards: [{name: compressibility}]\n")
    with pytest.raises(ConfigError, match=r"model\.family: .*unknown family 'sdxl'; known: tiny, sd3, flux"):
        load_recipe(recipe)


def test_only_video_families_take_num_frames():
    assert [name for name, spec in FAMILIES.items() if spec.video] == ["wan"]
