"""Checkpoints: official key names both ways, save_pretrained read by the reference and rustymimi,
strict checks that list what is wrong, pickle refusal, and the one resolver of sources (local
paths, hub repos, the path-or-repo rule, fast failure offline)."""

from __future__ import annotations

import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rustymimi
import torch
from duplex.codec import CheckpointError, Mimi, MimiConfig, checkpoint
from duplex.codec.checkpoint import (
    MIMI_FILE_NAME,
    CheckpointSource,
    canonical_state_dict,
    locate_checkpoint,
    looks_like_path,
    read_safetensors,
    resolve_checkpoint,
)
from moshi.models.loaders import get_mimi
from safetensors.torch import save_file


def _randomize(mimi: Mimi, seed: int) -> Mimi:
    g = torch.Generator().manual_seed(seed)
    state = mimi.state_dict()
    for key, value in state.items():
        if key.endswith("embedding_sum"):
            state[key] = torch.randn(value.shape, generator=g) * 0.5
        elif key.endswith("cluster_usage"):
            state[key] = torch.rand(value.shape, generator=g) + 0.5
        elif key.endswith("_initialized"):
            state[key] = torch.ones_like(value)
    mimi.load_state_dict(state)
    return mimi.eval()


@torch.no_grad()
def _calibrate(mimi: Mimi, wav: torch.Tensor, seed: int) -> Mimi:
    """Codebooks initialised from data (fresh ones are all zeros), so that codes are informative."""
    mimi.quantizer.init_codebooks(mimi.encode_latent(wav), torch.Generator().manual_seed(seed))
    return mimi


@pytest.fixture(scope="module")
def tiny() -> Mimi:
    torch.manual_seed(0)
    return _randomize(Mimi(MimiConfig.from_preset("tiny")), 0)


def _wav(batch: int, frames: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(frames * 1920) / 24000
    tone = torch.sin(2 * torch.pi * 180 * t * (1 + 0.2 * torch.sin(2 * torch.pi * t)))
    return (0.3 * tone + 0.05 * torch.randn(batch, 1, frames * 1920, generator=g)).float()


@torch.no_grad()
def test_official_size_file_loads_in_reference_and_rustymimi_with_the_same_codes(tmp_path):
    torch.manual_seed(3)
    ours = _calibrate(Mimi(MimiConfig(), numerics="reference").eval(), _wav(1, 6, seed=9), 3)
    ours.num_codebooks = 8
    path = ours.save_pretrained(tmp_path / "mimi.safetensors")
    tensors, _ = read_safetensors(path)
    assert (
        len(tensors) == 318
        and "decoder_transformer.transformer.layers.7.self_attn.out_proj.weight" in tensors
    )

    reference = get_mimi(str(path), device="cpu", num_codebooks=8)  # strict load of our file
    wav = _wav(1, 25)
    codes = ours.encode(wav)
    assert torch.equal(reference.encode(wav), codes)
    assert len(torch.unique(codes[:, 0])) > 5

    # rustymimi is an independent float implementation (candle): the same codes up to the odd
    # near-tie flip, and the same audio from the same codes
    rusty = rustymimi.Tokenizer(str(path), num_codebooks=8)
    rusty_codes = torch.from_numpy(np.asarray(rusty.encode(wav.numpy())).astype(np.int64))
    assert rusty_codes.shape == codes.shape
    assert (rusty_codes == codes).float().mean() >= 0.98
    assert (rusty_codes[:, 0] == codes[:, 0]).float().mean() >= 0.96
    rusty_audio = torch.from_numpy(np.asarray(rusty.decode(codes.numpy().astype(np.uint32))))
    audio = ours.decode(codes)
    assert rusty_audio.shape == audio.shape
    assert float((rusty_audio - audio).norm() / audio.norm()) <= 1e-3

    again = Mimi.from_pretrained(path, numerics="reference")
    assert again.numerics == "reference" and torch.equal(again.encode(wav), codes)


@torch.no_grad()
def test_round_trip_file_and_directory_keep_custom_configs(tiny, tmp_path):
    wav = _wav(2, 4)
    file = tiny.save_pretrained(tmp_path / "tiny.safetensors")
    directory = tiny.save_pretrained(tmp_path / "ckpt").parent
    assert json.loads((directory / "config.json").read_text())["mimi_name"] == "mimi.safetensors"
    for source in (file, str(file), directory, f"file://{file}"):
        loaded = Mimi.from_pretrained(source, num_codebooks=8)
        assert loaded.config == tiny.config
        assert torch.equal(loaded.encode(wav), tiny.encode(wav))
        for key, value in tiny.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key


def test_official_directory_layout(tiny, tmp_path):
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(tmp_path / MIMI_FILE_NAME))
    (tmp_path / "mimi.json").write_text(json.dumps(tiny.config.to_dict()))
    (tmp_path / "config.json").write_text(json.dumps({"mimi_config_name": "mimi.json", "dim": 4096}))
    resolved = resolve_checkpoint(tmp_path)
    assert resolved.weights == tmp_path / MIMI_FILE_NAME and resolved.config == tiny.config.to_dict()
    assert Mimi.from_pretrained(tmp_path).config == tiny.config
    (tmp_path / "config.json").write_text(json.dumps({"mimi_name": "other.safetensors"}))
    with pytest.raises(CheckpointError, match=f"other.safetensors not found.*{MIMI_FILE_NAME}"):
        resolve_checkpoint(tmp_path)


