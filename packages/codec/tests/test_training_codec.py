"""Codec training: weight norm folding, export to the official format, metrics, a short run."""

from __future__ import annotations

import csv
import logging
import math

import numpy as np
import pytest
import soundfile
import torch
from duplex.codec import Mimi, MimiConfig
from duplex.codec.training.config import CodecTrainingConfig
from duplex.codec.training.losses import (
    discriminator_hinge_loss,
    distillation_loss,
    feature_matching_loss,
    generator_hinge_loss,
)
from duplex.codec.training.metrics import PESQ, SISDR, STOI, CodebookUsage, MelDistance, code_perplexity
from duplex.codec.training.module import CodecTrainingModule
from duplex.codec.training.run import train_codec
from duplex.codec.training.schedule import warmup_cosine
from duplex.codec.training.teachers import MelProjectionTeacher
from duplex.codec.training.trainer import read_metrics
from duplex.codec.training.weight_norm import add_weight_norm, fold_weight_norm, has_weight_norm
from lightning.pytorch.callbacks import Callback

torch.set_num_threads(1)


def _tiny_config(**overrides) -> CodecTrainingConfig:
    """The tiny preset on 0.24 s segments: too short for STOI and PESQ, which need
    ``QUALITY_SECONDS``."""
    overrides = {"segment_seconds": 0.24, "batch_size": 2, "validation_segments": 2, **overrides}
    return CodecTrainingConfig.from_preset("tiny", **overrides)


QUALITY_SECONDS = 0.48  # segments STOI (30 frames of speech, about 0.4 s) and PESQ (0.25 s) can score


def test_weight_norm_folds_to_the_same_function():
    torch.manual_seed(0)
    codec = Mimi(MimiConfig.from_preset("tiny")).eval()
    wav = torch.randn(1, 1, 3840)
    before = codec.decode(codec.encode(wav))
    count = add_weight_norm(codec)
    assert count == sum(
        isinstance(m, torch.nn.Conv1d | torch.nn.ConvTranspose1d) for m in codec.encoder.modules()
    ) + sum(isinstance(m, torch.nn.Conv1d | torch.nn.ConvTranspose1d) for m in codec.decoder.modules())
    assert any("parametrizations.weight.original0" in k for k in codec.state_dict())
    torch.testing.assert_close(codec.decode(codec.encode(wav)), before, rtol=1e-5, atol=1e-6)
    assert fold_weight_norm(codec) == count and not has_weight_norm(codec)
    assert set(codec.state_dict()) == set(Mimi(MimiConfig.from_preset("tiny")).state_dict())
    torch.testing.assert_close(codec.decode(codec.encode(wav)), before, rtol=1e-5, atol=1e-6)


def test_export_loads_in_duplex_and_in_the_reference(tmp_path):
    from moshi.models.loaders import get_mimi

    torch.manual_seed(0)
    module = CodecTrainingModule(_tiny_config())
    wav = torch.randn(4, 1, 1920 * 6) * 0.1
    module.train()
    for step in range(3):  # k-means init and EMA steps of the codebooks
        module.reconstruct(wav, torch.Generator().manual_seed(step), step)
    path = module.export(tmp_path / "mimi.safetensors")
    ours = Mimi.from_pretrained(path, num_codebooks=8, numerics="reference")
    reference = get_mimi(path, ours.config.to_dict(), num_codebooks=8).eval()
    with torch.no_grad():
        latent = ours.encode_latent(wav)
        torch.testing.assert_close(
            latent, reference.encode_to_latent(wav, quantize=False), rtol=1e-4, atol=1e-5
        )
        # Same codebooks: on one latent both quantizers give the same codes. (Through the whole
        # encoder, an untrained codec's latent barely moves, and ulp-level differences of the two
        # encoders can flip near-ties of deep residual levels.)
        codes = ours.quantizer.encode(latent)
        assert torch.equal(codes, reference.quantizer.encode(latent))
        assert torch.equal(ours.encode(wav), ours.quantizer.encode(latent))
        torch.testing.assert_close(ours.decode(codes), reference.decode(codes), rtol=1e-4, atol=1e-5)
        module.eval()  # folding only reorders float operations: the latent is the same
        torch.testing.assert_close(module.codec.encode_latent(wav), latent, rtol=1e-4, atol=1e-5)


