"""The bundled demo checkpoint: random weights, but a codec whose output follows its codes."""

import torch
from duplex.codec import Mimi


def _rms(x: torch.Tensor) -> float:
    return float(x.pow(2).mean().sqrt())


def test_the_demo_codec_decodes_different_codes_to_different_sound(demo_checkpoint):
    mimi = Mimi.from_pretrained(demo_checkpoint).eval()
    generator = torch.Generator().manual_seed(7)  # not the codes the demo was calibrated on
    shape = (1, mimi.num_codebooks, 25)  # 2 s
    with torch.no_grad():
        silence = mimi.decode(torch.zeros(shape, dtype=torch.long))
        first, second = (
            mimi.decode(torch.randint(0, mimi.cardinality, shape, generator=generator)) for _ in "ab"
        )
    for audio in (silence, first, second):
        assert 0.02 < _rms(audio) < 0.5  # audible, not clipping
        assert abs(float(audio.mean())) < 0.1 * _rms(audio)  # no DC offset
    # Different codes, different sound: as far apart as unrelated signals of this level would be.
    assert _rms(first - second) > 0.7 * _rms(first)
    assert _rms(first - silence) > 0.7 * _rms(first)
    # and not one repeated pattern: the halves of one decode differ as much
    half = first.shape[-1] // 2
    assert _rms(first[..., :half] - first[..., half:]) > 0.7 * _rms(first)


def test_the_demo_encoder_tells_sounds_apart(demo_checkpoint, speech):
    mimi = Mimi.from_pretrained(demo_checkpoint).eval()
    speech = torch.from_numpy(speech)[None, None]
    with torch.no_grad():
        codes = mimi.encode(speech)
        noise = mimi.encode(0.1 * torch.randn(speech.shape, generator=torch.Generator().manual_seed(0)))
    assert (codes != noise).float().mean() > 0.5
    assert codes[0, 0].unique().numel() > 5  # the first codebook is not stuck on a few codes
