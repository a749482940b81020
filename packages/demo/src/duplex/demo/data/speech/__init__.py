"""Speech clips for codec training and evaluation: many sentences, voices and prosodies, spoken by
espeak-ng over a realistic noise floor, with held-out sentences and voices for evaluation.

* ``sentences``: the text (the standard library's docstrings, or the user's file);
* ``voices``: espeak-ng accents and variants, the held-out ones set aside;
* ``espeak``: one sentence spoken with a given prosody;
* ``noise``, ``levels``: the noise floor and dBFS levels;
* ``config``, ``clips``: what a clip may vary in, and the generator;
* ``dataset``: a folder of clips with its index (``duplex data speech``).
"""

from duplex.demo.data.speech.clips import Clip, SpeechGenerator, Utterance
from duplex.demo.data.speech.config import SpeechConfig
from duplex.demo.data.speech.dataset import INDEX_NAME, write_speech_dataset
from duplex.demo.data.speech.espeak import Prosody, speak
from duplex.demo.data.speech.sentences import SentenceSource, split_sentences, stdlib_sentences
from duplex.demo.data.speech.splits import SPLITS, Split, is_heldout_sentence
from duplex.demo.data.speech.voices import HELDOUT_VOICES, TRAIN_VOICES, Voice, voices

__all__ = [
    "HELDOUT_VOICES",
    "INDEX_NAME",
    "SPLITS",
    "TRAIN_VOICES",
    "Clip",
    "Prosody",
    "SentenceSource",
    "SpeechConfig",
    "SpeechGenerator",
    "Split",
    "Utterance",
    "Voice",
    "is_heldout_sentence",
    "speak",
    "split_sentences",
    "stdlib_sentences",
    "voices",
    "write_speech_dataset",
]