def test_si_sdr_matches_torchmetrics():
    from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio

    target = torch.randn(3, 1, 4000)
    estimate = target * 0.5 + 0.1 * torch.randn(3, 1, 4000)
    metric = SISDR()
    metric.update(estimate[:2], target[:2])
    metric.update(estimate[2:], target[2:])
    expected = scale_invariant_signal_distortion_ratio(estimate, target, zero_mean=True).mean()
    torch.testing.assert_close(metric.compute(), expected, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def speech_clip() -> torch.Tensor:
    """1.6 s of espeak-ng speech, ``[1, T]`` at 24 kHz."""
    from duplex.lm.data.synth import SynthConfig, WordSpeaker

    speaker = WordSpeaker(SynthConfig())
    words = ("hello", "there", "my", "good", "friend")
    return torch.from_numpy(np.concatenate([speaker(w, "en+m3") for w in words]))[None]


def _to_16k(wav: torch.Tensor) -> np.ndarray:
    from duplex.codec.audio import resample

    return resample(wav, 24000, 16000)[0].numpy()


def test_stoi_and_pesq_match_pystoi_and_pesq(speech_clip):
    """The metrics are pystoi's STOI at 24 kHz and wideband PESQ at 16 kHz, reference first,
    averaged over the segments of every update."""
    from pesq import pesq
    from pystoi import stoi

    g = torch.Generator().manual_seed(0)
    clean = speech_clip
    noisy = [clean + level * torch.randn(clean.shape, generator=g) for level in (0.003, 0.1)]
    estimates, targets = torch.stack(noisy), torch.stack([clean, clean])  # [2, 1, T]
    expected = {
        "stoi": [stoi(clean[0].numpy(), e[0].numpy(), 24000) for e in noisy],
        "pesq": [pesq(16000, _to_16k(clean), _to_16k(e), "wb") for e in noisy],
    }
    assert expected["pesq"][1] != pytest.approx(pesq(16000, _to_16k(noisy[1]), _to_16k(clean), "wb"))
    for name, metric in (("stoi", STOI(24000)), ("pesq", PESQ(24000))):
        metric.update(estimates[:1], targets[:1])
        metric.update(estimates[1:], targets[1:])
        result = metric.compute()
        assert result["mean"].item() == pytest.approx(np.mean(expected[name]), rel=1e-5), name
        assert (result["scored"].item(), result["skipped"].item()) == (2, 0)
        assert expected[name][0] > expected[name][1] + 0.02, name  # more noise, lower score
        metric.reset()
        metric.update(clean[None], clean[None])
        assert metric.compute()["mean"].item() == pytest.approx(1.0 if name == "stoi" else 4.64, abs=0.01)


def test_stoi_and_pesq_skip_the_segments_they_cannot_score(speech_clip):
    """Near-silent references and segments too short to score are skipped and counted, never
    fatal; a silent estimate of speech gets STOI 0 (PESQ cannot score it: skipped)."""
    from pesq import pesq
    from pystoi import stoi

    clean = speech_clip[..., :24000]
    noisy = clean + 0.01 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    silence = torch.zeros_like(clean)
    estimates = torch.stack([noisy, noisy, silence, noisy * 1e-4])
    targets = torch.stack([clean, silence + 1e-4, clean, silence])  # [4, 1, T]
    short = (noisy[None, ..., :4800], clean[None, ..., :4800])  # 0.2 s
    good_stoi = stoi(clean[0].numpy(), noisy[0].numpy(), 24000)
    good_pesq = pesq(16000, _to_16k(clean), _to_16k(noisy), "wb")
    expected = {"stoi": (good_stoi / 2, 2, 3), "pesq": (good_pesq, 1, 4)}  # (mean, scored, skipped)
    for name, metric in (("stoi", STOI(24000)), ("pesq", PESQ(24000))):
        metric.update(*short)
        assert math.isnan(metric.compute()["mean"].item()), name  # nothing scored yet
        metric.update(estimates, targets)
        result = metric.compute()
        mean, scored, skipped = expected[name]
        assert result["mean"].item() == pytest.approx(mean, rel=1e-5), name
        assert (result["scored"].item(), result["skipped"].item()) == (scored, skipped), name


def test_validation_logs_no_stoi_or_pesq_without_a_segment_to_score(monkeypatch):
    """0.24 s segments: no STOI or PESQ in the logs, a warning that says why; the rest as ever."""
    torch.manual_seed(0)
    module = CodecTrainingModule(_tiny_config(adversarial=False)).eval()
    logged: dict[str, torch.Tensor] = {}
    monkeypatch.setattr(module, "log_dict", lambda values, **_: logged.update(values))
    module.validation_step(torch.randn(2, 1, module.config.segment_samples) * 0.1, 0)
    with pytest.warns(UserWarning) as caught:
        module.on_validation_epoch_end()
    messages = [str(w.message) for w in caught]
    assert any("STOI skipped 2 of 2 segments" in m for m in messages), messages
    assert any("PESQ skipped 2 of 2 segments (near-silent, shorter than 0.25 s" in m for m in messages)
    assert "val/si_sdr" in logged and not {"val/stoi", "val/pesq"} & logged.keys()


def test_codebook_usage_and_perplexity():
    from moshi.quantization.core_vq import _compute_entropy

    codes = torch.tensor([[[0, 0, 1, 2], [3, 3, 3, 3]], [[0, 1, 1, 1], [3, 3, 3, 3]]])  # [B=2, K=2, T=4]
    metric = CodebookUsage(num_codebooks=3, cardinality=4)
    metric.update(codes)
    result = metric.compute()
    counts = torch.tensor([3.0, 4.0, 1.0, 0.0])
    assert result["usage"].tolist() == [0.75, 0.25]  # the unused third codebook is left out
    torch.testing.assert_close(result["perplexity"][0], _compute_entropy(counts).exp())
    torch.testing.assert_close(result["perplexity"][1], torch.tensor(1.0))
    assert result["codebook"].tolist() == [0, 1]


def test_code_perplexity_is_1_when_codes_collapse_and_the_cardinality_when_uniform():
    collapsed = torch.full((4, 3, 16), 5)  # [B, K, T]: every codebook emits code 5 only
    torch.testing.assert_close(code_perplexity(collapsed, 64), torch.ones(3))
    uniform = torch.arange(64).repeat(2, 3, 1)  # every code twice per codebook
    torch.testing.assert_close(code_perplexity(uniform, 64), torch.full((3,), 64.0))
    mixed = torch.stack([collapsed[:2, 0], uniform[:, 0, :16] % 4], dim=1)  # 1 code; 4 codes equally
    torch.testing.assert_close(code_perplexity(mixed, 64), torch.tensor([1.0, 4.0]))


def test_training_logs_the_perplexity_of_the_codes_used(monkeypatch):
    """A codec whose codes all collapse to one logs perplexity 1 (train and per codebook in
    validation), however healthy the EMA usage entropy looks."""
    from duplex.codec.training import module as module_file

    torch.manual_seed(0)
    module = CodecTrainingModule(_tiny_config(adversarial=False))
    logged: dict[str, torch.Tensor] = {}
    monkeypatch.setattr(module, "log_dict", lambda values, **_: logged.update(values))
    monkeypatch.setattr(module, "log", lambda name, value, **_: logged.update({name: value}))
    monkeypatch.setattr(module, "optimizers", lambda: [torch.optim.SGD(module.parameters(), lr=0.0)])
    monkeypatch.setattr(module, "manual_backward", lambda loss: loss.backward())
    monkeypatch.setattr(module, "_clip", lambda optimizer: None)
    module.train()
    real_quantizer = module.quantizer_trainer

    def collapsed(*args, **kwargs):
        result = real_quantizer(*args, **kwargs)
        result.codes = torch.zeros_like(result.codes)
        return result

    monkeypatch.setattr(module, "quantizer_trainer", collapsed)
    module.training_step(torch.randn(2, 1, 1920 * 2) * 0.1, 0)
    assert logged["train/code_perplexity"].item() == pytest.approx(1.0)

    monkeypatch.setattr(module_file.Mimi, "encode", lambda self, wav: torch.zeros(2, 8, 2, dtype=torch.long))
    module.eval()
    module.validation_step(torch.randn(2, 1, 1920 * 2) * 0.1, 0)
    module.on_validation_epoch_end()
    assert logged["val/code_perplexity"].item() == pytest.approx(1.0)
    assert [logged[f"val/code_perplexity/{k}"].item() for k in range(8)] == pytest.approx([1.0] * 8)

    uniform = torch.arange(32).view(1, 1, 32).expand(2, 8, 32)  # every code of every codebook
    monkeypatch.setattr(module_file.Mimi, "encode", lambda self, wav: uniform)
    monkeypatch.setattr(module_file.Mimi, "decode", lambda self, codes: torch.zeros(2, 1, 1920 * 2))
    module.validation_step(torch.randn(2, 1, 1920 * 2) * 0.1, 0)
    module.on_validation_epoch_end()
    assert logged["val/code_perplexity/7"].item() == pytest.approx(32.0)


def test_mel_distance_and_losses():
    wav = torch.randn(2, 1, 4800)
    metric = MelDistance()
    metric.update(wav, wav)
    assert metric.compute().item() == 0.0
    metric.update(wav * 2, wav)
    assert metric.compute().item() == pytest.approx(math.log(2) / 2, rel=1e-3)  # half the items off by log 2
    real, fake = [torch.tensor([2.0, 0.5])], [torch.tensor([-2.0, 0.5])]
    assert discriminator_hinge_loss(real, fake).item() == pytest.approx((0 + 0.5) / 2 + (0 + 1.5) / 2)
    assert generator_hinge_loss(fake).item() == pytest.approx((3 + 0.5) / 2)
    features = [[torch.ones(2, 3)]]
    assert feature_matching_loss(features, [[torch.full((2, 3), 1.5)]]).item() == pytest.approx(0.5)
    student = torch.randn(2, 4, 6)
    assert distillation_loss(student, 3 * student).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(student, -student).item() == pytest.approx(2.0)


def test_teacher_is_registered_and_frame_aligned():
    from duplex.codec.registry import TEACHERS

    TEACHERS.refresh()
    assert "mel-projection" in TEACHERS.names()
    assert TEACHERS.get("mel-projection") is MelProjectionTeacher
    wav = torch.randn(2, 1, 1920 * 5)
    features = MelProjectionTeacher(dim=16)(wav)
    assert features.shape == (2, 16, 5)
    torch.testing.assert_close(MelProjectionTeacher(dim=16)(wav), features)  # fixed, seeded projection
    assert not any(p.requires_grad for p in MelProjectionTeacher().parameters())


@pytest.fixture(scope="module")
def speech_dir(tmp_path_factory):
    """Two short stereo files of espeak-ng speech."""
    from duplex.lm.data.synth import SynthConfig, WordSpeaker

    out = tmp_path_factory.mktemp("speech")
    speaker = WordSpeaker(SynthConfig())
    for i, words in enumerate([("hello", "there", "friend"), ("music", "books", "and", "food")]):
        left = np.concatenate([speaker(w, "en+m3") for w in words])
        right = np.concatenate([speaker(w, "en+f3") for w in reversed(words)])
        n = max(len(left), len(right))
        stereo = np.zeros((n, 2), dtype=np.float32)
        stereo[: len(left), 0], stereo[: len(right), 1] = left, right
        soundfile.write(str(out / f"clip{i}.wav"), stereo, 24000)
    return out


def test_warmup_then_cosine_decay():
    factors = [warmup_cosine(step, 10, 2, 0.1) for step in range(12)]
    assert factors[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert factors[6] == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the decay
    assert factors[10:] == pytest.approx([0.1, 0.1])  # past the end (a run extended on resume): the last rate
    assert all(a >= b for a, b in zip(factors[2:], factors[3:], strict=False))
    assert [warmup_cosine(step, 10, 0, 1.0) for step in range(10)] == [1.0] * 10  # constant
    assert [warmup_cosine(step, None, 2, 0.1) for step in (0, 2, 100)] == pytest.approx([1 / 3, 1.0, 1.0])


def test_short_run_learns_logs_and_exports(speech_dir, tmp_path):
    config = _tiny_config(adversarial=True, warmup_steps=2, final_learning_rate_ratio=0.5)
    train_codec(speech_dir, tmp_path, config, max_steps=8, checkpoint_every=4, progress_bar=False)
    rows = read_metrics(tmp_path)
    train = [r for r in rows if "train/loss" in r]
    val = [r for r in rows if "val/si_sdr" in r]
    assert len(train) == 8 and len(val) == 2
    expected_rates = [config.learning_rate * warmup_cosine(step, 8, 2, 0.5) for step in range(8)]
    assert [r["train/lr"] for r in train] == pytest.approx(expected_rates)
    assert train[-1]["train/waveform_l1"] < train[0]["train/waveform_l1"]
    for key in ("val/mel_distance", "val/codebook_usage", "val/code_perplexity", "train/discriminator"):
        assert all(math.isfinite(r[key]) for r in (val if key.startswith("val") else train))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "last.ckpt",
        "step-4.ckpt",  # batches (generator steps), though Lightning counts both optimizers
        "step-8.ckpt",
    ]
    exported = Mimi.from_pretrained(tmp_path / "mimi.safetensors")
    assert exported.config == config.codec
    # the run folder's curves: every logged metric, one row per step, and their plot
    with (tmp_path / "metrics.csv").open() as handle:
        merged = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in merged] == sorted({int(r["step"]) for r in merged})
    val_rows = [r for r in merged if r["val/si_sdr"]]
    assert len(val_rows) == 2 and float(val_rows[-1]["val/si_sdr"]) == pytest.approx(val[-1]["val/si_sdr"])
    png = (tmp_path / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_an_overfit_run_trains_and_validates_on_the_same_few_segments(speech_dir, tmp_path):
    from duplex.codec.training.data import AudioSegments
    from duplex.codec.training.run import validation_subset

    class Batches(Callback):
        def __init__(self) -> None:
            self.train, self.val = [], []

        def on_train_batch_start(self, trainer, module, batch, index) -> None:  # noqa: ANN001
            self.train.extend(batch)

        def on_validation_batch_start(self, trainer, module, batch, index, dataloader_index=0) -> None:  # noqa: ANN001
            self.val.extend(batch)

    config = _tiny_config(adversarial=False)
    dataset = AudioSegments.from_folder(speech_dir, config.codec.sample_rate, config.segment_samples)
    chosen = validation_subset(dataset, 2)
    assert len(dataset) > len(chosen) == 2
    seen = Batches()
    train_codec(speech_dir, tmp_path, config, max_steps=4, checkpoint_every=2, progress_bar=False,
                accelerator="cpu", callbacks=[seen], overfit_segments=2)  # fmt: skip
    assert len(seen.train) == 4 * config.batch_size
    assert all(any(torch.equal(item, segment) for segment in chosen) for item in seen.train)
    assert len(seen.val) % 2 == 0 and seen.val
    for item, segment in zip(seen.val, chosen * (len(seen.val) // 2), strict=True):
        assert torch.equal(item, segment)
    with pytest.raises(ValueError, match="validates on the segments it trains on"):
        train_codec(speech_dir, tmp_path, config, max_steps=1, validation_data=speech_dir, overfit_segments=2)


def test_curves_merge_resumed_sessions_and_group_metrics(tmp_path):
    from duplex.codec.training.curves import panel_of, write_curves

    for version, rows in enumerate(
        [
            "step,epoch,train/loss,val/stoi\n0,0,3.0,\n1,0,2.0,\n1,0,,0.5\n",
            "step,epoch,train/loss,val/code_perplexity/0,lr-AdamW\n1,1,1.5,,\n2,1,1.0,30.0,0.001\n",
        ]
    ):
        folder = tmp_path / "logs" / f"version_{version}"
        folder.mkdir(parents=True)
        (folder / "metrics.csv").write_text(rows)
    csv_path, png_path = write_curves(tmp_path, tmp_path / "logs")
    rows = list(csv.DictReader(csv_path.open()))
    assert [(r["step"], r["train/loss"], r["val/stoi"]) for r in rows] == [
        ("0", "3.0", ""),
        ("1", "1.5", "0.5"),  # the resumed session's value for step 1 wins; the other metric stays
        ("2", "1.0", ""),
    ]
    assert png_path.stat().st_size > 0
    assert [panel_of(m) for m in ("train/loss", "val/stoi", "val/code_perplexity/0", "lr-AdamW")] == [
        "loss",
        "quality",
        "code perplexity",
        "learning rate",
    ]
    assert write_curves(tmp_path, tmp_path / "nothing") is None


def test_logged_validation_matches_a_fresh_evaluation_of_the_saved_checkpoints(speech_dir, tmp_path):
    """Every validation, not only the first, logs what the weights it validated really score:
    the same numbers as an independent evaluation of the checkpoint written at that step."""
    from duplex.codec.training.data import AudioSegments
    from duplex.codec.training.evaluate import evaluate_codec
    from duplex.codec.training.run import validation_subset

    config = _tiny_config(adversarial=False, segment_seconds=QUALITY_SECONDS)
    train_codec(speech_dir, tmp_path, config, max_steps=6, checkpoint_every=2, progress_bar=False,
                accelerator="cpu", keep_checkpoints=0)  # fmt: skip
    val = [r for r in read_metrics(tmp_path) if "val/mel_distance" in r]
    assert len(val) == 3
    dataset = AudioSegments.from_folder(speech_dir, config.codec.sample_rate, config.segment_samples)
    segments = validation_subset(dataset, config.validation_segments)
    keys = ("si_sdr", "mel_distance", "codebook_usage", "code_perplexity", "stoi", "pesq")

    def assert_matches(logged: dict[str, float], codec: Mimi, code_statistics: bool = True) -> None:
        fresh = evaluate_codec(codec, segments, per_codebook=True)
        assert fresh["stoi_skipped"] == fresh["pesq_skipped"] == 0  # every segment scored
        per_codebook = (k for k in fresh if k.startswith("code_perplexity/"))
        checked = (*keys, *per_codebook) if code_statistics else ("si_sdr", "mel_distance", "stoi", "pesq")
        for key in checked:
            assert logged[f"val/{key}"] == pytest.approx(fresh[key], rel=1e-3, abs=1e-3), key

    # The exported codec (weight norm folded) sounds as the last validation logged; six steps in,
    # late codebooks hold near-duplicate entries, and folding's rounding may pick the other twin
    # (same audio, other index), so its code statistics are not compared ...
    assert_matches(val[-1], Mimi.from_pretrained(tmp_path / "mimi.safetensors"), code_statistics=False)
    # ... and each step checkpoint, loaded fresh into a training module (live weight norm), what
    # the validation at its step logged; the metrics do change between validations.
    for row, step in zip(val, (2, 4, 6), strict=True):
        module = CodecTrainingModule(config)
        module.load_state_dict(torch.load(tmp_path / "checkpoints" / f"step-{step}.ckpt")["state_dict"])
        assert_matches(row, module.codec)
    assert val[0]["val/mel_distance"] != val[-1]["val/mel_distance"]
    assert val[0]["val/pesq"] != val[-1]["val/pesq"] and val[0]["val/stoi"] != val[-1]["val/stoi"]
    # ... and the run folder's metrics.csv (curves.png's data) holds them, one row per validation
    with (tmp_path / "metrics.csv").open() as handle:
        merged = [r for r in csv.DictReader(handle) if r["val/mel_distance"]]
    for key in ("val/stoi", "val/pesq"):
        assert [float(r[key]) for r in merged] == pytest.approx([r[key] for r in val], rel=1e-6), key


def test_validation_under_inference_mode_uses_the_current_weights():
    """Validation runs under ``torch.inference_mode`` (Lightning's default) with weight norm live;
    weights changed in place in between (an optimizer step, ``load_state_dict``) are the ones used."""
    from duplex.codec.training.evaluate import evaluate_codec

    torch.manual_seed(0)
    module = CodecTrainingModule(_tiny_config(adversarial=False))
    other = CodecTrainingModule(_tiny_config(adversarial=False))
    wav = torch.randn(2, 1, 1920 * 3) * 0.1
    module.train()
    other.train()
    for step in range(2):  # initialise the codebooks of both
        module.reconstruct(wav, torch.Generator().manual_seed(step), step)
        other.reconstruct(wav * 0.5, torch.Generator().manual_seed(step + 7), step)
    module.eval()
    other.eval()

    def validate(m: CodecTrainingModule) -> float:
        with torch.inference_mode():
            m.validation_step(wav, 0)
            value = m.val_mel.compute().item()
        for metric in m.validation_metrics():
            metric.reset()
        return value

    first = validate(module)
    with torch.no_grad():  # in place, as an optimizer step does
        for p in module.codec.decoder.parameters():
            p.mul_(0.5)
    halved = validate(module)
    assert halved != first
    module.load_state_dict(other.state_dict())  # in place again
    assert validate(module) == pytest.approx(validate(other), rel=1e-6)
    reference = Mimi(module.codec.config)
    reference.load_state_dict(module.codec.state_dict())  # folds weight norm: a fresh model
    fresh = evaluate_codec(reference, list(wav))["mel_distance"]
    assert validate(module) == pytest.approx(fresh, rel=1e-5)


# -- the adversarial schedule, and resuming across it --------------------------------------------

ADVERSARIAL_LOGS = ("train/discriminator", "train/adversarial", "train/feature_matching")
RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"


class DiscriminatorWatch(Callback):
    """After each batch: (batches done, whether the discriminator's weights moved since the session
    began, whether its optimizer holds state); the codec optimizer's state as the session began."""

    def on_train_start(self, trainer, module):  # noqa: ANN001
        self.start = {k: v.clone() for k, v in module.discriminator.state_dict().items()}
        self.codec_optimizer = {
            i: {k: v.clone() for k, v in state.items()}
            for i, state in trainer.optimizers[0].state_dict()["state"].items()
        }
        self.start_step = trainer.global_step // 2
        self.rows = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_index):  # noqa: ANN001
        moved = any(not torch.equal(v, self.start[k]) for k, v in module.discriminator.state_dict().items())
        self.rows.append((trainer.global_step // 2, moved, bool(trainer.optimizers[1].state)))


def _adam_steps(optimizer_state: dict) -> set[int]:
    return {int(state["step"]) for state in optimizer_state["state"].values()}


def test_the_discriminator_idles_until_the_adversarial_start_step(speech_dir, tmp_path, caplog):
    """Reconstruction first, adversarial from ``adversarial_start_step``: before it the discriminator
    neither changes nor steps (nor is logged); it is in every checkpoint, and steps count batches."""
    config = _tiny_config(adversarial=True, adversarial_start_step=2)
    watch = DiscriminatorWatch()
    with caplog.at_level(logging.INFO, logger=RANK_ZERO_LOGGER):
        train_codec(speech_dir, tmp_path, config, max_steps=4, checkpoint_every=2, progress_bar=False,
                    accelerator="cpu", callbacks=[watch])  # fmt: skip
    assert watch.rows == [(1, False, False), (2, False, False), (3, True, True), (4, True, True)]
    assert "step 2: the discriminator switches on" in caplog.text
    train = [r for r in read_metrics(tmp_path) if "train/step" in r]
    assert [r["train/step"] for r in train] == [0, 1, 2, 3]
    for row in train:
        assert all((key in row) == (row["train/step"] >= 2) for key in ADVERSARIAL_LOGS), row
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt", "step-2.ckpt", "step-4.ckpt"]
    before = torch.load(checkpoints / "step-2.ckpt", weights_only=False)
    assert any(k.startswith("discriminator.") for k in before["state_dict"])
    assert before["optimizer_states"][1]["state"] == {}  # the idle discriminator's optimizer: no state
    after = torch.load(checkpoints / "step-4.ckpt", weights_only=False)
    assert _adam_steps(after["optimizer_states"][0]) == {4} and _adam_steps(after["optimizer_states"][1]) == {
        2
    }


def _reconstruction_run(speech_dir, output) -> None:  # noqa: ANN001
    """2 steps without a discriminator (``adversarial: false``) into ``output``. (Each test trains its
    own: a run folder copied elsewhere makes Lightning write ``last-v1.ckpt`` beside ``last.ckpt``.)"""
    train_codec(speech_dir, output, _tiny_config(adversarial=False), max_steps=2, checkpoint_every=2,
                progress_bar=False, accelerator="cpu")  # fmt: skip


def test_resuming_with_the_discriminator_newly_on_keeps_the_codec_and_its_optimizer(
    speech_dir, tmp_path, caplog
):
    _reconstruction_run(speech_dir, tmp_path)
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert not any(k.startswith("discriminator.") for k in saved["state_dict"])
    watch = DiscriminatorWatch()
    with caplog.at_level(logging.INFO, logger=RANK_ZERO_LOGGER):
        module = train_codec(speech_dir, tmp_path, _tiny_config(adversarial=True), max_steps=4,
                             checkpoint_every=2, progress_bar=False, accelerator="cpu",
                             callbacks=[watch])  # fmt: skip
    assert "resuming at step 2 from a checkpoint without a discriminator" in caplog.text
    assert "the discriminator starts fresh" in caplog.text
    # It continued from step 2, the codec optimizer's state as saved, a fresh discriminator training.
    assert watch.start_step == 2
    saved_optimizer = saved["optimizer_states"][0]["state"]
    assert watch.codec_optimizer.keys() == saved_optimizer.keys()
    for index, state in saved_optimizer.items():
        for key, value in state.items():
            assert torch.equal(watch.codec_optimizer[index][key], value), (index, key)
    assert watch.rows == [(3, True, True), (4, True, True)]
    train = [r for r in read_metrics(tmp_path) if "train/step" in r]
    assert [r["train/step"] for r in train] == [0, 1, 2, 3]
    assert ["train/discriminator" in r for r in train] == [False, False, True, True]
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 8  # Lightning counts both optimizers' steps
    assert _adam_steps(last["optimizer_states"][0]) == {4} and _adam_steps(last["optimizer_states"][1]) == {2}
    assert module.discriminator is not None
    assert torch.equal(
        last["state_dict"]["semantic_projection.weight"], module.semantic_projection.weight.detach()
    )


def test_resuming_with_a_different_model_fails_in_one_line(speech_dir, tmp_path):
    _reconstruction_run(speech_dir, tmp_path)
    tiny = MimiConfig.from_preset("tiny")
    codec = tiny.model_copy(update={"seanet": tiny.seanet.model_copy(update={"n_filters": 4})})
    config = _tiny_config(adversarial=False, codec=codec)
    expected = rf"cannot resume .*the config changed: codec\.seanet\.n_filters: {tiny.seanet.n_filters} -> 4"
    with pytest.raises(ValueError, match=expected) as caught:
        train_codec(speech_dir, tmp_path, config, max_steps=4, checkpoint_every=2, progress_bar=False,
                    accelerator="cpu")  # fmt: skip
    assert "\n" not in str(caught.value) and "new output folder" in str(caught.value)


def test_resuming_with_the_discriminator_turned_off_drops_it():
    from duplex.codec.training.module import _STEP_PROGRESS

    adversarial = CodecTrainingModule(_tiny_config(adversarial=True))
    progress = {"total": {"ready": 8, "completed": 8}, "current": {"ready": 4, "completed": 4}}
    checkpoint = {
        "state_dict": adversarial.state_dict(),
        "optimizer_states": [{"codec": 1}, {"discriminator": 2}],
        "global_step": 8,
        "loops": {"fit_loop": {_STEP_PROGRESS: progress}},
    }
    plain = CodecTrainingModule(_tiny_config(adversarial=False))
    plain.on_load_checkpoint(checkpoint)
    plain.load_state_dict(checkpoint["state_dict"])  # strict: nothing missing, nothing unexpected
    assert checkpoint["optimizer_states"] == [{"codec": 1}]
    assert checkpoint["global_step"] == 4  # one optimizer step per batch now: still 4 batches
    assert progress == {"total": {"ready": 4, "completed": 4}, "current": {"ready": 2, "completed": 2}}


def test_an_adversarial_start_step_needs_the_discriminator():
    with pytest.raises(ValueError, match="adversarial_start_step is 5 but adversarial is false"):
        _tiny_config(adversarial=False, adversarial_start_step=5)


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_a_fresh_encoder_starts_at_unit_variance_so_its_latent_follows_the_input(preset):
    """Without the scaling, the random encoder's latent barely moves over time (std 0.006 at the
    small preset) and training first spends hundreds of steps with every frame on one code."""
    audio = 0.1 * torch.randn(1, 1, 24_000, generator=torch.Generator().manual_seed(1))
    spread = {}
    for scaled in (False, True):
        torch.manual_seed(0)
        config = CodecTrainingConfig.from_preset(preset, unit_variance_init=scaled)
        with torch.no_grad():
            latent = CodecTrainingModule(config).codec.encode_latent(audio)
        spread[scaled] = float(latent.std(-1).mean())
    assert spread[True] > 0.2 and spread[True] > 20 * spread[False], spread
