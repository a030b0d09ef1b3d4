"""Composition of every option of every group, and every rule a user's config can break."""

from __future__ import annotations

import pytest
from conftest import CONF_DIR, compose_config, run_cli

from llmlab.config.errors import ConfigError
from llmlab.config.schema import (
    ChatDataConfig,
    HFDataConfig,
    InductionDataConfig,
    MixDataConfig,
    ModularDataConfig,
    RunConfig,
    SyntheticDataConfig,
    TasksDataConfig,
    TextDataConfig,
)
from llmlab.stages import all_stages
from llmlab.store import to_dataclass

GROUP_OPTIONS = [
    (group.name, option.stem)
    for group in sorted(CONF_DIR.iterdir()) if group.is_dir() and group.name != "experiment"  # test_sweep's
    for option in sorted(group.glob("*.yaml"))
]
SFT, DPO = ["stage=sft", "stage.init_from=x"], ["stage=dpo", "stage.init_from=x"]
NEEDS = {("data", "text"): ["data.paths=[x.txt]"], ("model", "hf"): ["model.path=models/gpt2"],
         ("data", "tasks"): SFT, ("data", "chat"): [*SFT, "data.paths=[x.jsonl]"], ("data", "task_prefs"): DPO,
         ("data", "prefs"): [*DPO, "data.paths=[x.jsonl]"], ("stage", "sft"): ["data=tasks", "stage.init_from=x"],
         ("stage", "dpo"): ["data=task_prefs", "stage.init_from=x"], ("data", "hf"): ["data.path=corpus.parquet"],
         ("data", "mix"): ["data.sources=[{path: a.txt}]"]}


OPTIONAL_GROUPS = {"debug", "recipe"}  # in no defaults list: added with +group=option


def needs(group: str, option: str) -> list[str]:
    """What an option needs to compose; a stage without an entry in NEEDS: what its schema says it takes."""
    if (group, option) in NEEDS or group != "stage":
        return NEEDS.get((group, option), [])
    config = all_stages()[option].config
    return [f"data={config.DATA_KINDS[0]}", *(["stage.init_from=x"] if config.STARTS_FROM_MODEL else [])]


@pytest.mark.parametrize("group,option", GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_option_composes_into_dataclasses(group, option):
    add = "+" if group in OPTIONAL_GROUPS else ""
    cfg = to_dataclass(compose_config([f"{add}{group}={option}", *needs(group, option)]))
    assert isinstance(cfg, RunConfig)
    assert isinstance(cfg.data, (SyntheticDataConfig, InductionDataConfig, TextDataConfig, TasksDataConfig,
                                 ChatDataConfig, HFDataConfig, MixDataConfig, ModularDataConfig))


def test_groups_cover_what_the_design_promises():
    names = {f"{g}={o}" for g, o in GROUP_OPTIONS}
    for expected in ["model=tiny", "model=small", "model=medium", "stage=pretrain", "data=synthetic", "data=text",
                     "tokenizer=char", "tokenizer=byte", "tokenizer=bpe", "tokenizer=unigram", "arch=gpt2",
                     "arch=llama", "monitors=none", "trainer=default", "stage=sft", "stage=dpo", "data=tasks",
                     "data=task_prefs", "data=chat", "data=prefs", "model=hf"]:
        assert expected in names


def test_llama_and_gpt2_presets_are_one_override_apart():
    llama = to_dataclass(compose_config([])).model
    gpt2 = to_dataclass(compose_config(["arch=gpt2"])).model
    assert (llama.positions, llama.norm, llama.mlp, llama.bias) == ("rope", "rmsnorm", "swiglu", False)
    assert (gpt2.positions, gpt2.norm, gpt2.mlp, gpt2.bias) == ("learned", "layernorm", "gelu", True)
    assert (llama.n_layers, llama.d_model) == (gpt2.n_layers, gpt2.d_model)


@pytest.mark.parametrize("overrides,field", [
    (["model.d_model=130"], "model.d_model=130 must be divisible by model.n_heads=4"),
    (["model.n_kv_heads=3"], "model.n_kv_heads=3"),
    (["trainer.lr=0"], "trainer.lr must be > 0"),
    (["trainer.lr=-1e-3"], "trainer.lr must be > 0"),
    (["trainer.batch_size=0"], "trainer.batch_size must be > 0"),
    (["trainer.max_steps=-5"], "trainer.max_steps must be > 0"),
    (["model.positions=alibi"], "model.positions: expected one of learned|rope"),
    (["model.norm=batchnorm"], "model.norm: expected one of layernorm|rmsnorm"),
    (["trainer.precision=fp8"], "trainer.precision: expected one of fp32|bf16|fp16"),
    (["tokenizer=bpe", "tokenizer.vocab_size=2"], "tokenizer.vocab_size must be >= 8"),
    (["model.dropout=1.5"], "model.dropout must be in [0, 1)"),
    (["device=tpu"], "device: expected one of"),
    (["trainer.keep_checkpoints=-1"], "trainer.keep_checkpoints must be >= 0 (0 = keep all), got -1"),
    (["trainer.strategy=zero3"], "trainer.strategy: expected one of ddp|fsdp"),
    (["stage=sft", "data=tasks", "stage.init_from=runs/a", "model.lora.rank=4", "trainer.strategy=fsdp"],
     "model.lora.rank: LoRA trains too few weights to shard; use trainer.strategy=ddp"),
])
def test_cross_field_rules_raise_one_clear_line(overrides, field):
    with pytest.raises(ConfigError) as err:
        to_dataclass(compose_config(overrides))
    assert field in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize("args,expected", [
    (["model.d_model=130"], "model.d_model=130 must be divisible by model.n_heads=4"),
    (["model=huge"], "Could not find 'model/huge'"),
    (["trainer.lr=fast"], "trainer.lr"),
    (["trainer.learning_rate=0.1"], "learning_rate"),
])
def test_cli_config_mistakes_exit_nonzero_without_traceback(tmp_path, args, expected):
    result = run_cli("llmlab.run", [*args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
