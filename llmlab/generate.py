"""`python -m llmlab.generate run=<run dir> prompt="..."`: sample from a trained run's latest checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from llmlab.config.errors import ConfigError, check_positive, exit_on_config_error
from llmlab.config.store import CONF_DIR, to_dataclass


@dataclass
class GenerateConfig:
    run: str = "???"  # a run directory or checkpoint directory
    prompt: str = ""
    prompts: list[str] = field(default_factory=list)  # several prompts, one left-padded batch
    num_samples: int = 1  # samples per prompt
    max_new_tokens: int = 200
    temperature: float = 0.8  # 0 = greedy
    top_k: int = 50
    top_p: float = 0.9
    repetition_penalty: float = 1.0
    use_cache: bool = True
    stop_at_eos: bool = True  # stop a sample at the end of its document (a chat run: of its reply)
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        check_positive("max_new_tokens", self.max_new_tokens)
        check_positive("num_samples", self.num_samples)
        check_positive("repetition_penalty", self.repetition_penalty)
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")


ConfigStore.instance().store(name="base_generate", node=GenerateConfig)


def complete(cfg: GenerateConfig) -> list[str]:
    """Completions, num_samples per prompt, in prompt order (without the prompt text)."""
    import torch

    from llmlab.data.chat import Message
    from llmlab.data.chat_template import ChatTemplate
    from llmlab.load import load_trained
    from llmlab.model.generation import SamplingConfig, generate, pad_prompts
    from llmlab.runner import pick_device
    from llmlab.train.checkpoint import read_manifest

    device = pick_device(cfg.device)
    model, tokenizer, checkpoint = load_trained(cfg.run, device)
    prompts = cfg.prompts or [cfg.prompt]
    if read_manifest(checkpoint).get("stage") in ("sft", "dpo"):  # a chat model: the prompt is a user message
        template = ChatTemplate(tokenizer)
        stop, decode = template.end_id, template.decode
        encoded = [template.prompt([Message("user", p)]) for p in prompts]
    else:
        stop, decode = tokenizer.eos_id, tokenizer.decode
        encoded = [[tokenizer.bos_id, *tokenizer.encode(p)] for p in prompts]
    sampling = SamplingConfig(
        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
        repetition_penalty=cfg.repetition_penalty, use_cache=cfg.use_cache, stop_id=stop if cfg.stop_at_eos else None,
    )
    generator = torch.Generator(device).manual_seed(cfg.seed)
    # one left-padded batch, num_samples rows per prompt in prompt order; the pad id is masked, so any will do
    batch, mask = pad_prompts([e for e in encoded for _ in range(cfg.num_samples)], stop or 0, device)
    texts = []
    for ids in generate(model, batch, sampling, generator, mask)[:, batch.shape[1]:].tolist():
        if stop in ids and cfg.stop_at_eos:
            ids = ids[: ids.index(stop)]
        texts.append(decode(ids))
    return texts


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="generate")
def main(cfg: DictConfig) -> None:
    with exit_on_config_error():
        gen_cfg: GenerateConfig = to_dataclass(cfg)
        prompts = gen_cfg.prompts or [gen_cfg.prompt]
        texts = complete(gen_cfg)
    for n, text in enumerate(texts):
        prompt = prompts[n // gen_cfg.num_samples]
        print(f"--- sample {n + 1}\n{prompt}{text}")


if __name__ == "__main__":
    main()
