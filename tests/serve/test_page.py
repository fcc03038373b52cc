"""The chat page at / in a real browser: Debian's chromium, driven by Playwright (no browser
download). Type a message, watch the reply stream in, switch the compute mode, see tokens/s; a
screenshot is kept (pytest's tmp dir, and $ADAMBA_ARTIFACTS when set)."""

import os
import shutil
import time
from pathlib import Path

import pytest

from adamba.checkpoint import load_model
from adamba.serve.server import create_app
from tests.serve.test_server import Server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium here (Debian: apt-get install chromium)"
)


def test_page_streams_a_reply_and_switches_mode(elastic_run, tmp_path, monkeypatch):
    sync_api = pytest.importorskip("playwright.sync_api")
    from adamba.model.batch_decode import BatchDecoder

    real = BatchDecoder.step  # slow each step to 40 ms so the reply visibly streams
    monkeypatch.setattr(BatchDecoder, "step", lambda self, t: time.sleep(0.04) or real(self, t))
    model, tok, _ = load_model(elastic_run / "el")
    srv = Server(create_app(model, tok, "el", stream_interval=0.0))
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.goto(srv.url + "/")
            page.wait_for_function("document.getElementById('model').textContent === 'el'")
            page.fill("#temperature", "1")
            page.fill("#input", "hello")
            page.press("#input", "Enter")
            page.wait_for_selector(".msg.assistant[data-streaming]")
            lengths = []
            while page.query_selector(".msg.assistant[data-streaming]") is not None:
                lengths.append(len(page.inner_text(".msg.assistant")))
                time.sleep(0.02)
            assert len(set(lengths)) > 2  # the text grew in steps while streaming
            reply = page.inner_text(".msg.assistant")
            assert reply and "error" not in reply
            assert "tokens/s" in page.inner_text(".tps")
            page.click("#reset")  # the tiny model reads 32 tokens: start over
            assert page.query_selector_all(".msg") == []
            page.select_option("#mode", "ghost")
            page.fill("#input", "again")
            page.press("#input", "Enter")
            page.wait_for_function("document.querySelectorAll('.meta').length === 1", timeout=30_000)
            assert "(ghost)" in page.inner_text(".tps") and "error" not in page.inner_text(".msg.assistant")
            shot = tmp_path / "chat-page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 5000
            if os.environ.get("ADAMBA_ARTIFACTS"):
                out = Path(os.environ["ADAMBA_ARTIFACTS"])
                out.mkdir(parents=True, exist_ok=True)
                shutil.copy(shot, out / shot.name)
            browser.close()
    finally:
        srv.stop()
