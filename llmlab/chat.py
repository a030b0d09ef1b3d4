"""`python -m llmlab.chat run=<run dir>`: a page to talk to trained runs (Gradio, the `chat` extra).

A chat-stage run (sft, dpo) gets a conversation in its chat template: multi-turn, with a system prompt. A
pretrain run gets a continuation: the text typed is the start of a document. Replies stream token by token
(the KV cache), with the sampling controls starting at the command's values (generate's defaults). Beside each
model: its config and its final metrics. `compare=` puts more runs beside the first, each answering the same
prompt with the same seed; `sweep=` lets the page pick any job of a multirun for the first panel.

    python -m llmlab.chat run=outputs/sft                        # http://127.0.0.1:7860
    python -m llmlab.chat run=outputs/sft compare=[outputs/dpo,outputs/base] port=0
    python -m llmlab.chat sweep=outputs/multirun/<date>/<time>

The page listens on 127.0.0.1 (this machine only) unless host= says otherwise. Everything is loaded and checked
before the server starts: a run without a checkpoint, or a port already taken, is one line.
"""

from __future__ import annotations

import errno
import importlib.util
import logging
import math
import os
import socket
from collections.abc import Callable
from pathlib import Path

import hydra
from omegaconf import DictConfig

from llmlab.config.argv import quote_arguments
from llmlab.config.commands import ChatConfig, SamplingSettings
from llmlab.config.errors import ConfigError, exit_on_config_error
from llmlab.data.chat import Message
from llmlab.run_info import RunInfo, read_run_info
from llmlab.rundir import RunDir
from llmlab.sampling import Speaker
from llmlab.store import CONF_DIR, to_dataclass
from llmlab.sweep.collect import find_jobs
from llmlab.train.checkpoint import newest_intact

CSS = ".about table { font-size: var(--text-sm); } .about td, .about th { padding: 2px 8px !important; }"
INSTALL = 'the chat page needs Gradio: pip install -e ".[chat]" (or make setup)'


class Panel:
    """One model on the page: its Speaker and what its run directory says about it."""

    def __init__(self, run: str, device: str):
        self.run = run
        self.speaker = Speaker.load(run, device)
        self.info: RunInfo = read_run_info(self.speaker.checkpoint, self.speaker.manifest)

    @property
    def chat(self) -> bool:
        return self.speaker.chat

    @property
    def title(self) -> str:
        root = self.info.root
        return f"{root.parent.name}/{root.name} · {self.speaker.checkpoint.name}"

    def describe(self) -> str:
        """Markdown: which run, its view, its config and its final metrics."""
        view = "chat (its template)" if self.chat else "continuation (the text starts a document)"
        lines = [f"**{self.title}** · {view}", "", "| setting | value |", "|---|---|"]
        lines += [f"| {what} | {cell(value)} |" for what, value in self.info.config_summary()]
        status = self.info.summary.get("status")
        if status:
            lines.append(f"| final ({status}, step {self.info.summary.get('steps')}) | "
                         + ", ".join(f"{label} {value:.4g}" for _, label, value in self.info.metrics()) + " |")
        lines += [f"\n*{problem}*" for problem in self.info.problems]
        return "\n".join(lines)


def cell(value: str) -> str:
    return str(value).replace("|", "\\|")


def sweep_jobs(sweep: str) -> dict[str, str]:
    """Job name -> directory for each job of a multirun that has an intact checkpoint, in launch order."""
    path = Path(sweep)
    if not path.is_dir():
        raise ConfigError(f"sweep={sweep}: no such directory")
    jobs = {}
    for job in find_jobs(path):
        try:
            checkpoint, _ = newest_intact(RunDir(job.path).checkpoints)
        except ConfigError:
            continue
        if checkpoint is not None:
            jobs[job.name] = str(job.path.resolve())
    if not jobs:
        raise ConfigError(f"sweep={sweep}: no job in it has a complete checkpoint (is it a multirun directory?)")
    return jobs


