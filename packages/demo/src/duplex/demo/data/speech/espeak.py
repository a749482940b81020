"""One sentence spoken by espeak-ng, with its prosody, as float samples at espeak-ng's own rate.

Rate, base pitch and word gap are espeak-ng's command-line options; the width of the intonation
(how far the pitch moves around its base) has no option, so it goes in as SSML
``<prosody range="N%">``. espeak-ng writes the wav to stdout: no temporary files.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from dataclasses import dataclass
from xml.sax.saxutils import escape

import numpy as np
import soundfile


@dataclass(frozen=True)
class Prosody:
    rate_wpm: int = 175  # espeak-ng -s: about this many words per minute (80 to 450)
    pitch: int = 50  # espeak-ng -p: the base pitch, 0 to 99
    pitch_range: int = 100  # intonation width, percent of the voice's own (SSML range)
    word_gap: int = 0  # espeak-ng -g: extra pause between words, in 10 ms units

    def arguments(self) -> list[str]:
        return ["-s", str(self.rate_wpm), "-p", str(self.pitch), "-g", str(self.word_gap)]


def require_espeak() -> str:
    """The espeak-ng executable, or a one-line error saying how to install it."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise FileNotFoundError("espeak-ng is not installed: install it (`apt install espeak-ng`) and retry")
    return exe


def speak(text: str, voice: str, prosody: Prosody, exe: str | None = None) -> tuple[np.ndarray, int]:
    """``text`` spoken by ``voice`` (an espeak-ng ``-v`` name): mono float32 samples and their rate,
    silent edges included as espeak-ng writes them."""
    ssml = f'<speak><prosody range="{prosody.pitch_range}%">{escape(text)}</prosody></speak>'
    command = [exe or require_espeak(), "-v", voice, *prosody.arguments(), "-m", "-z", "--stdout", ssml]
    result = subprocess.run(command, capture_output=True)
    if result.returncode != 0 or not result.stdout:
        message = result.stderr.decode(errors="replace").strip() or f"exit status {result.returncode}"
        raise RuntimeError(f"espeak-ng failed on voice {voice!r}: {message}")
    wav, rate = soundfile.read(io.BytesIO(result.stdout), dtype="float32")
    return wav, int(rate)
