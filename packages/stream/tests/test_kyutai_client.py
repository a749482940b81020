"""Kyutai's official web client (tests/assets/kyutai-client, built from kyutai-labs/moshi's client/)
served by `duplex serve --static`, holding a conversation in real headless Chromium."""

import json
import time
import urllib.request
from pathlib import Path

from stream_helpers import chromium, start_duplex_serve

CLIENT = Path(__file__).parent / "assets" / "kyutai-client"


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
        return json.loads(response.read())


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        name: float(value)
        for name, value in (line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    }


PAGE_STATE = """
const cells = [...document.querySelectorAll('td')];
const played = cells.findIndex(td => td.textContent.trim() === 'Audio played:');
const [m, s] = played < 0 ? ['0', '0'] : cells[played + 1].textContent.split(':');
return {
    buttons: [...document.querySelectorAll('button')].map(b => b.textContent.trim()),
    connected: document.querySelector('.controls .bg-green-700') !== null,
    text: [...document.querySelectorAll('.player-text span')].map(span => span.textContent).join(''),
    playedSeconds: 60 * parseFloat(m) + parseFloat(s),
};
"""


def test_kyutai_official_client_holds_a_conversation(demo_checkpoint, speech_wav, tmp_path):
    log = tmp_path / "serve.log"
    server, port = start_duplex_serve(
        demo_checkpoint, log, "--static", str(CLIENT), "--greedy", "--max-conversations", "1"
    )
    try:
        browser = chromium(speech_wav)
        try:
            browser.get(f"http://127.0.0.1:{port}/")
            browser.implicitly_wait(10)
            browser.find_element("xpath", "//button[normalize-space()='Connect']").click()
            deadline = time.monotonic() + 30
            state = {}
            while time.monotonic() < deadline:
                state = browser.execute_script(PAGE_STATE)
                if state["connected"] and state["playedSeconds"] >= 2.0 and len(state["text"]) >= 3:
                    break
                time.sleep(0.25)
            served = metrics(port)
            logs = browser.get_log("browser")
            browser.find_element("xpath", "//button[normalize-space()='Disconnect']").click()
            deadline = time.monotonic() + 10
            while health(port)["active_conversations"] and time.monotonic() < deadline:
                time.sleep(0.1)
            after = health(port)
        finally:
            browser.quit()
    finally:
        server.terminate()
        server.wait(30)
    context = (state, logs, log.read_text()[-3000:])
    # The page: connected (handshake), played the server's reply audio and shows its text.
    assert state["connected"] and "Disconnect" in state["buttons"], context
    assert state["playedSeconds"] >= 2.0 and len(state["text"]) >= 3, context
    # The server: one conversation, whose Ogg/Opus microphone audio it decoded into frames (none
    # refused or dropped) and answered frame by frame with reply audio.
    assert served["duplex_connections_total"] == 1, context
    assert served["duplex_protocol_errors_total"] == 0, context
    assert served["duplex_frames_dropped_total"] == 0, context
    assert served["duplex_audio_rate_dropped_frames_total"] == 0, context
    assert served["duplex_reply_latency_seconds_count"] >= 25, context  # >= 2 s of reply frames
    # Its Disconnect button closes the conversation, and the server frees the slot.
    assert after["active_conversations"] == 0, (after, context)
    # Outside "Moshi Vision" the client sets the CSS background url(undefined): a 404 for /undefined,
    # upstream's own doing (Conversation.tsx), the only error the browser may log.
    severe = [entry for entry in logs if entry["level"] == "SEVERE"]
    assert all(entry["message"].startswith(f"http://127.0.0.1:{port}/undefined ") for entry in severe), severe
