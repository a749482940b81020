"""LoRA adapters against the reference's LoRA, and the SentencePiece text tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import sentencepiece
import torch
from duplex.lm.config import LMConfig
from duplex.lm.lora import apply_lora, fuse_lora, load_lora, lora_state_dict
from duplex.lm.model import LMModel
from duplex.lm.tokenizer import TextTokenizer
from moshi.models.lm import LMModel as ReferenceLM
from moshi.modules.lora import replace_all_linear_with_lora
from moshi.utils.compile import no_compile


@pytest.fixture(autouse=True)
def _reference_in_eager_mode():
    with no_compile():
        yield


def adapted_pair() -> tuple[LMModel, ReferenceLM, torch.Tensor]:
    config = LMConfig.from_preset("tiny")
    torch.manual_seed(0)
    ours = LMModel(config).eval()
    reference = ReferenceLM(**config.lm_kwargs()).eval()
    reference.load_state_dict(ours.state_dict(), strict=True)
    replace_all_linear_with_lora(reference, 4, 2.0)
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if "lora" in name:
                param.normal_(std=0.1)
    codes = torch.randint(0, config.card, (2, config.num_codebooks, 9))
    return ours, reference, codes


def test_lora_matches_reference_and_fuses():
    ours, reference, codes = adapted_pair()
    # The reference's in-memory names (per-step ``in_projs.{i}.lora_A``) load into ours.
    reference_lora = {k: v for k, v in reference.state_dict().items() if "lora_" in k}
    apply_lora(ours, rank=4, scaling=2.0)
    load_lora(ours, reference_lora)
    with torch.no_grad():
        expected, out = reference(codes), ours(codes)
    assert torch.allclose(out.logits, expected.logits, rtol=1e-4, atol=1e-5, equal_nan=True)
    assert torch.allclose(out.text_logits, expected.text_logits, rtol=1e-4, atol=1e-5)
    # Only adapters train.
    trainable = {name for name, p in ours.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    # Our file names (fused ``in_proj.lora_A``) load back into the reference.
    saved = lora_state_dict(ours)
    assert "transformer.layers.0.self_attn.in_proj.lora_A.weight" in saved
    assert saved["depformer.layers.0.self_attn.in_proj.lora_A.weight"].shape == (3 * 4, 16)
    fresh = ReferenceLM(**ours.config.lm_kwargs()).eval()
    replace_all_linear_with_lora(fresh, 4, 2.0)
    fresh.load_state_dict(saved, strict=False)
    for key, value in reference_lora.items():
        assert torch.equal(fresh.state_dict()[key], value), key
    # Fusing keeps the function and removes the adapters.
    fuse_lora(ours)
    assert not any("lora" in key or "parametrizations" in key for key in ours.state_dict())
    with torch.no_grad():
        fused = ours(codes)
    assert torch.allclose(fused.text_logits, expected.text_logits, rtol=1e-4, atol=1e-5)


def test_lora_rejects_foreign_weights():
    ours, _, _ = adapted_pair()
    with pytest.raises(RuntimeError, match="apply_lora"):
        load_lora(ours, {})
    apply_lora(ours, rank=2)
    with pytest.raises(ValueError, match="unexpected keys"):
        load_lora(ours, {"nothing.lora_A.weight": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="wrong shapes"):
        load_lora(ours, {"text_linear.lora_A.weight": torch.zeros(3, 32)})


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> TextTokenizer:
    """A tiny SentencePiece model with Moshi's special ids: 0 unk, 1 bos, 2 eos, 3 pad."""
    directory = tmp_path_factory.mktemp("spm")
    corpus = directory / "corpus.txt"
    words = "hello world how are you today the quick brown fox jumps over a lazy dog moshi speaks"
    corpus.write_text("\n".join(" ".join(words.split()[i:] + words.split()[:i]) for i in range(16)))
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(directory / "spm"),
        vocab_size=40,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        minloglevel=2,
    )
    return TextTokenizer.from_file(directory / "spm.model")


def test_tokenizer_round_trip_and_streamed_pieces(tokenizer: TextTokenizer):
    assert (tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (0, 1, 2, 3)
    assert tokenizer.piece(3) == "<pad>" and len(tokenizer) == 40
    ids = tokenizer.encode("hello brown fox")
    assert tokenizer.decode(ids) == "hello brown fox"
    # A stream with PAD (3) and EPAD (0) between words prints the words with their spaces.
    stream = [3, 3, 0, *tokenizer.encode("hello"), 3, 0, *tokenizer.encode("fox"), 3]
    assert tokenizer.tokens_text(stream) == " hello fox"
    assert tokenizer.token_text(3) == "" and tokenizer.token_text(0) == ""
    assert tokenizer.decode(stream) == "hello fox"
    assert [len(w) > 0 for w in tokenizer.encode_words("hello lazy dog")] == [True, True, True]


def test_tokenizer_bad_input(tokenizer: TextTokenizer, tmp_path: Path):
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 40\)"):
        tokenizer.token_text(40)
    with pytest.raises(FileNotFoundError):
        TextTokenizer.from_file(tmp_path / "missing.model")
    (tmp_path / "bad.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        TextTokenizer.from_file(tmp_path / "bad.model")
