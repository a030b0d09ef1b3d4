"""`python -m llmlab.analyze run=<run dir> text="..." layers=[0,1]`: layer statistics of a trained model on one text.
`python -m llmlab.analyze model=hf model.path=<transformers model dir> ...`: the same for an imported model.

One forward (and backward) of the text through a run's latest checkpoint, observed by the training-time
DistributionMonitor and AttentionMonitor: the same statistics, JSON and figures a capture step writes, in
<out>/distribution/step_<N>/ and <out>/attention/step_<N>/, with circuits=true also <out>/circuits/step_<N>/ (the
circuit scores on the run's copy probe, or else on the text, and on the induction probe). out defaults to
<run>/analysis and N is the checkpoint's step; for an imported model out defaults to
outputs/analysis/<directory name>-<hash of its path> (models in directories of the same name never collide) and N
is 0.
With layers chosen, only those blocks' weights get gradients: a 1B model's other layers cost no gradient memory.

`python -m llmlab.analyze run=<run dir> ablate=[L1H2,L1H3]` (or ablate=[each], ablation=mean) instead switches
heads off and prints the in-context scores with and without them (llmlab.monitors.ablation), into
<out>/ablation/step_<N>/.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import hydra
from omegaconf import DictConfig

from llmlab.config.argv import quote_arguments
from llmlab.config.commands import AnalyzeConfig
from llmlab.config.errors import ConfigError, exit_on_config_error
from llmlab.rundir import RunDir
from llmlab.store import CONF_DIR, to_dataclass


def train_without_dropout(model) -> None:
    """Train mode (the distribution monitor's hooks skip eval-mode forwards) but a deterministic forward."""
    import torch.nn as nn

    model.train()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        elif isinstance(getattr(module, "dropout", None), float):  # attention passes it to SDPA
            module.dropout = 0.0


def load_for_analysis(cfg: AnalyzeConfig, device):
    """(model, tokenizer, step, default output directory, checkpoint or None) of a run or an imported model."""
    if cfg.run is None:
        from llmlab.interop.hf_import import load_pretrained_weights, pretrained_tokenizer, resolve_model_config
        from llmlab.model.transformer import Transformer

        model_cfg = resolve_model_config(cfg.model)
        tokenizer = pretrained_tokenizer(model_cfg)
        model = Transformer.uninitialized(model_cfg)
        load_pretrained_weights(model, model_cfg)
        return model.to(device), tokenizer, 0, imported_analysis_dir(model_cfg.path), None

    from llmlab.load import load_trained

    model, tokenizer, checkpoint = load_trained(cfg.run, device)
    match = re.fullmatch(r"step_(\d+)", checkpoint.name)
    if match is None or int(match[1]) < 1:
        raise ConfigError(f"run={cfg.run}: checkpoint {checkpoint.name} is not named step_<N> with N >= 1")
    return model, tokenizer, int(match[1]), RunDir.of_checkpoint(checkpoint).analysis, checkpoint


def imported_analysis_dir(model_path: str) -> Path:
    """outputs/analysis/<directory name>-<hash of its full path>: two models in directories of the same name (two
    checkpoints both called `moe`) never write into each other's analysis."""
    import hashlib

    where = Path(model_path).expanduser().resolve()
    return Path("outputs/analysis") / f"{where.name}-{hashlib.sha256(str(where).encode()).hexdigest()[:8]}"


def run_data_config(checkpoint: Path) -> dict:
    """The data node of the run holding this checkpoint, from its verified config_resolved.yaml ({} without one)."""
    from llmlab.train import checkpoint as ckpt

    recorded = ckpt.read_manifest(checkpoint).get("config_sha256")
    return RunDir.of_checkpoint(checkpoint).verified_config(recorded, checkpoint).get("data") or {}


def run_copy_probe(checkpoint: Path, tokenizer, context: int, rows: int, tokens: int):
    """The copy probe of a run trained on the embedded language (from its verified config), else None."""
    from llmlab.config.schema import SyntheticDataConfig
    from llmlab.data.copy_probe import copy_probe
    from llmlab.data.sources import annotated_validation

    data = run_data_config(checkpoint)
    if data.get("kind") != "synthetic":
        return None
    return copy_probe(annotated_validation(SyntheticDataConfig(**data)), tokenizer, rows, min(tokens, context))


def grads_only_for(model, layers: list[int]) -> None:
    """Weights outside the chosen blocks (embeddings and head included) get no gradient, so no gradient memory;
    activations still carry the gradient back through later layers to the chosen ones."""
    chosen = tuple(f"blocks.{i}." for i in layers)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(chosen))