@torch.no_grad()
def test_reference_in_memory_and_legacy_names_load(tiny):
    state = tiny.state_dict()
    renamed = {}
    for key, value in state.items():
        key = key.replace("self_attn.in_proj_weight", "self_attn.in_projs.0.weight")
        key = key.replace("self_attn.out_proj.weight", "self_attn.out_projs.0.weight")
        key = key.replace("cluster_usage", "cluster_size").replace("embedding_sum", "embed_avg")
        renamed[key.replace("_initialized", "inited")] = value
    fresh = Mimi(tiny.config).eval()
    fresh.load_state_dict(renamed)
    wav = _wav(1, 3)
    assert torch.equal(fresh.encode(wav), tiny.encode(wav))
    # centroids are recomputed from the loaded statistics
    codebook = fresh.quantizer.rvq_rest.vq.layers[2]._codebook
    torch.testing.assert_close(codebook.centroids, codebook.embedding_sum / codebook.cluster_usage[:, None])


def test_weight_norm_pairs_are_folded():
    conv = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(4, 8, 3))
    with torch.no_grad():
        conv.parametrizations.weight.original0.mul_(torch.rand(8, 1, 1) + 0.5)
    new_style = {f"a.conv.{k}": v for k, v in conv.state_dict().items() if "original" in k}
    folded = canonical_state_dict(new_style)["a.conv.weight"]
    torch.testing.assert_close(folded, conv.weight.detach())
    g, v = (
        new_style["a.conv.parametrizations.weight.original0"],
        new_style["a.conv.parametrizations.weight.original1"],
    )
    old_style = canonical_state_dict({"a.conv.weight_g": g, "a.conv.weight_v": v})
    torch.testing.assert_close(old_style["a.conv.weight"], conv.weight.detach())
    with pytest.raises(CheckpointError, match="incomplete weight-norm pair for a.conv"):
        canonical_state_dict({"a.conv.weight_g": g})


def test_mismatched_checkpoint_lists_every_problem(tiny):
    state = dict(tiny.state_dict())
    del state["encoder.model.0.conv.conv.weight"]
    del state["quantizer.rvq_first.vq.layers.0._codebook._initialized"]
    state["encoder.model.99.conv.conv.weight"] = torch.zeros(1)
    state["decoder.model.0.conv.conv.bias"] = torch.zeros(5)
    with pytest.raises(CheckpointError) as info:
        Mimi(tiny.config).load_state_dict(state)
    message = str(info.value)
    assert "missing keys (2)" in message and "encoder.model.0.conv.conv.weight" in message
    assert "quantizer.rvq_first.vq.layers.0._codebook._initialized" in message
    assert "unexpected keys (1)" in message and "encoder.model.99.conv.conv.weight" in message
    assert "decoder.model.0.conv.conv.bias: expected [32], got [5]" in message


