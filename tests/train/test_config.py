"""The paper preset composes with the recipe's values ([R] microsoft/LoRA examples/NLG README,
gpt2_ft.py, gpt2_beam.py; [P] Hu et al. 2021 Table 11), and every value line of the preset
carries a citation comment that points at the paper or the original code, never at a file
outside the repository. Then the table-driven composition checks of every
experiment and every sweep × experiment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.train.app import CONF_DIR, compose

PAPER = "experiment=e2e_paper_gpt2m"


def test_paper_preset_matches_reference():
    cfg = compose([PAPER])
    assert cfg.model.name == "gpt2-medium"
    assert cfg.task.name == "e2e"
    lora, opt, tr, dec = cfg.lora, cfg.optim, cfg.trainer, cfg.task.decode
    assert (lora.r, lora.alpha, lora.targets, lora.dropout) == (4, 32, "qv", 0.1)
    assert lora.alpha / lora.r == 8  # "α=32 (scale 8)"
    assert opt.name == "adamw" and opt.lr == 2e-4
    assert (opt.b1, opt.b2, opt.eps, opt.weight_decay) == (0.9, 0.999, 1e-6, 0.01)
    assert (opt.warmup_steps, opt.schedule) == (500, "linear")
    assert opt.label_smoothing == 0.1 and opt.grad_clip is None and opt.grad_accum == 1
    assert (tr.batch_size, tr.epochs, tr.max_steps) == (8, 5, None)
    assert cfg.task.max_len == 512
    assert (dec.num_beams, dec.length_penalty, dec.no_repeat_ngram_size, dec.max_new_tokens) == (
        10, 0.9, 4, 64,
    )  # fmt: skip
    assert cfg.seed == 110
    assert cfg.name == "gpt2-medium-e2e-q,v-r4-a32-s110"


@pytest.mark.parametrize("path", ["experiment/e2e_paper_gpt2m.yaml", "lora/e2e_paper.yaml"])
def test_paper_preset_every_value_line_is_cited(path):
    lines = (Path(CONF_DIR) / path).read_text(encoding="utf-8").splitlines()
    uncited = []
    for line in lines:
        s = line.strip()
        if not s or s.startswith("#") or s.startswith("- "):
            continue  # comments, the defaults list entries
        key, _, value = s.partition(":")
        value = value.split("#", 1)[0].strip()
        if not value:
            continue  # a group header ("lora:") or "defaults:"
        if key in ("sweep", "sweep_name"):
            continue  # bookkeeping, not a recipe value
        comment = s.split("#", 1)[1] if "#" in s else ""
        if not re.search(r"\[(P|R|M)\]|Table \d+", comment) or "REFERENCE" in comment:
            uncited.append(line)
    assert not uncited, "value lines without a citation comment:\n" + "\n".join(uncited)


@pytest.mark.parametrize("experiment", ["e2e_paper_gpt2m", "e2e_offline_smollm2"], ids=lambda e: e)
def test_experiments_compose_with_debug(experiment, monkeypatch):
    monkeypatch.setenv("LORA_JAX_E2E_DIR", "/data/e2e")
    cfg = compose([f"experiment={experiment}", "debug=tiny"])
    assert cfg.trainer.max_steps == 4 and cfg.task.max_eval_items == 4


def test_citations_never_point_outside_the_repository():
    # Sources are the paper, the original code or a public page; REFERENCE.md is a workplace
    # note that is not shipped with the repository.
    root = Path(__file__).parents[2]
    files = [p for d in ("lora_jax", "conf") for p in (root / d).rglob("*") if p.suffix in (".py", ".yaml")]  # fmt: skip
    assert files
    offenders = [str(p.relative_to(root)) for p in files if "REFERENCE.md" in p.read_text()]
    assert not offenders, f"cite the paper or the original code instead: {offenders}"


# ---------------------------------------------------------------- composition without leaks
# Expected values are read from the YAML files themselves (OmegaConf.load, no Hydra), layered in
# the order the files claim: the group files selected (root defaults, replaced by the
# experiment's overrides, then by the sweep's swept groups) < the experiment's body < the variant
# (conf/variant/, placed after the experiment in the root defaults) < the sweep's body < the
# sweep's swept values. Hydra's composition must give exactly these values: a root
# value after `_self_`, or an experiment value that a sweep's group swap cannot replace, fails.

CONF = Path(CONF_DIR)
GROUPS = ("model", "task", "lora", "optim", "trainer", "logger")
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml") if p.stem != "required")
SWEEPS = sorted(p.stem for p in (CONF / "sweep").glob("*.yaml"))


def _load(path: Path) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out |= _flat(v, key) if isinstance(v, dict) and v else {key: v}
    return out


def _choices(defaults: list) -> dict:
    """{group: option} from a defaults list's `group: option` / `override /group: option`."""
    out = {}
    for entry in defaults:
        if isinstance(entry, dict):
            ((key, value),) = entry.items()
            group = key.removeprefix("override ").strip("/")
            if group in GROUPS:
                out[group] = value
    return out


