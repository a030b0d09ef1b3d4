"""`python -m llmlab.generate run=<run dir> prompt="..."`: sample from a trained run's latest checkpoint. A
pretrain run's sample is the prompt and its continuation; a chat run's is the prompt and the reply, each on its
own line after `user: ` and `assistant: `."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from llmlab.config.argv import quote_arguments
from llmlab.config.commands import GenerateConfig
from llmlab.config.errors import exit_on_config_error
from llmlab.sampling import completions
from llmlab.store import CONF_DIR, to_dataclass


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="generate")
def main(cfg: DictConfig) -> None:
    with exit_on_config_error():
        gen_cfg: GenerateConfig = to_dataclass(cfg)
        prompts = gen_cfg.prompts or [gen_cfg.prompt]
        samples = completions(gen_cfg)
    for n, sample in enumerate(samples):
        prompt = prompts[n // gen_cfg.num_samples]
        shown = f"user: {prompt}\nassistant: {sample.text}" if sample.reply else f"{prompt}{sample.text}"
        print(f"--- sample {n + 1}\n{shown}")


if __name__ == "__main__":
    quote_arguments()
    main()