def test_official_file_does_not_fit_a_tiny_config(tiny, tmp_path):
    path = tiny.save_pretrained(tmp_path / "tiny.safetensors")
    with pytest.raises(CheckpointError, match="wrong shapes"):
        Mimi.from_pretrained(
            path, config=MimiConfig.from_preset("tiny", seanet={"dimension": 16, "n_filters": 4})
        )


@pytest.mark.parametrize("kind", ["torch", "pickle"])
def test_pickles_are_refused(tiny, tmp_path, kind):
    path = tmp_path / "mimi.safetensors"
    if kind == "torch":
        torch.save({"model": tiny.state_dict()}, path)
    else:
        path.write_bytes(pickle.dumps({"model": 1}))
    with pytest.raises(
        CheckpointError, match="pickle.*refuses pickles because loading one can run arbitrary code"
    ):
        Mimi.from_pretrained(path)


def test_garbage_and_missing_files(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"hello world, not a tensor file")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        Mimi.from_pretrained(tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        Mimi.from_pretrained(tmp_path / "missing.safetensors")


def test_hub_sources_without_huggingface_hub_say_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(CheckpointError, match=r"pip install 'duplex-codec\[hub\]'"):
        resolve_checkpoint("hf://kyutai/moshiko-pytorch-bf16/" + MIMI_FILE_NAME)


def test_hub_sources_offline_give_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="could not get .*HF_HUB_OFFLINE.* offline, download the file"):
        resolve_checkpoint("kyutai/moshiko-pytorch-bf16")


# -- the one resolver: path or repo id ----------------------------------------------------------


@pytest.fixture
def no_hub(monkeypatch):
    """Any hub access fails the test."""

    def called(*args, **kwargs):
        pytest.fail(f"the hub was asked for {args} {kwargs}")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", called)
    monkeypatch.setattr(checkpoint, "hub_download", called)
    monkeypatch.setattr(checkpoint, "_hub_reachable", called)


