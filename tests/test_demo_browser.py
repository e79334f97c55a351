"""The web demo in a real browser: for each family, `python eval.py mode=demo ckpt=<tiny checkpoint>` serves the
page, headless Chromium (Debian's `chromium` + `chromium-driver`, driven by selenium) uploads a wav, waits for the
answer and checks that the text appears and that an <audio> element holds a playable source (duration > 0).
Bad input shows its message in the page. Neither the page nor the server contacts anything but the loopback
address (the browser's network log; a socket audit hook in the server process). Screenshots are saved under
logs/test_artifacts/ (git-ignored). `.ci/run` installs the browser."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from tests.conftest import ROOT, compose_cfg

pytestmark = [pytest.mark.slow, pytest.mark.browser]
ARTIFACTS = ROOT / "logs" / "test_artifacts"
CHROMIUM, DRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or \
    "/usr/bin/chromedriver"
FAMILIES = {
    "mini_omni": ["model.cfg.whisper.max_source_positions=150"],
    "mini_omni2": ["model=mini_omni2_tiny", "data=sample_vision", "stage=vision_alignment"],
    "minimind_o": ["model=minimind_o_tiny", "data=minimind_sample", "stage=sft_t2a"],
    "mini_omni3": ["model=mini_omni3_tiny", "data=streaming_sample", "stage=streaming"],
}
# the server process, with an audit hook logging every connection / name lookup that is not loopback
SERVER = r"""
import ipaddress, runpy, sys
out = open(sys.argv[1], "a")
LOCAL = {"localhost", "127.0.0.1", "::1", "0.0.0.0", None}
def hook(event, args):
    if event == "socket.connect" and isinstance(args[1], tuple):
        try:
            if ipaddress.ip_address(args[1][0]).is_loopback:
                return
        except ValueError:
            pass
        out.write(f"connect {args[1]}\n"); out.flush()
    elif event == "socket.getaddrinfo" and args[0] not in LOCAL and not str(args[0]).startswith("127."):
        out.write(f"lookup {args[0]}\n"); out.flush()
sys.addaudithook(hook)
sys.argv = ["eval.py"] + sys.argv[2:]
runpy.run_path("eval.py", run_name="__main__")
"""


@pytest.fixture(scope="module")
def browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        if os.environ.get("CI"):
            pytest.fail("chromium / chromedriver missing: .ci/run installs them (apt-get install chromium "
                        "chromium-driver)")
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                "--autoplay-policy=no-user-gesture-required", "--mute-audio", "--disable-gpu"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_ckpt(folder: Path, family: str) -> Path:
    from omni.train import build_module

    cfg = compose_cfg(FAMILIES[family], folder)
    torch.manual_seed(5)
    module = build_module(cfg, init_from=None)
    path = folder / "tiny.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in module.model.state_dict().items()},
                "omni_config": OmegaConf.to_container(cfg, resolve=True)}, path)
    return path


class Server:
    def __init__(self, tmp: Path, ckpt: Path, *overrides: str) -> None:
        self.port, self.audit = free_port(), tmp / "network_audit.txt"
        self.audit.write_text("")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
        cmd = [sys.executable, "-c", SERVER, str(self.audit), "mode=demo", f"ckpt={ckpt}", f"demo.port={self.port}",
               f"hydra.run.dir={tmp / 'hydra'}", *overrides]
        self.log = open(tmp / "server.log", "w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}/"
        deadline = time.time() + 240
        while time.time() < deadline:
            assert self.proc.poll() is None, (tmp / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(1)
        raise TimeoutError(f"demo server did not answer on {self.url}")

    def stop(self) -> str:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        return self.audit.read_text()


def speak(tmp: Path, text: str, name: str) -> str:
    path = tmp / f"{name}.wav"
    subprocess.run(["espeak-ng", "-v", "en-us+m3", "-w", str(path), text], check=True, capture_output=True)
    return str(path)


def upload(driver, elem_id: str, path: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=file]").send_keys(path)
    if path.endswith(".png"):
        wait_for(lambda: driver.execute_script(f"return !!document.querySelector('#{elem_id} img')"), 30,
                 f"the image in #{elem_id}")
    else:
        wait_for(lambda: audio_sources(driver, elem_id), 30, f"the uploaded audio in #{elem_id}")


def click(driver, elem_id: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, f"#{elem_id}").click()


def text_of(driver, elem_id: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f"#{elem_id}").text


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"timed out waiting for {what}")


def wait_status(driver, elem_id: str = "status", timeout: float = 180) -> str:
    return wait_for(lambda: next((t for t in [text_of(driver, elem_id)] if t.startswith(("Done", "⚠", "❌",
                                                                                           "⏹", "✅")) or
                                  "least" in t), None), timeout, f"#{elem_id}")


def audio_sources(driver, elem_id: str) -> list[tuple[str, float]]:
    """(src, duration) of every <audio> inside #elem_id, shadow roots included (the waveform player's)."""
    return [tuple(x) for x in driver.execute_script("""
        const out = [];
        const walk = (root) => root.querySelectorAll('*').forEach(el => {
            if (el.tagName === 'AUDIO' && el.src) out.push([el.src, el.duration]);
            if (el.shadowRoot) walk(el.shadowRoot);
        });
        walk(document.querySelector('#' + arguments[0]));
        return out;""", elem_id)]