def free_port(host: str, port: int) -> int:
    """port if nothing listens on it at host (port 0: a free one); ConfigError naming the port otherwise."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: only a listener blocks it
        try:
            probe.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise ConfigError(f"port={port} is taken on {host} (another chat page?): give another port, "
                                  "or port=0 for any free one") from None
            raise ConfigError(f"host={host} port={port}: cannot listen there ({err.strerror})") from None
        return probe.getsockname()[1]


def settings_of(temperature, top_k, top_p, penalty, max_new, seed) -> SamplingSettings:
    """The page's controls as settings (a ConfigError names the control, as the command line would)."""
    controls = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "repetition_penalty": penalty,
                "max_new_tokens": max_new, "seed": seed}
    for name, value in controls.items():
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(f"{name}: expected a number, got {value!r:.40}")
        if not math.isfinite(value):  # int() of it would raise
            raise ConfigError(f"{name} must be a finite number, got {value}")
    return SamplingSettings(max_new_tokens=int(max_new), temperature=float(temperature), top_k=int(top_k),
                            top_p=float(top_p), repetition_penalty=float(penalty), seed=int(seed))


def text_of(content) -> str:
    """A chat message's text, whichever shape the page sent it in (a string, or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text", ""))
    if isinstance(content, list | tuple):
        return "".join(text_of(part) for part in content)
    return str(getattr(content, "text", ""))  # Gradio's own message part


def history_of(messages, system: str) -> list[Message]:
    """A chat panel's messages as the template's conversation, the system prompt first."""
    history = [Message("system", system)] if system.strip() else []
    for m in messages or []:
        role = m.get("role") if isinstance(m, dict) else getattr(m, "role", None)
        content = m.get("content") if isinstance(m, dict) else getattr(m, "content", "")
        if role in ("user", "assistant"):
            history.append(Message(role, text_of(content)))
    return history


def answer(panels: list[Panel], message: str, system: str, settings: SamplingSettings, views: list,
           warn: Callable[[str], None] = print):
    """Every panel's reply to message, streamed side by side: yields the panels' views after each round of
    tokens (one token more for each model still writing)."""
    replies, shown = [], []
    for panel, view in zip(panels, views):
        speaker = panel.speaker
        if panel.chat:
            ids = speaker.encode(message, history_of(view, system))
            before = [*(view or []), {"role": "user", "content": message}]
        else:
            ids, before = speaker.encode(message), None
        if speaker.unknown(ids):
            warn(f"{panel.title}: {speaker.unknown(ids)} character(s) are not in its tokenizer's vocabulary and "
                 "became its unknown token")
        replies.append(speaker.reply(ids, settings))
        shown.append(before)

    def render(i: int, text: str):
        return [*shown[i], {"role": "assistant", "content": text}] if panels[i].chat else message + text

    texts = [""] * len(panels)
    live = list(range(len(panels)))
    yield [render(i, "") for i in range(len(panels))]
    while live:
        for i in list(live):
            try:
                texts[i] = next(replies[i])
            except StopIteration:
                live.remove(i)
        yield [render(i, texts[i]) for i in range(len(panels))]


def build_page(cfg: ChatConfig, panels: list[Panel], jobs: dict[str, str] | None):
    import gradio as gr

    loaded = {panels[0].run: panels[0]}  # sweep jobs loaded so far, by directory

    def current(job: str | None) -> list[Panel]:
        if not jobs or job is None:
            return panels
        path = jobs[job]
        if path not in loaded:
            try:
                loaded[path] = Panel(path, cfg.device)
            except ConfigError as err:
                raise gr.Error(f"{job}: {err}") from None
        if loaded[path].chat != panels[0].chat:  # the panel's view (a conversation or a text) is built once
            raise gr.Error(f"{job} is {'a chat' if loaded[path].chat else 'not a chat'} model, unlike the job the "
                           "page opened with: start the page on it (run=<its directory>)")
        return [loaded[path], *panels[1:]]

    any_chat = any(p.chat for p in panels)
    first_prompt = "" if panels[0].chat else str(panels[0].info.get("trainer.sample_prompt", "") or "")
    with gr.Blocks(title="llmlab chat", analytics_enabled=False) as page:
        gr.Markdown("## llmlab chat" + (" · the same prompt and seed to each model" if len(panels) > 1 else ""))
        job_box = None
        if jobs:
            first = next(name for name, path in jobs.items() if path == panels[0].run)
            job_box = gr.Dropdown(list(jobs), value=first, label=f"job of {cfg.sweep}")
        with gr.Row(equal_height=True):
            views = [view_for(gr, panel, n) for n, panel in enumerate(panels)]
        with gr.Row():
            message = gr.Textbox(value=first_prompt, label="message" if any_chat else "text to continue",
                                 placeholder="Enter sends", scale=5, elem_id="message")
            send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
            clear = gr.Button("Clear", scale=1)
        system = gr.Textbox(value=cfg.system, label="system prompt", visible=any_chat, elem_id="system")
        with gr.Accordion("Sampling", open=True):
            with gr.Row():
                temperature = gr.Slider(0.0, max(2.0, cfg.temperature), value=cfg.temperature, step=0.05,
                                        label="temperature (0 = greedy)")
                top_k = gr.Slider(0, max(200, cfg.top_k), value=cfg.top_k, step=1, label="top-k (0 = off)")
                top_p = gr.Slider(0.05, 1.0, value=cfg.top_p, step=0.05, label="top-p (1 = off)")
            with gr.Row():
                penalty = gr.Slider(1.0, max(2.0, cfg.repetition_penalty), value=cfg.repetition_penalty, step=0.05,
                                    label="repetition penalty (1 = off)")
                max_new = gr.Slider(1, max(1024, cfg.max_new_tokens), value=cfg.max_new_tokens, step=1,
                                    label="max new tokens")
                seed = gr.Number(value=cfg.seed, precision=0, label="seed", min_width=100)
        with gr.Row(equal_height=False):
            headers = [gr.Markdown(panel.describe(), elem_classes="about") for panel in panels]

        def respond(message_text, system_text, t, k, p, rp, n, s, *rest):
            job, views_now = (rest[0], list(rest[1:])) if jobs else (None, list(rest))
            try:
                settings = settings_of(t, k, p, rp, n, s)
            except ConfigError as err:
                raise gr.Error(str(err)) from None
            for values in answer(current(job), message_text or "", system_text or "", settings, views_now,
                                 warn=gr.Warning):
                yield values if len(values) > 1 else values[0]  # one output takes its value, not a list of one

        inputs = [message, system, temperature, top_k, top_p, penalty, max_new, seed, *([job_box] if jobs else []),
                  *views]
        # one reply at a time, whoever asks (the models are shared): the others wait in Gradio's queue
        queue = {"concurrency_limit": 1, "concurrency_id": "reply"}
        sent = [send.click(respond, inputs, views, api_name="reply", **queue),
                message.submit(respond, inputs, views, api_visibility="private", **queue)]
        for event in sent:  # the box is emptied for the next message once the reply is complete
            event.then(lambda: "" if any_chat else gr.skip(), None, message, api_visibility="private")
        empty = [[] if p.chat else "" for p in panels]
        clear.click(lambda: empty if len(empty) > 1 else empty[0], None, views, api_visibility="private")
        if jobs:
            def switch(job):
                panel = current(job)[0]
                return panel.describe(), [] if panel.chat else ""

            job_box.change(switch, job_box, [headers[0], views[0]], api_visibility="private")
    return page


def view_for(gr, panel: Panel, n: int):
    label = panel.title
    if panel.chat:
        return gr.Chatbot(label=label, height=360, render_markdown=False, elem_id=f"view-{n}", buttons=["copy"])
    return gr.Textbox(value="", label=label, lines=12, max_lines=24, interactive=False, elem_id=f"view-{n}")


def serve(cfg: ChatConfig) -> None:
    if importlib.util.find_spec("gradio") is None:  # said before any model loads (finding it imports nothing)
        raise ConfigError(INSTALL)
    port = free_port(cfg.host, cfg.port)  # before the models load: a taken port is said at once
    jobs, first = None, cfg.run
    if cfg.sweep:
        jobs = sweep_jobs(cfg.sweep)
        first = str(Path(cfg.run).resolve()) if cfg.run else next(iter(jobs.values()))
        if first not in jobs.values():  # run= outside the sweep: offered beside its jobs
            jobs = {Path(first).name: first, **jobs}
    panels = [Panel(run, cfg.device) for run in [first, *cfg.compare]]
    page = build_page(cfg, panels, jobs)
    port = free_port(cfg.host, port)  # still free once the models have loaded
    url = f"http://{'[' + cfg.host + ']' if ':' in cfg.host else cfg.host}:{port}"
    print(f"chat page: {url}  (Ctrl+C stops it)", flush=True)
    try:
        page.queue().launch(server_name=cfg.host, server_port=port, quiet=True, show_error=True, ssr_mode=False,
                            css=CSS, footer_links=["api"], inbrowser=False)
    except OSError as err:  # taken in the moment since the check above
        raise ConfigError(f"port={port} on {cfg.host}: the server could not start ({err})") from None


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="chat")
def main(cfg: DictConfig) -> None:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves this machine
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own requests to the page, one line each
    with exit_on_config_error():
        serve(to_dataclass(cfg))


if __name__ == "__main__":
    quote_arguments()
    main()
