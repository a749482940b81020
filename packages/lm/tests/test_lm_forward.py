"""The training forward against the reference implementation (moshi 0.2.13) with the same weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from duplex.lm.config import LMConfig
from duplex.lm.model import LMModel
from moshi.models.lm import LMModel as ReferenceLM
from moshi.utils.compile import no_compile
from safetensors.torch import load_file

ASSETS = Path(__file__).parent / "assets"


@pytest.fixture(autouse=True)
def _reference_in_eager_mode():
    """The reference would torch.compile its norms and RoPE on first use (slow on CPU)."""
    with no_compile():
        yield


def reduced_official_config() -> LMConfig:
    """The Moshi 7B structure (vocabularies, 17 streams, delays, RMSNorm, RoPE, SiLU-GLU, per-step
    depformer) at reduced width and depth."""
    return LMConfig.from_preset(
        "moshi-7b",
        dim=128,
        num_heads=4,
        num_layers=2,
        depformer_dim=64,
        depformer_dim_feedforward=int(4.125 * 64),
        depformer_num_heads=2,
        depformer_num_layers=2,
    )


def random_codes(config: LMConfig, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, config.card, (batch, config.num_codebooks, length), generator=gen)
    codes[:, 0] = torch.randint(0, config.text_card, (batch, length), generator=gen)
    return codes


def twin_models(config: LMConfig, seed: int = 0, numerics: str = "reference") -> tuple[LMModel, ReferenceLM]:
    torch.manual_seed(seed)
    ours = LMModel(config, numerics=numerics).eval()
    reference = ReferenceLM(**config.lm_kwargs(), device="meta").eval()
    # Our in-memory names are the on-disk names, which the reference loads.
    reference.load_state_dict(ours.state_dict(), strict=True, assign=True)
    return ours, reference


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    ours, theirs = ours.nan_to_num(), theirs.nan_to_num()
    return ((ours - theirs).norm() / theirs.norm()).item()


def masked_ce(logits: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-codebook cross-entropy averaged over batch and time, masked positions counting 0."""
    logits = logits.nan_to_num().float()
    ce = torch.nn.functional.cross_entropy(
        logits.flatten(0, 2), codes.clamp(min=0).flatten(), reduction="none"
    )
    ce = ce.view_as(codes) * mask
    return ce.mean(dim=(0, 2))


def test_reference_test_asset():
    """The reference's own LM test: its weights and codes, its stored outputs."""
    model = LMModel(LMConfig.from_preset("reference-test")).eval()
    model.load_state_dict(load_file(ASSETS / "test_lm_model.safetensors"), strict=True)
    codes = load_file(ASSETS / "test_lm_codes.safetensors")["codes"]
    expected = load_file(ASSETS / "test_lm_out.safetensors")
    with torch.no_grad():
        out = model(codes)
    assert out.logits.shape == (3, 3, 7, 32) and out.text_logits.shape == (3, 1, 7, 48)
    assert torch.equal(out.mask, expected["mask"])
    assert torch.equal(out.text_mask, expected["text_mask"])
    ce = masked_ce(out.logits, codes[:, 1:], out.mask)
    ce_ref = masked_ce(expected["logits"], codes[:, 1:], expected["mask"])
    assert ((ce - ce_ref).abs() / ce_ref).max() <= 1e-6
    text_ce = masked_ce(out.text_logits, codes[:, :1], out.text_mask)
    text_ce_ref = masked_ce(expected["text_logits"], codes[:, :1], expected["text_mask"])
    assert ((text_ce - text_ce_ref).abs() / text_ce_ref).max() <= 1e-6


