"""The chat page (`python -m llmlab.chat`), talked to as a user would: a server in its own process on a free port,
reached through gradio_client (a real client) and through a headless browser. A reply is what
`python -m llmlab.generate` gives for the same prompt, seed and settings, and it streams in more than one update."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import FAST, REPO, run_cli

from llmlab.config.commands import ChatConfig, GenerateConfig, SamplingSettings
from llmlab.config.errors import ConfigError
from llmlab.config.schema import ModelConfig
from llmlab.data.chat import Message
from llmlab.data.tokenizers import CharTokenizer
from llmlab.model.transformer import Transformer

pytest.importorskip("gradio_client", reason='the chat page needs the chat extra: pip install -e ".[chat]"')
from gradio_client import Client  # noqa: E402

from llmlab.chat import answer, text_of  # noqa: E402
from llmlab.sampling import Speaker, complete  # noqa: E402

# sampling settings as the page's /reply endpoint takes them, in order: temperature, top-k, top-p, repetition
# penalty, max new tokens, seed (non-greedy, so the seed matters)
SETTINGS = (0.9, 20, 0.95, 1.1, 24, 7)
PROMPT = "Repeat the sentence. Bako ran."


def tiny_speaker(chat: bool, seed: int) -> Speaker:
    """A Speaker on an untrained model: the page's plumbing, without training one."""
    tokenizer = CharTokenizer.train("abcdefgh ijklmnop.")
    torch.manual_seed(seed)
    vocab = tokenizer.vocab_size + (4 if chat else 0)  # a chat model has the template's four markers
    model = Transformer(ModelConfig(n_layers=1, d_model=16, n_heads=2, context_length=64, vocab_size=vocab)).eval()
    return Speaker(model, tokenizer, Path("run/checkpoints/step_1"), {"chat": chat}, torch.device("cpu"))


def test_answer_streams_every_panel_side_by_side_to_the_end_of_each_reply():
    chat, text = tiny_speaker(chat=True, seed=1), tiny_speaker(chat=False, seed=2)
    panels = [SimpleNamespace(speaker=s, chat=s.chat, title=name) for s, name in ((chat, "a"), (text, "b"))]
    earlier = [{"role": "user", "content": "abc"}, {"role": "assistant", "content": [{"type": "text", "text": "de"}]}]
    settings = SamplingSettings(max_new_tokens=12, temperature=1.0, seed=5)
    warned = []
    updates = list(answer(panels, "hi jk", "be a fig", settings, [earlier, ""], warn=warned.append))

    history = [Message("system", "be a fig"), Message("user", "abc"), Message("assistant", "de")]
    own = [list(chat.reply(chat.encode("hi jk", history), settings)), list(text.reply(text.encode("hi jk"), settings))]
    assert updates[0] == [[*earlier, {"role": "user", "content": "hi jk"}, {"role": "assistant", "content": ""}],
                          "hi jk"]
    assert updates[-1][0][-1]["content"] == (own[0] or [""])[-1] and updates[-1][1] == "hi jk" + (own[1] or [""])[-1]
    assert len(updates) == max(len(r) for r in own) + 2  # the empty start, one round per token, the last round
    assert warned == []  # every character is in the vocabulary
    list(answer(panels[1:], "hi Z", "", settings, [""], warn=warned.append))
    assert warned == ["b: 1 character(s) are not in its tokenizer's vocabulary and became its unknown token"]


def test_chat_config_takes_one_run_or_a_list_to_compare():
    assert ChatConfig(run="a", compare="b").compare == ["b"]
    assert ChatConfig(sweep="s").compare == []
    with pytest.raises(ConfigError, match="give run=<run dir>"):
        ChatConfig()
    with pytest.raises(ConfigError, match="port must be in 0..65535"):
        ChatConfig(run="a", port=70000)
    with pytest.raises(ConfigError, match="top_p must be in"):
        ChatConfig(run="a", top_p=0)


@pytest.fixture(scope="module")
def runs(cli_runs) -> Path:
    return cli_runs