def analyze(cfg: AnalyzeConfig) -> Path:
    """Run the monitors over one forward/backward of cfg.text; the output directory."""
    import torch
    import torch.nn.functional as F

    from llmlab.config.monitors import AttentionMonitorConfig, DistributionMonitorConfig
    from llmlab.monitors.attention import AttentionMonitor, select_layers
    from llmlab.monitors.base import AlertLog, MonitorContext, StepInfo
    from llmlab.monitors.distribution import DistributionMonitor
    from llmlab.monitors.pool import FigurePool
    from llmlab.monitors.worker import BackgroundWorker
    from llmlab.train.device import pick_device

    device = pick_device(cfg.device)
    model, tokenizer, step, default_out, checkpoint = load_for_analysis(cfg, device)
    n_layers = len(model.blocks)
    layers = None if cfg.layers is None else select_layers(cfg.layers, n_layers, "layers")
    ids = [tokenizer.bos_id, *tokenizer.encode(cfg.text)][: model.cfg.context_length]
    if len(ids) < 2:
        raise ConfigError(f"text: {cfg.text!r} encodes to {len(ids)} token(s) with the leading bos; need >= 2")
    out = Path(cfg.out) if cfg.out else default_out

    plots, grads = not cfg.no_plots, not cfg.no_gradients
    dist = DistributionMonitor(DistributionMonitorConfig(
        enabled=True, every=0, steps=[1], layers=layers, gradients=grads, plots=plots,
        heatmaps=not cfg.no_heatmaps, heatmap_max_dim=cfg.heatmap_max_dim, bins=cfg.bins, histograms=False))
    dist.track_updates = False  # no optimizer step is taken: no update ratios
    attn = AttentionMonitor(AttentionMonitorConfig(enabled=True, every=0, steps=[1], layers=layers, images=plots,
                                                   label_max_tokens=64))
    monitors = [dist, attn]
    if cfg.circuits:
        from llmlab.config.monitors import CircuitsMonitorConfig
        from llmlab.monitors.circuits import CircuitsMonitor

        circuits_cfg = CircuitsMonitorConfig(enabled=True, every=0, steps=[1], images=plots)
        probe = run_copy_probe(checkpoint, tokenizer, model.cfg.context_length, circuits_cfg.copy_rows,
                               circuits_cfg.tokens) if checkpoint is not None else None
        monitors.append(CircuitsMonitor(circuits_cfg, copy_probe=probe))
    for monitor in monitors:  # the config accepts training steps (>= 1); an imported model is step 0
        monitor.schedule.steps = [step]

    def job_failed(owner: str, exc: BaseException) -> None:  # inline worker: a failed figure or file is an error
        raise RuntimeError(f"{owner} monitor could not write its outputs: {exc}") from exc

    few_figures = not plots or (layers is not None and len(layers) == 1)  # a process pool costs ~1 s to start
    probe = torch.tensor([ids], device=device)
    ctx = MonitorContext(model, out_dir=out, sinks=None, worker=BackgroundWorker(0, on_error=job_failed),
                         alerts=AlertLog(out / "alerts.jsonl"), figures=FigurePool(0 if few_figures else 2),
                         probe=probe, decode_token=lambda t: tokenizer.decode([t]), steps_per_epoch=None)
    train_without_dropout(model)
    if layers is not None:
        grads_only_for(model, layers)
    try:
        for monitor in monitors:
            monitor.on_train_start(ctx, step - 1)  # step N is due: the activation hooks go on now
        with torch.set_grad_enabled(grads):
            logits = model(probe[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1).float(), probe[:, 1:].flatten())
        grad_norm = math.nan
        if grads:
            loss.backward()
            norms = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
            grad_norm = torch.stack(norms).norm().item() if norms else math.nan
        dist.on_after_backward(step)
        info = StepInfo(step=step, loss=loss.item(), grad_norm=grad_norm, lr=0.0, tokens_seen=len(ids))
        for monitor in monitors:
            monitor.on_step_end(info)
    finally:
        dist.on_train_end(step)  # hooks off, whatever happened
        ctx.worker.close()
        ctx.figures.close()
    return out


