"""Text on the frame grid, multistream stacking and delays."""

from __future__ import annotations

import pytest
import torch
from duplex.lm.data import TEXT_EPAD, TEXT_PAD, Word, delay_streams, multistream, text_stream, undelay_streams


# A toy tokenizer: one token per character, ids from 10.
def tokenize(word: str) -> list[int]:
    return [10 + ord(c) - ord("a") for c in word]


def test_words_start_at_their_frame_with_epad_before():
    words = [
        Word("ab", 0.0, 0.15, "SPEAKER_MAIN"),  # frame 0
        Word("xyz", 0.5, 0.7, "SPEAKER_USER"),  # the user's words are not in the model's text
        Word("cd", 0.41, 0.6, "SPEAKER_MAIN"),  # floor(0.41 * 12.5) = 5
        Word("efg", 0.49, 0.7, "SPEAKER_MAIN"),  # frame 6 is taken by "cd": pushed to 7
        Word("h", 1.0, 1.1, "SPEAKER_MAIN"),  # frame 12, past the end
    ]
    stream = text_stream(words, tokenize, num_frames=11)
    P, E = TEXT_PAD, TEXT_EPAD
    assert stream.tolist() == [10, 11, P, P, E, 12, 13, 14, 15, 16, P]


def test_tokens_running_past_the_end_are_dropped():
    stream = text_stream([Word("abcdef", 0.16, 0.5, "SPEAKER_MAIN")], tokenize, num_frames=5)
    assert stream.tolist() == [TEXT_PAD, TEXT_EPAD, 10, 11, 12]


def test_multistream_layout_and_errors():
    text = torch.tensor([1, 2, 3])
    model = torch.arange(6).view(2, 3)
    user = 100 + torch.arange(6).view(2, 3)
    codes = multistream(text, model, user)
    assert codes.tolist() == [[1, 2, 3], [0, 1, 2], [3, 4, 5], [100, 101, 102], [103, 104, 105]]
    with pytest.raises(ValueError, match="same shape"):
        multistream(text, model, user[:1])
    with pytest.raises(ValueError, match="text has 2 frames but audio has 3"):
        multistream(text[:2], model, user)


def test_delays_match_the_reference_training_forward():
    # The reference LM builds its delayed input in its training forward; our helper must agree.
    from moshi.models.lm import LMModel as ReferenceLM

    torch.manual_seed(0)
    delays = [0, 0, 1, 0, 1]
    reference = ReferenceLM(
        delays=delays,
        n_q=4,
        dep_q=2,
        card=16,
        text_card=20,
        dim=8,
        num_layers=1,
        num_heads=1,
        depformer_dim=8,
        depformer_num_heads=1,
        depformer_num_layers=1,
        context=8,
    )
    codes = torch.randint(0, 16, (2, 5, 6))
    seen = {}

    def capture(sequence, *_):
        seen["input"] = sequence
        raise StopIteration

    reference.forward_text = capture
    with pytest.raises(StopIteration):
        reference(codes)
    initial = [20, 16, 16, 16, 16]
    first = torch.tensor(initial).view(1, 5, 1).expand(2, 5, 1)
    ours = torch.cat([first, delay_streams(codes, delays, initial)], dim=-1)
    assert torch.equal(ours[..., :-1], seen["input"])
    assert torch.equal(
        undelay_streams(delay_streams(codes, delays, initial), delays)[..., :-1], codes[..., :-1]
    )