@contextmanager
def chat_server(args: list[str], cwd: Path):
    """`python -m llmlab.chat ARGS port=0` in its own process; yields the page's URL once it answers."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "GRADIO_ANALYTICS_ENABLED": "False", "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "llmlab.chat", *args, "port=0", "device=cpu"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()  # drains the pipe for as long as the server runs
    try:
        deadline, url = time.monotonic() + 180, None
        while time.monotonic() < deadline and proc.poll() is None:
            url = next((line.split()[2] for line in list(lines) if line.startswith("chat page: ")), None)
            if url:
                try:
                    urllib.request.urlopen(url, timeout=5).close()
                    break
                except OSError:
                    pass
            time.sleep(0.3)
        else:
            raise AssertionError(f"the chat page did not come up:\n{''.join(lines)[-3000:]}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def generated(run: Path, prompt: str, cwd: Path) -> str:
    """What `python -m llmlab.generate` prints for prompt with SETTINGS, without the prompt."""
    t, k, p, rp, n, seed = SETTINGS
    args = [f"run={run}", f"prompt={prompt}", f"temperature={t}", f"top_k={k}", f"top_p={p}",
            f"repetition_penalty={rp}", f"max_new_tokens={n}", f"seed={seed}", "device=cpu"]
    done = run_cli("llmlab.generate", args, cwd=cwd)
    assert done.returncode == 0, done.stderr
    sample = done.stdout.split("--- sample 1\n", 1)[1].removesuffix("\n")
    if sample.startswith("user: "):  # a chat run: the prompt and the reply on lines of their own
        head = f"user: {prompt}\nassistant: "
        assert sample.startswith(head)
        return sample[len(head):]
    assert sample.startswith(prompt)
    return sample[len(prompt):]


def last_reply(chatbot: list[dict]) -> str:
    assert chatbot[-1]["role"] == "assistant"
    return text_of(chatbot[-1]["content"])


@pytest.mark.slow
def test_replies_stream_and_equal_generate_for_each_compared_run(runs):
    with chat_server([f"run={runs / 'sft'}", f"compare={runs / 'base'}"], runs) as url:
        assert url.startswith("http://127.0.0.1:")  # this machine only, unless host= says otherwise
        client = Client(url, verbose=False)
        job = client.submit(PROMPT, "", *SETTINGS, [], "", api_name="/reply")
        chat, continuation = job.result(timeout=120)
        updates = job.outputs()
        # a second turn, with a system prompt, continues the conversation the first left
        follow = client.predict("And again.", "Answer briefly.", *SETTINGS, chat, "", api_name="/reply")
    assert len(updates) > 2  # streamed: the empty start, then token by token
    assert len({text_of(u[0][-1]["content"]) + u[1] for u in updates}) > 2  # each update shows more text
    # one reply per run: the SFT run answers in its chat template, the pretrain run continues the text
    assert [m["role"] for m in chat] == ["user", "assistant"] and text_of(chat[0]["content"]) == PROMPT
    assert last_reply(chat) == generated(runs / "sft", PROMPT, runs)
    assert continuation == PROMPT + generated(runs / "base", PROMPT, runs)

    speaker = Speaker.load(runs / "sft", "cpu")
    history = [Message("system", "Answer briefly."), Message("user", PROMPT), Message("assistant", last_reply(chat))]
    t, k, p, rp, n, seed = SETTINGS
    settings = SamplingSettings(max_new_tokens=n, temperature=t, top_k=k, top_p=p, repetition_penalty=rp, seed=seed)
    expected = "".join(list(speaker.reply(speaker.encode("And again.", history), settings))[-1:])
    assert [m["role"] for m in follow[0]] == ["user", "assistant", "user", "assistant"]
    assert last_reply(follow[0]) == expected


@pytest.mark.slow
def test_a_tiny_temperature_answers_greedily_and_a_huge_seed_is_one_line_on_the_page(runs):
    t, k, p, rp, n, seed = SETTINGS
    with chat_server([f"run={runs / 'sft'}"], runs) as url:
        client = Client(url, verbose=False)
        greedy = client.predict(PROMPT, "", 0.0, k, p, rp, n, seed, [], api_name="/reply")
        tiny = client.predict(PROMPT, "", 1e-50, k, p, rp, n, seed, [], api_name="/reply")  # was torch's message
        with pytest.raises(Exception, match=rf"seed must be an integer in \[0, 4294967295\], got {2**70}"):
            client.predict(PROMPT, "", t, k, p, rp, n, 2**70, [], api_name="/reply")
    assert last_reply(tiny) == last_reply(greedy)


@pytest.mark.slow
def test_sweep_lets_the_page_pick_any_job(tmp_path):
    args = ["-m", *FAST, "model.n_layers=1,2", "trainer.max_steps=4", "trainer.eval_every=4",
            "trainer.checkpoint_every=4", "trainer.threads=1", f"cache_dir={tmp_path / 'cache'}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    done = run_cli("llmlab.run", args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    jobs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if (p / "checkpoints").is_dir())
    assert len(jobs) == 2
    with chat_server([f"sweep={tmp_path / 'sweep'}"], tmp_path) as url:
        client = Client(url, verbose=False)
        replies = {job: client.predict("Dubo ", "", *SETTINGS, job, "", api_name="/reply") for job in jobs}
    t, k, p, rp, n, seed = SETTINGS
    for job, reply in replies.items():  # what generate prints (its complete()), here without another process
        settings = GenerateConfig(run=str(tmp_path / "sweep" / job), prompt="Dubo ", temperature=t, top_k=k, top_p=p,
                                  repetition_penalty=rp, max_new_tokens=n, seed=seed, device="cpu")
        assert reply == "Dubo " + complete(settings)[0]
    assert replies[jobs[0]] != replies[jobs[1]]  # two models, two answers


@pytest.mark.slow
def test_a_run_without_checkpoint_or_a_taken_port_is_one_line(runs, tmp_path):
    (tmp_path / "empty").mkdir()
    done = run_cli("llmlab.chat", [f"run={tmp_path / 'empty'}", "port=0"], cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"error: run={tmp_path / 'empty'}: no complete checkpoint in it "
                                                "(has the run saved one yet?)"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli("llmlab.chat", [f"run={runs / 'sft'}", f"port={port}"], cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"error: port={port} is taken on 127.0.0.1 (another chat page?): "
                                                "give another port, or port=0 for any free one"]


def find_browser() -> tuple[str | None, str | None]:
    """(chromium, chromedriver) paths, each None when it is not installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")