def summary(out: Path) -> list[str]:
    """Lines for the console: where the files are and one headline per analysed layer."""
    written = sorted((out / "distribution").glob("step_*/layer_statistics.json"), key=lambda p: p.stat().st_mtime)
    if not written:
        return [f"nothing written under {out}"]
    dist_dir = written[-1].parent  # the latest analysis, when out holds several
    lines = [f"distribution: {dist_dir}", f"attention: {out / 'attention' / dist_dir.name}"]
    record = json.loads((dist_dir / "layer_statistics.json").read_text())
    attn_file = out / "attention" / dist_dir.name / "statistics.json"
    attention = json.loads(attn_file.read_text())["layers"] if attn_file.exists() else {}
    lines.append(f"loss {record['loss']:.4f}, grad_norm {record['grad_norm']:.4g}, tokens {record['tokens_seen']}")
    activations = record.get("activations", {})
    blocks = sorted({int(m[1]) for n in activations if (m := re.fullmatch(r"blocks\.(\d+)", n))})
    for i in blocks:
        act = activations[f"blocks.{i}"]
        line = f"layer {i}: residual std {act['std']:.4g} kurtosis {act['kurtosis']:.3g}"
        if f"layer{i}" in attention:
            heads = attention[f"layer{i}"]["mean"]
            line += f", attention entropy {heads['entropy']:.3f} nats, sink {heads['sink']:.3f}"
        lines.append(line)
    circuits_file = out / "circuits" / dist_dir.name / "statistics.json"
    if circuits_file.exists():
        lines += circuit_lines(json.loads(circuits_file.read_text()), circuits_file.parent)
    return lines


def circuit_lines(record: dict, where: Path) -> list[str]:
    """The strongest head of each circuit score, the logit lens and the copy accuracy."""
    lines = [f"circuits: {where}"]
    for name, layers in record["scores"].items():
        value, layer, head = max((v, i, h) for i, heads in enumerate(layers) for h, v in enumerate(heads))
        lines.append(f"{name} score: strongest layer {layer} head {head} ({value:.3f})")
    lens = ", ".join(f"{v:.3f}" for v in record["logit_lens"])
    lines.append(f"logit lens loss after each layer: {lens}")
    if "copy_accuracy" in record:
        lines.append(f"copy accuracy {record['copy_accuracy']:.3f} on {record['copy_events']} copied names")
    return lines


def ablate(cfg: AnalyzeConfig) -> tuple[Path, dict]:
    """The in-context scores of a run's model with cfg.ablate's heads switched off, and without: the JSON file
    written (<out>/ablation/step_<N>/<zero|mean>_<heads|each>.json, one per question) and its record."""
    from llmlab.config.commands import parse_head
    from llmlab.config.schema import InductionDataConfig
    from llmlab.data.induction import span_probe
    from llmlab.data.sources import induction_validation
    from llmlab.files import write_atomic
    from llmlab.monitors.ablation import AblationProbes, ablation_record
    from llmlab.train.device import pick_device

    if cfg.run is None:
        raise ConfigError("ablate: give run=<run dir>; heads are ablated in llmlab's own models")
    model, tokenizer, step, default_out, checkpoint = load_for_analysis(cfg, pick_device(cfg.device))
    model.eval()
    n_layers, n_heads = len(model.blocks), model.cfg.n_heads
    if cfg.ablate == ["each"]:
        sets = [[(layer, head)] for layer in range(n_layers) for head in range(n_heads)]
    else:
        heads = [parse_head(name) for name in cfg.ablate if name != "each"]
        bad = [f"L{layer}H{head}" for layer, head in heads if not (layer < n_layers and head < n_heads)]
        if bad:
            raise ConfigError(f"ablate: {', '.join(bad)} not in the model (layers 0..{n_layers - 1}, heads "
                              f"0..{n_heads - 1})")
        sets = [heads]
    data = run_data_config(checkpoint)
    spans = None
    if data.get("kind") == "induction":
        spans = span_probe(induction_validation(InductionDataConfig(**data)), tokenizer, rows=256)
    probes = AblationProbes.of(model, spans)
    record = {"run": cfg.run, "step": step, **ablation_record(model, probes, sets, cfg.ablation)}
    label = "each" if cfg.ablate == ["each"] else "+".join(f"L{layer}H{head}" for layer, head in sets[0])
    path = Path(cfg.out or default_out) / "ablation" / f"step_{step}" / f"{cfg.ablation}_{label}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(record, indent=1))
    return path, record


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="analyze")
def main(cfg: DictConfig) -> None:
    with exit_on_config_error():
        settings = to_dataclass(cfg)
        if settings.ablate is not None:
            from llmlab.monitors.ablation import ablation_lines

            path, record = ablate(settings)
            print("\n".join([f"ablation: {path}", *ablation_lines(record)]))
            return
        out = analyze(settings)
    print("\n".join(summary(out)))


if __name__ == "__main__":
    quote_arguments()
    main()
