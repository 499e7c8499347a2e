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
    with pytest.raises(ValueError, match=r"matches no module.*h\.0\.attn\.c_attn"):
        _init(params, targets=[r"transformer\..*"])


@pytest.mark.parametrize(
    "kw, pattern",
    [
        ({"r": 0}, r"lora.r must be an integer > 0"),
        ({"r": -2}, r"lora.r must be an integer > 0"),
        ({"r": 2.5}, r"lora.r must be an integer > 0"),
        ({"alpha": 0}, r"lora.alpha must be a number > 0"),
        ({"alpha": -1.0}, r"lora.alpha must be a number > 0"),
        ({"init": "xavier"}, r"lora.init='xavier' is unknown; allowed values: gaussian, kaiming"),
        ({"scaling": "sqrt"}, r"lora.scaling='sqrt' is unknown; allowed values: standard, rslora"),
        ({"dropout": 1.5}, r"lora.dropout must be in \[0, 1\)"),
        ({"targets": []}, r"lora.targets is an empty list"),
        ({"rank_pattern": {"q": 0}}, r"rank_pattern\['q'\] must be an integer > 0"),
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