def playable(driver, elem_id: str) -> float:
    """Waits until an <audio> in #elem_id has a source with a known positive duration; returns it."""
    def ready():
        found = [d for src, d in audio_sources(driver, elem_id) if src and d and d == d and d > 0]
        return found[0] if found else None
    return wait_for(ready, 30, f"a playable <audio> in #{elem_id}")


def external_requests(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            url = msg["params"]["request"]["url"]
            if not url.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:", "about:")):
                urls.append(url)
    return urls


def shoot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"demo_{name}.png"
    driver.save_screenshot(str(path))
    return path


def open_page(driver, server: Server) -> None:
    driver.get_log("performance")  # drop the previous page's entries
    driver.get(server.url)
    wait_for(lambda: driver.execute_script("return !!document.querySelector('#question input[type=file]')"), 60,
             "the page")


def spoken_answer(driver, button: str, speech_s_pattern: bool = True) -> tuple[str, float]:
    click(driver, button)
    status = wait_status(driver)
    assert status.startswith("Done"), status
    duration = playable(driver, "answer-audio")
    live = playable(driver, "answer-live")
    shown = float(status.split("Done: ")[1].split(" s of speech")[0])
    assert duration == pytest.approx(shown, abs=0.02) and live > 0  # the whole answer holds all the speech
    ttfa = text_of(driver, "ttfa")
    assert ttfa.startswith("Time to first audio: ") and ttfa.endswith(" ms"), ttfa
    return status, duration


@pytest.mark.timeout(900)
@pytest.mark.parametrize("family", ["mini_omni", "mini_omni2"])
def test_mini_omni_page(browser, tmp_path, family):
    server = Server(tmp_path, make_ckpt(tmp_path, family), "codec.arch=tiny", "sampling.max_new_tokens=40")
    try:
        open_page(browser, server)
        silent = tmp_path / "silent.wav"
        sf.write(silent, np.zeros(16000, np.float32), 16000)
        upload(browser, "question", str(silent))
        click(browser, "ask")
        assert "only silence" in wait_status(browser)  # bad input: a message in the page, never a trace
        open_page(browser, server)  # a fresh page for the real question
        upload(browser, "question", speak(tmp_path, "what is the capital of france", "question"))
        if family == "mini_omni2":
            from PIL import Image

            Image.new("RGB", (64, 48), (200, 40, 40)).save(tmp_path / "red.png")
            upload(browser, "image", str(tmp_path / "red.png"))
        status, _ = spoken_answer(browser, "ask")
        from selenium.webdriver.common.by import By

        text = browser.find_element(By.CSS_SELECTOR, "#answer-text textarea").get_attribute("value")
        assert text.strip(), "no answer text in the page"
        shoot(browser, family)
        assert external_requests(browser) == []
    finally:
        audit = server.stop()
    assert audit == "", f"the demo server contacted the network:\n{audit}"


@pytest.mark.timeout(900)
def test_minimind_o_page(browser, tmp_path):
    server = Server(tmp_path, make_ckpt(tmp_path, "minimind_o"), "codec.arch=tiny", "sampling.max_new_tokens=30")
    try:
        open_page(browser, server)
        short = tmp_path / "short_ref.wav"
        sf.write(short, 0.2 * np.sin(np.arange(24000) * 0.05).astype(np.float32), 24000)  # 1.0 s
        upload(browser, "reference", str(short))
        click(browser, "clone")
        assert "at least 1.8 s" in wait_status(browser, "voice-status")
        upload(browser, "question", speak(tmp_path, "what is one plus two", "question"))
        spoken_answer(browser, "send")
        chat = text_of(browser, "chat")
        assert "spoken question" in chat and len(chat.split("spoken question", 1)[1].strip()) > 0, chat
        shoot(browser, "minimind_o")
        assert external_requests(browser) == []
    finally:
        audit = server.stop()
    assert audit == "", f"the demo server contacted the network:\n{audit}"


@pytest.mark.timeout(900)
def test_mini_omni3_page(browser, tmp_path):
    # a hot, seeded session so that the untrained tiny model replies within the clip
    server = Server(tmp_path, make_ckpt(tmp_path, "mini_omni3"), "session.temperature=20.0", "session.top_k=0",
                    "session.seed=0", "+session.max_reply_tokens=6")
    try:
        open_page(browser, server)
        upload(browser, "question", speak(tmp_path, "hello there, how are you doing today", "question"))
        click(browser, "ask")
        status = wait_status(browser)
        assert status.startswith("Done: ") and " chunks " in status, status
        table = text_of(browser, "timeline")
        n_chunks = int(status.split("Done: ")[1].split(" chunks")[0])
        decisions = [w for w in table.split() if w in ("listening", "replying")]
        assert len(decisions) == n_chunks > 3 and "replying" in decisions, table  # one decision per chunk
        assert "latency (ms)" in table
        replies = text_of(browser, "replies")
        from omni.mini_omni3.tokens import EMOTIONS

        emotions = [f"[{e}]" for e in EMOTIONS]
        assert "@" in replies and any(e in replies for e in emotions), replies  # each reply with its emotion
        assert playable(browser, "heard") > 0
        shoot(browser, "mini_omni3")
        assert external_requests(browser) == []
    finally:
        audit = server.stop()
    assert audit == "", f"the demo server contacted the network:\n{audit}"