def _choices_of(defaults: list, group: str):
    """The option a defaults list picks for one group outside GROUPS (None when it picks none)."""
    for entry in defaults:
        if isinstance(entry, dict):
            ((key, value),) = entry.items()
            if key.removeprefix("override ").strip("/") == group:
                return value
    return None


def _body(tree: dict) -> dict:
    return _flat({k: v for k, v in tree.items() if k not in ("defaults", "hydra")})


def _parse(value: str):
    """A swept value as Hydra's override grammar reads it (YAML 1.1 reads 3e-3 as a string)."""
    import yaml

    parsed = yaml.safe_load(value)
    if isinstance(parsed, str):
        try:
            return float(parsed)
        except ValueError:
            pass
    return parsed


def _expected(experiment: str, sweep: str | None, k: int) -> tuple[dict, list[str]]:
    """The values the files state for experiment × sweep at the k-th swept combination, and
    the overrides that select that combination."""
    root = _load(CONF / "config.yaml")
    exp = _load(CONF / "experiment" / f"{experiment}.yaml")
    choices = _choices(root["defaults"]) | _choices(exp.get("defaults", []))
    variant = _choices_of(root["defaults"], "variant") or _choices_of(
        exp.get("defaults", []), "variant"
    )
    swept_groups, swept_values, overrides, sweep_body = {}, {}, [], {}
    if sweep:
        sw = _load(CONF / "sweep" / f"{sweep}.yaml")
        sweep_body = _body(sw)
        for key, values in sw["hydra"]["sweeper"]["params"].items():
            items = str(values).split(",")
            value = items[k % len(items)]
            overrides.append(f"{key}={value}")
            if key == "variant":
                variant = value
            else:
                (swept_groups if key in GROUPS else swept_values)[key] = value
    expected = {}
    for group in GROUPS:
        if group not in swept_groups:
            expected |= _flat(_load(CONF / group / f"{choices[group]}.yaml"), group)
    expected |= _body(exp)
    for group, option in swept_groups.items():
        expected |= _flat(_load(CONF / group / f"{option}.yaml"), group)
    if variant:
        expected |= _body(_load(CONF / "variant" / f"{variant}.yaml"))
    expected |= sweep_body | {k: _parse(v) for k, v in swept_values.items()}
    return expected, overrides


def _check(overrides: list[str], expected: dict) -> None:
    from omegaconf import OmegaConf

    cfg = compose(overrides)
    got = _flat(OmegaConf.to_container(cfg, resolve=False))
    wrong = {k: (v, got.get(k, "<absent>")) for k, v in expected.items() if got.get(k) != v}
    assert not wrong, f"{overrides}: stated value vs composed value: {wrong}"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_to_its_files(experiment):
    expected, _ = _expected(experiment, None, 0)
    _check([f"experiment={experiment}"], expected)


