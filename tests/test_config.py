"""Recipes: includes, --set overrides and one-line errors that name the file and the field."""

from pathlib import Path

import pytest

from mogen.config import ConfigError, Recipe, apply_override, load_recipe, recipe_to_yaml


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


MIX = "rewards:\n  - {name: toy_verifier, kwargs: {attribute: count}}\n  - {name: toy_verifier, kwargs: {attribute: position}}\n"


def test_include_merges_and_file_overrides(tmp_path: Path) -> None:
    _write(tmp_path, "rewards/mix.yaml", MIX + "rollout: {group_size: 4}\n")
    recipe_path = _write(tmp_path, "r.yaml", "include: [rewards/mix.yaml]\nrollout: {group_size: 6}\n")
    recipe = load_recipe(recipe_path)
    assert [r.key for r in recipe.rewards] == ["toy_verifier_count", "toy_verifier_position"]
    assert recipe.rollout.group_size == 6
    assert recipe.rollout.prompts_per_batch == 4  # default kept


def test_set_overrides_nested_values_and_list_items(tmp_path: Path) -> None:
    recipe_path = _write(tmp_path, "r.yaml", MIX)
    recipe = load_recipe(recipe_path, ["rollout.group_size=12", "rewards.1.weight=0.25", "sampler.train_window=[1, 4]"])
    assert recipe.rollout.group_size == 12
    assert recipe.rewards[1].weight == 0.25
    assert recipe.sampler.train_window == (1, 4)


def test_resolved_recipe_round_trips_through_yaml(tmp_path: Path) -> None:
    recipe = load_recipe(_write(tmp_path, "r.yaml", MIX))
    again = load_recipe(_write(tmp_path, "resolved.yaml", recipe_to_yaml(recipe)))
    assert again == recipe


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rollout: {group_sise: 4}\n" + MIX, "rollout.group_sise: unknown field 'group_sise'; allowed: prompts_per_batch, group_size"),
        ("rollout: {group_size: 1}\n" + MIX, "rollout.group_size: Input should be greater than or equal to 2 (got 1)"),
        ("algorithm: {name: ppo}\n" + MIX, "algorithm.name: Input should be 'dppo', 'grpo', 'nft' or 'awm' (got 'ppo')"),
        ("sampler: {train_window: [0, 20]}\n" + MIX, "sampler: train_window must satisfy 0 <= start < end <= num_steps (10)"),
        ("model: {}\n", "rewards: Field required"),
        ("rewards: [{name: a}, {name: a}]\n", "objectives need distinct labels, repeated: ['a']"),
        ("prompts: {source: file}\n" + MIX, "prompts: path is required when source is 'file'"),
    ],
)
def test_errors_name_file_and_field(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_missing_file_bad_yaml_include_cycle_and_bad_set(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(_write(tmp_path, "broken.yaml", "rollout: {group_size: [\n"))
    with pytest.raises(ConfigError, match="include: file not found: missing.yaml"):
        load_recipe(_write(tmp_path, "inc.yaml", "include: missing.yaml\n"))
    _write(tmp_path, "a.yaml", "include: b.yaml\n")
    _write(tmp_path, "b.yaml", "include: a.yaml\n")
    with pytest.raises(ConfigError, match="include cycle"):
        load_recipe(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_override({}, "rollout.group_size")
    with pytest.raises(ConfigError, match="not an index"):
        apply_override({"rewards": [{}]}, "rewards.3.weight=1")


def test_yaml_tags_cannot_construct_python_objects(tmp_path: Path) -> None:
    path = _write(tmp_path, "evil.yaml", "rewards: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(path)


def test_defaults_follow_the_paper() -> None:
    recipe = Recipe.model_validate({"rewards": [{"name": "x"}]})
    assert (recipe.lora.rank, recipe.lora.alpha) == (32, 64)
    assert recipe.optim.lr == 3e-4 and recipe.sampler.num_steps == 10 and recipe.sampler.train_steps == 3
    assert recipe.algorithm.name == "dppo" and recipe.advantage.mode == "per_objective"