@pytest.mark.parametrize(
    ("text", "is_path"),
    [
        ("kyutai/moshiko-pytorch-bf16", False),
        ("mistralai/Mistral-7B-v0.1", False),  # a dot in a repo name is no file suffix
        ("./moshi", True),
        ("../moshi/ckpt", True),
        ("/data/moshi", True),
        ("~/moshi", True),
        ("model.safetensors", True),
        ("owner/config.json", True),
        ("owner/mimi.PT", True),
        ("owner\\name", True),
        ("a/b/c", True),
        ("runs/lm", True),  # runs/ exists (made below)
        ("lm", False),  # not a path by its look; not a repo id either (see below)
    ],
)
def test_what_looks_like_a_path(text, is_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert looks_like_path(text) is is_path


@pytest.mark.parametrize(
    "source",
    [
        "runs/lm",
        "./missing",
        "/nowhere/at/all",
        "~/no-such-duplex-ckpt",
        "mimi.safetensors",
        "owner/config.json",
        "a\\b",
        "a/b/c",
        "lm",
        "file://owner/name",
        "owner/na me",
    ],
)
def test_a_missing_path_is_an_error_naming_it_and_never_a_hub_lookup(source, tmp_path, monkeypatch, no_hub):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    shown = source.removeprefix("file://")
    with pytest.raises(CheckpointError) as error:
        locate_checkpoint(source)
    assert str(error.value) == f"checkpoint not found: {shown} (no such file or directory)"
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        Mimi.from_pretrained(source)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        locate_checkpoint(Path(shown))


def test_an_existing_local_path_always_wins(tiny, tmp_path, monkeypatch, no_hub):
    monkeypatch.chdir(tmp_path)
    tiny.save_pretrained(tmp_path / "kyutai" / "moshiko-pytorch-bf16")  # shaped like a repo id
    assert locate_checkpoint("kyutai/moshiko-pytorch-bf16") == CheckpointSource(
        path=Path("kyutai/moshiko-pytorch-bf16")
    )
    assert Mimi.from_pretrained("kyutai/moshiko-pytorch-bf16").config == tiny.config
    file = tiny.save_pretrained(tmp_path / "weights.safetensors")
    for source in ("weights.safetensors", f"file://{file}", file):
        location = locate_checkpoint(source)
        assert location.is_file and location.path.resolve() == file.resolve()
    with pytest.raises(CheckpointError, match="is a single file; it names no 'config.json'"):
        locate_checkpoint(file).file("config.json")


def test_repo_ids_and_hub_urls(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert locate_checkpoint("owner/name") == CheckpointSource(repo="owner/name")
    assert locate_checkpoint("hf://owner/name") == CheckpointSource(repo="owner/name")
    assert str(CheckpointSource(repo="owner/name")) == "hf://owner/name"
    calls = []

    def fake_download(repo: str, filename: str, optional: bool = False) -> Path:
        calls.append((repo, filename, optional))
        return tmp_path / filename

    monkeypatch.setattr(checkpoint, "hub_download", fake_download)
    location = locate_checkpoint("hf://owner/name/sub/w.safetensors")
    assert location == CheckpointSource(path=tmp_path / "sub/w.safetensors")
    assert calls == [("owner/name", "sub/w.safetensors", False)]
    repo = CheckpointSource(repo="owner/name")
    assert repo.file("config.json", optional=True) == tmp_path / "config.json"
    assert repo.file("hf://other/repo/x.json") == tmp_path / "x.json"
    assert calls[1:] == [("owner/name", "config.json", True), ("other/repo", "x.json", False)]
    with pytest.raises(CheckpointError, match="expected hf://owner/repo/path/to/file"):
        locate_checkpoint("hf://owner")


def _fake_hub(monkeypatch, tmp_path: Path, reachable: bool) -> Path:
    """An empty Hugging Face cache under ``tmp_path`` and a hub that does (not) answer."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(checkpoint, "_hub_reachable", lambda: reachable)
    return tmp_path / "hub"


def test_hub_download_uses_the_hub_client_and_knows_missing_files(monkeypatch, tmp_path):
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    _fake_hub(monkeypatch, tmp_path, reachable=True)

    def fake_download(repo: str, filename: str) -> str:
        if filename == "absent.json":
            raise EntryNotFoundError("404")
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert checkpoint.hub_download("owner/name", "w.safetensors") == tmp_path / "w.safetensors"
    assert checkpoint.hub_download("owner/name", "absent.json", optional=True) is None
    with pytest.raises(CheckpointError, match="the Hugging Face repo 'owner/name' has no file 'absent.json'"):
        checkpoint.hub_download("owner/name", "absent.json")


def test_offline_the_hub_cache_serves_what_it_holds(tiny, monkeypatch, tmp_path):
    cache = _fake_hub(monkeypatch, tmp_path, reachable=False)
    snapshot = cache / "models--someone--mimi" / "snapshots" / "abc123"
    tiny.save_pretrained(snapshot)
    (cache / "models--someone--mimi" / "refs").mkdir()
    (cache / "models--someone--mimi" / "refs" / "main").write_text("abc123")
    (cache / "models--someone--mimi" / ".no_exist" / "abc123").mkdir(parents=True)
    (cache / "models--someone--mimi" / ".no_exist" / "abc123" / "lora.safetensors").touch()
    assert Mimi.from_pretrained("someone/mimi").config == tiny.config
    repo = locate_checkpoint("someone/mimi")
    assert repo.file("lora.safetensors", optional=True) is None
    with pytest.raises(CheckpointError, match="has no file 'lora.safetensors'"):
        repo.file("lora.safetensors")
    with pytest.raises(CheckpointError, match="does not answer and the file is not in the local cache"):
        repo.file("tokenizer.model")


def test_a_machine_without_network_fails_fast(monkeypatch, tmp_path):
    """The real probe, against an endpoint that refuses connections: no retries, well under 2 s
    (``hf_hub_download`` alone retries for about 25 s)."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    start = time.monotonic()
    with pytest.raises(CheckpointError) as error:
        Mimi.from_pretrained("someone/some-mimi")
    assert time.monotonic() - start < 2.0
    assert "http://127.0.0.1:9 does not answer" in str(error.value) and "\n" not in str(error.value)
