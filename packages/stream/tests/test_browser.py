"""The web page in real headless Chromium, with a fake microphone playing a wav file."""

import time

import numpy as np
from duplex.stream.engine import DuplexEngine
from stream_helpers import RunningServer, chromium, make_pipeline


class RecordingPipeline:
    """Passes everything to the real pipeline, remembering how loud the user's audio was."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.user_peak = 0.0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def step(self, pcm, active):
        if active.any():
            self.user_peak = max(self.user_peak, float(np.abs(pcm[active]).max()))
        return self.inner.step(pcm, active)


def test_the_page_talks_plays_the_reply_and_shows_the_text(demo_checkpoint, speech_wav):
    pipeline = RecordingPipeline(make_pipeline(demo_checkpoint, use_sampling=False))
    engine = DuplexEngine(pipeline, max_conversations=2)
    with RunningServer(engine) as server:
        browser = chromium(speech_wav)
        try:
            browser.get(server.http + "/")
            assert browser.find_element("id", "status").text == "idle"
            browser.find_element("id", "toggle").click()
            deadline = time.monotonic() + 60
            stats = {}
            while time.monotonic() < deadline:
                stats = browser.execute_script("return window.duplexStats")
                if stats["error"] or (stats["replySeconds"] >= 2.0 and len(stats["text"]) >= 3):
                    break
                time.sleep(0.25)
            # One snapshot: the page keeps adding text while the test reads it.
            stats, transcript, status = browser.execute_script(
                "return [window.duplexStats, document.getElementById('transcript').textContent,"
                " document.getElementById('status').textContent]"
            )
            logs = browser.get_log("browser")
        finally:
            browser.quit()
    assert stats["error"] is None, (stats, logs)
    assert stats["state"] == "live" and status.startswith("live")
    assert stats["pagesSent"] > 20  # the microphone went out as Ogg/Opus pages
    assert pipeline.user_peak > 0.05  # ... and the server decoded speech from them, not silence
    assert stats["audioMessages"] > 10 and stats["replySeconds"] >= 2.0  # 2 s of reply played
    assert stats["replyPeak"] > 0.01
    assert transcript.strip() and transcript == stats["text"]  # the text shows up live on the page
    severe = [entry for entry in logs if entry["level"] == "SEVERE"]
    assert not severe, severe


def test_the_page_shows_when_the_server_drops_audio(speech_wav):
    from stream_helpers import EchoPipeline

    # Steps take 1.5 frame periods and only 3 frames may wait: the server must drop the user's audio.
    engine = DuplexEngine(EchoPipeline(delay_s=0.12), max_conversations=1, max_backlog_frames=3)
    with RunningServer(engine) as server:
        browser = chromium(speech_wav)
        try:
            browser.get(server.http + "/")
            assert not browser.find_element("id", "warning").is_displayed()
            browser.find_element("id", "toggle").click()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                stats = browser.execute_script("return window.duplexStats")
                if stats["error"] or stats["droppedFrames"] > 0:
                    break
                time.sleep(0.25)
            warning = browser.find_element("id", "warning")
            shown, text = warning.is_displayed(), warning.text
            logs = browser.get_log("browser")
        finally:
            browser.quit()
    assert stats["error"] is None and stats["droppedFrames"] > 0, (stats, logs)
    assert shown and "the server is dropping your audio" in text, text
