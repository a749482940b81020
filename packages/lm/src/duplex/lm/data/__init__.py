"""Training data: the moshi-finetune format, a codec token cache, multistream interleaving, synth."""

from duplex.lm.data.dataset import MultistreamDataset, dialogue_sequence
from duplex.lm.data.format import (
    MAIN_SPEAKER,
    DatasetError,
    Dialogue,
    DialogueEntry,
    Word,
    find_index,
    load_dataset,
    load_dialogue,
    read_alignments,
    read_index,
)
from duplex.lm.data.interleave import (
    TEXT_EPAD,
    TEXT_PAD,
    ZERO_TOKEN,
    delay_streams,
    multistream,
    text_stream,
    undelay_streams,
)
from duplex.lm.data.synth import SynthConfig, synthesize_dataset
from duplex.lm.data.text_tokenizer import train_tokenizer
from duplex.lm.data.token_cache import TokenCache, codec_fingerprint

__all__ = [
    "MAIN_SPEAKER",
    "TEXT_EPAD",
    "TEXT_PAD",
    "ZERO_TOKEN",
    "DatasetError",
    "Dialogue",
    "DialogueEntry",
    "MultistreamDataset",
    "SynthConfig",
    "TokenCache",
    "Word",
    "codec_fingerprint",
    "delay_streams",
    "dialogue_sequence",
    "find_index",
    "load_dataset",
    "load_dialogue",
    "multistream",
    "read_alignments",
    "read_index",
    "synthesize_dataset",
    "text_stream",
    "train_tokenizer",
    "undelay_streams",
]
