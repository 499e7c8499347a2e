"""Bad LoRA input gets errors that name the field and the allowed values."""

import jax
import pytest

import lora_jax.lora as L
from tests.lora import toy


@pytest.fixture(scope="module")
def params():
    return toy.make()[1]


def _init(params, **kw):
    return L.init(jax.random.PRNGKey(0), params, L.LoraConfig(**kw), toy.MODULES)


def test_unknown_target_name_lists_the_targetable_modules(params):
    with pytest.raises(ValueError, match=r"q, k, v, o, up, down") as e:
        _init(params, targets=["qq"])
    assert "h.0.attn.c_attn" in str(e.value)


def test_name_missing_from_this_model(params):
    with pytest.raises(ValueError, match=r"'gate'.*q, k, v, o, up, down"):
        _init(params, targets=["gate"])


def test_regex_matching_nothing(params):
    with pytest.raises(ValueError, match=r"fullmatches no module id.*h\.0\.attn\.c_attn"):
        _init(params, targets=r"transformer\..*")
    # PEFT: a single string is a regex, so a bare module name must be a list to suffix-match.
    with pytest.raises(ValueError, match=r"pass a list, e\.g\. \[c_attn\]"):
        _init(params, targets="c_attn")


def test_list_item_matching_nothing_says_lists_are_suffix_names(params):
    with pytest.raises(ValueError, match=r"'.\*c_attn' matches no module.*suffix as in PEFT"):
        _init(params, targets=[".*c_attn"])
    with pytest.raises(ValueError, match=r"exclude_modules item 'q_proj' matches no module"):
        _init(params, targets="qv", exclude_modules=["q_proj"])


def test_layers_with_a_regex_string_is_refused_as_in_peft():
    with pytest.raises(ValueError, match=r"lora.layers cannot be combined with the regex"):
        L.LoraConfig(targets=r".*c_attn", layers=[0])


def test_peft_key_names_get_our_name():
    with pytest.raises(ValueError, match=r"'layers_to_transform' is called 'layers' here"):
        L.LoraConfig.from_dict({"layers_to_transform": [0]})


@pytest.mark.parametrize(
    "kw, pattern",
    [
        ({"r": 0}, r"lora.r=0: must be >= 1"),
        ({"r": -2}, r"lora.r=-2: must be >= 1"),
        ({"r": 2.5}, r"lora.r=2.5: must be an integer >= 1"),
        ({"alpha": 0}, r"lora.alpha=0: must be > 0"),
        ({"alpha": -1.0}, r"lora.alpha=-1.0: must be > 0"),
        ({"init": "xavier"}, r"lora.init='xavier': must be one of gaussian, kaiming"),
        ({"scaling": "sqrt"}, r"lora.scaling='sqrt': must be one of standard, rslora"),
        ({"dropout": 1.5}, r"lora.dropout=1.5: must be in \[0, 1\)"),
        ({"targets": []}, r"lora.targets is an empty list"),
        ({"targets": "c_attn("}, r"lora.targets key 'c_attn\(' is not a valid regex"),
        ({"layers": [0, "1"]}, r"lora.layers must hold integer layer indices"),
        ({"rank_pattern": {"q": 0}}, r"rank_pattern\['q'\]=0: must be >= 1"),
    ],
)
def test_bad_config_values(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        L.LoraConfig(**kw)


def test_rank_larger_than_the_matrix(params):
    with pytest.raises(
        ValueError,
        match=r"r=40 does not fit h\.0\.attn\.c_attn\.q: its block is 32x32, so r must be <= 32",
    ):
        _init(params, r=40)


def test_layer_index_out_of_range(params):
    with pytest.raises(
        ValueError, match=r"lora.layers holds \[5\], out of range: this model has 2 layers"
    ):
        _init(params, layers=[0, 5])


def test_unknown_config_key():
    with pytest.raises(ValueError, match=r"unknown lora config keys \['rank'\]"):
        L.LoraConfig.from_dict({"rank": 4})


@pytest.mark.parametrize(
    "key, value",
    [("r", 0), ("r", 2.5), ("alpha", -1.0), ("dropout", 1.5), ("init", "xavier"),
     ("scaling", "sqrt"), ("rank_pattern", {"q": 0}), ("alpha_pattern", {"q": -2.0})],
)  # fmt: skip
def test_the_library_and_the_app_check_say_the_same(key, value):
    """One validation table (lora_jax.ranges): LoraConfig's error for a bad value is the line
    the app's check before loading (lora_jax.train.checks) lists for it."""
    from lora_jax.errors import ConfigError
    from lora_jax.train.checks import config_problems

    with pytest.raises(ConfigError) as lib:
        L.LoraConfig(**{key: value})
    cfg = {"lora": {"r": 8, "alpha": 8.0, "dropout": 0.0, "init": "kaiming",
                    "scaling": "standard", key: value}}  # fmt: skip
    assert str(lib.value) in config_problems(cfg), (str(lib.value), config_problems(cfg))
