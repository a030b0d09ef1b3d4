"""Free text on the command line (a prompt, a system prompt, the text analysed, the samples' prompt) reaches
llmlab exactly as the shell passed it: commas, quotes, apostrophes, `=`, trailing spaces, non-ASCII letters."""

from __future__ import annotations

import pytest
import yaml
from conftest import compose_config, run_cli
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from llmlab.config.argv import TEXT_KEYS, quote_overrides
from llmlab.config.commands import GenerateConfig
from llmlab.config.errors import ConfigError
from llmlab.store import CONF_DIR, register_configs

TEXTS = ["Hello, who are you?", "it's", 'she said "no"', "a=b, c=d", "The ", "  both  ", "héllo wörld, 日本語",
         "null", "[1, 2]", "${seed}", "\\${seed}", "ends in a backslash\\", "a\\'b", "", "1e3", "true"]

# each text key in the command whose config holds it
COMMANDS = {"prompt": ("generate", ["run=x"]), "system": ("chat", ["run=x"]), "text": ("analyze", ["run=x"]),
            "trainer.sample_prompt": ("config", [])}


def composed(config: str, overrides: list[str]):
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return compose(config, overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


def test_every_text_key_composes_to_the_text_as_typed():
    assert set(COMMANDS) == TEXT_KEYS
    for key, (config, base) in COMMANDS.items():
        for text in TEXTS:
            cfg = composed(config, [*base, *quote_overrides([f"{key}={text}"])])
            got = cfg
            for part in key.split("."):
                got = got[part]
            assert got == text and isinstance(got, str), (key, text, got)


def test_a_text_value_is_taken_literally_even_when_it_looks_like_a_sweep_or_a_quoted_string():
    assert composed("generate", ["run=x", *quote_overrides(["prompt='a, b'"])]).prompt == "'a, b'"
    assert compose_config(quote_overrides(["trainer.sample_prompt=a,b"])).trainer.sample_prompt == "a,b"
    # paths keep their old rule: quoted only where Hydra would misread them, so a sweep over runs still sweeps
    assert quote_overrides(["stage.init_from=a,b", "prompt_file=null"]) == ["stage.init_from=a,b", "prompt_file=null"]


def test_prompt_file_gives_the_file_text_less_its_final_newline(tmp_path):
    path = tmp_path / "prompt.txt"
    text = "Line one, with 'quotes'.\nLine two ends in a space "
    path.write_text(text + "\n", encoding="utf-8")
    assert GenerateConfig(run="x", prompt_file=str(path)).prompt == text
    with pytest.raises(ConfigError, match="prompt_file"):
        GenerateConfig(run="x", prompt="also", prompt_file=str(path))
    with pytest.raises(ConfigError, match=r"prompt_file=.*missing\.txt: expected a readable UTF-8 text file"):
        GenerateConfig(run="x", prompt_file=str(tmp_path / "missing.txt"))


@pytest.mark.slow
def test_the_real_command_line_passes_text_through_unchanged(tmp_path):
    text = "Hello, who's \"there\"? a=b  ü "
    for module, key, base in (("llmlab.run", "trainer.sample_prompt", []), ("llmlab.generate", "prompt", ["run=x"]),
                              ("llmlab.chat", "system", ["run=x"]), ("llmlab.analyze", "text", ["run=x"])):
        done = run_cli(module, ["--cfg", "job", *base, f"{key}={text}"], cwd=tmp_path, timeout=60)
        assert done.returncode == 0, done.stderr
        got = yaml.safe_load(done.stdout)
        for part in key.split("."):
            got = got[part]
        assert got == text, (module, got)


@pytest.mark.slow
def test_generate_continues_the_prompt_as_typed_and_from_a_prompt_file(cli_runs, tmp_path):
    prompt = "Dubo, the 'small' one, said: a=b. "
    path = tmp_path / "prompt.txt"
    path.write_text(prompt + "\n", encoding="utf-8")
    for run in ("base", "sft"):
        outputs = []
        for given in (f"prompt={prompt}", f"prompt_file={path}"):
            done = run_cli("llmlab.generate", [f"run={cli_runs / run}", given, "max_new_tokens=8", "temperature=0",
                                               "device=cpu"], cwd=tmp_path, timeout=120)
            assert done.returncode == 0, done.stderr
            sample = done.stdout.split("--- sample 1\n", 1)[1]
            assert sample.startswith(f"user: {prompt}\nassistant: " if run == "sft" else prompt), sample
            outputs.append(sample)
        assert outputs[0] == outputs[1]  # the same text from the command line and from the file
