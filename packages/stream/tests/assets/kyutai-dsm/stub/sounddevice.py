"""A stand-in for the `sounddevice` package, which Kyutai's TTS script imports at the top but only
uses to play to speakers (the tests write to a file). The real package needs PortAudio."""


class OutputStream:  # pragma: no cover - never used when writing to a file
    def __init__(self, *args, **kwargs) -> None:
        raise RuntimeError("no audio device in the tests: write to a file")