@pytest.mark.parametrize("numerics", ["reference", "fast"])
@pytest.mark.parametrize("preset", ["reference-test", "reduced-official", "tiny"])
def test_forward_matches_reference_float32(preset: str, numerics: str):
    """``numerics="reference"``: the reference's logits within 1e-5; ``"fast"``: within 1e-4."""
    config = reduced_official_config() if preset == "reduced-official" else LMConfig.from_preset(preset)
    ours, reference = twin_models(config, numerics=numerics)
    tolerance = 1e-5 if numerics == "reference" else 1e-4
    codes = random_codes(config, batch=2, length=13)
    codes[1, 3, 5] = -1  # a zero token: embeds to 0 and is masked out of the loss
    with torch.no_grad():
        out, ref = ours(codes), reference(codes)
    assert torch.equal(out.mask, ref.mask) and torch.equal(out.text_mask, ref.text_mask)
    assert not out.mask[1, 2, 5]
    assert torch.equal(out.logits.isnan(), ref.logits.isnan())
    assert relative_error(out.logits, ref.logits) <= tolerance
    assert relative_error(out.text_logits, ref.text_logits) <= tolerance


def test_forward_bfloat16_close_to_reference():
    config = LMConfig.from_preset("tiny")
    ours, reference = twin_models(config)
    ours, reference = ours.to(torch.bfloat16), reference.to(torch.bfloat16)
    codes = random_codes(config, batch=2, length=9)
    with torch.no_grad():
        out, ref = ours(codes), reference(codes)
    assert out.logits.dtype == torch.bfloat16
    assert relative_error(out.logits.float(), ref.logits.float()) <= 2e-2
    assert relative_error(out.text_logits.float(), ref.text_logits.float()) <= 2e-2


def test_training_forward_backpropagates_to_every_parameter():
    config = LMConfig.from_preset("tiny")
    model = LMModel(config).train()
    codes = random_codes(config, batch=2, length=8)
    out = model(codes)
    loss = masked_ce(out.logits, codes[:, 1 : 1 + config.dep_q], out.mask).sum()
    loss = loss + masked_ce(out.text_logits, codes[:, :1], out.text_mask).sum()
    loss.backward()
    without_grad = [name for name, p in model.named_parameters() if p.grad is None]
    # Rows of the initial-token and the last depformer codebook never act as inputs.
    assert without_grad == []


def test_structure_matches_reference_for_official_configs():
    """Same keys and shapes as the reference built from the same config.json (on the meta device)."""
    from duplex.codec.checkpoint import canonical_state_dict

    stt = {
        **LMConfig.from_preset("moshi-7b").lm_kwargs(),
        "dim": 256,
        "num_heads": 4,
        "num_layers": 2,
        "n_q": 32,
        "dep_q": 0,
        "delays": [0] * 33,
        "extra_heads_num_heads": 2,
        "extra_heads_dim": 6,
    }
    configs = [
        LMConfig.from_preset("moshi-7b"),
        LMConfig.from_preset("reference-test"),
        LMConfig.model_validate(stt),
        # Unset depformer keys inherit the temporal transformer's (here num_layers).
        LMConfig.model_validate(
            {
                k: v
                for k, v in {**LMConfig.from_preset("tiny").lm_kwargs(), "num_layers": 3}.items()
                if k != "depformer_num_layers"
            }
        ),
    ]
    for config in configs:
        with torch.device("meta"):
            ours = LMModel(config)
            reference = ReferenceLM(**config.lm_kwargs())
        expected = {k: tuple(v.shape) for k, v in canonical_state_dict(reference.state_dict()).items()}
        assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == expected


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"low_rank": 8},
        {"norm": True},
        {"demux_second_stream": True},
        {"demux_second_stream": True, "low_rank": 8},
    ],
)
def test_stream_embedding_matches_reference(variant: dict):
    from duplex.lm.embedding import StreamEmbedding
    from moshi.models.lm_utils import ScaledEmbedding

    torch.manual_seed(0)
    ours = StreamEmbedding(11, 16, **variant)
    reference = ScaledEmbedding(11, 16, **variant)
    reference.load_state_dict(ours.state_dict(), strict=True)
    top = 11 * 12 if variant.get("demux_second_stream") else 11
    tokens = torch.randint(-2, top, (3, 20))
    tokens[0, :3] = torch.tensor([-1, -2, 0])
    with torch.no_grad():
        assert torch.allclose(ours(tokens), reference(tokens), atol=1e-6)
    assert (ours(tokens)[0, 0] == 0).all()