@pytest.mark.parametrize("sweep", SWEEPS)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_sweep_x_experiment_composes_to_its_files(sweep, experiment):
    """Every sweep with every experiment; over the experiments, every swept value of every
    axis at least once (combination k goes to experiment k mod the number of experiments)."""
    sw = _load(CONF / "sweep" / f"{sweep}.yaml")
    n = max(len(str(v).split(",")) for v in sw["hydra"]["sweeper"]["params"].values())
    e = EXPERIMENTS.index(experiment)
    for k in range(e, max(n, len(EXPERIMENTS)), len(EXPERIMENTS)):
        expected, overrides = _expected(experiment, sweep, k)
        _check([f"experiment={experiment}", f"+sweep={sweep}", *overrides], expected)


def test_root_is_neutral_and_the_demo_is_the_default():
    root = _load(CONF / "config.yaml")
    assert set(root) == {"defaults", "seed", "sweep_name", "name", "hydra"}, set(root)
    assert {"experiment": "demo"} in root["defaults"]
    from omegaconf import OmegaConf

    plain, demo = compose([]), compose(["experiment=demo"])
    assert OmegaConf.to_container(plain) == OmegaConf.to_container(demo)
    assert (demo.optim.lr, demo.trainer.max_steps) == (1e-3, 40)
    # experiment=X replaces the demo: none of its values reach another experiment
    other = compose(["experiment=e2e_offline_smollm2"])
    assert (other.optim.lr, other.optim.warmup_steps, other.trainer.max_steps) == (2e-4, 0, None)


def test_the_leak_check_catches_a_root_value(tmp_path, monkeypatch):
    """The table's check fails when the root sets an experiment value after `_self_` (the bug of
    issue 9: optim.lr 1e-3 reaching every experiment)."""
    import shutil

    import tests.train.test_config as me

    leaky = tmp_path / "conf"
    shutil.copytree(CONF, leaky, symlinks=True)
    (leaky / "config.yaml").write_text(
        (CONF / "config.yaml").read_text() + "optim:\n  lr: 1.0e-3\n"
    )
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    def leaky_compose(overrides):
        with initialize_config_dir(config_dir=str(leaky), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=overrides)

    monkeypatch.setattr(me, "compose", leaky_compose)
    expected, _ = _expected("e2e_offline_smollm2", None, 0)
    with pytest.raises(AssertionError, match="optim.lr"):
        _check(["experiment=e2e_offline_smollm2"], expected)


def test_sweep_without_experiment_stops_naming_the_experiments():
    """`+sweep=NAME` alone selects conf/experiment/required.yaml, whose Hydra callback stops the
    multirun before its first job (checked by hand: no sweep dir is created) with a message
    naming the experiments to pick."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hydra_compose("config", ["+sweep=rank_table"], return_hydra_config=True)
        picked = hydra_compose(
            "config", ["+sweep=rank_table", "experiment=demo"], return_hydra_config=True
        )
    assert cfg.hydra.runtime.choices.experiment == "required"
    # an explicit experiment (even the demo) runs; the run guards of conf/config.yaml stay
    assert "sweep_needs_experiment" not in picked.hydra.callbacks
    callback = instantiate(cfg.hydra.callbacks.sweep_needs_experiment)
    with pytest.raises(SystemExit) as stop:
        callback.on_multirun_start(config=cfg)
    message = str(stop.value)
    assert "+sweep=rank_table needs an experiment" in message
    for name in EXPERIMENTS:
        assert name in message


def test_alpha_is_a_constant_never_tied_to_r():
    """α defaults to 8 in every lora/ preset whatever r is (PEFT's default; the paper keeps α
    fixed across r), and `lora.alpha=null` (the old "α = r") fails at composition."""
    for r in (1, 64):
        cfg = compose([f"lora.r={r}"])
        assert cfg.lora.alpha == 8.0 and cfg.name.endswith(f"-r{r}-a8-s0")
    with pytest.raises(Exception, match="alpha"):
        compose(["lora.alpha=null"])