def no_browser() -> bool:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return True
    return None in find_browser()


def headless_browser():
    """A headless Chromium driven by selenium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1300",
                 "--disable-gpu"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.mark.slow
@pytest.mark.skipif(no_browser(), reason="no headless browser here (chromium, chromedriver, selenium): "
                                         "`make browser` installs them")
def test_a_browser_types_a_message_and_sees_the_reply(runs, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # the page's controls start at the command's settings; a seed whose reply has some text to see
    speaker = Speaker.load(runs / "sft", "cpu")
    ids = speaker.encode(PROMPT)
    seed, expected = next((s, text) for s in range(50) for text in
                          ["".join(list(speaker.reply(ids, SamplingSettings(max_new_tokens=40, seed=s)))[-1:])]
                          if len(text.strip()) >= 8)
    browser = headless_browser()
    try:
        with chat_server([f"run={runs / 'sft'}", f"seed={seed}", "max_new_tokens=40"], runs) as url:
            browser.get(url)
            wait = WebDriverWait(browser, 60)
            box = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#message textarea"))
            box.send_keys(PROMPT)
            browser.find_element(By.CSS_SELECTOR, "#send").click()

            def reply_shown(b) -> str | None:
                bubbles = b.find_elements(By.CSS_SELECTOR, "#view-0 [data-testid=bot]")
                text = bubbles[-1].text.strip() if bubbles else ""
                return text if text == expected.strip() else None

            shown = wait.until(reply_shown)
            browser.execute_script("window.scrollTo(0, 0)")
            time.sleep(0.5)  # the last paint
            shot = tmp_path / "chat_page.png"
            assert browser.save_screenshot(str(shot))
    finally:
        browser.quit()
    assert shown == expected.strip()
    assert shot.stat().st_size > 10_000
