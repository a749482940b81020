from duplex.cli.app import app
from typer.testing import CliRunner


def test_help_lists_command_groups():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for group in ("codec", "run", "serve", "client", "train", "data", "info"):
        assert group in result.output


def test_info_reports_versions_device_and_components():
    result = CliRunner().invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    for needle in ("duplex-codec", "duplex-lm", "duplex-stream", "duplex-cli", "torch", "triton", "device"):
        assert needle in result.output
    assert "duplex.codecs" in result.output and "mimi" in result.output
    assert "duplex.backbones" in result.output
    # no CUDA here; a C compiler is: the C kernels where they exist, torch for the rest
    fast = next(line for line in result.output.splitlines() if line.startswith("kernels fast"))
    reference = next(line for line in result.output.splitlines() if line.startswith("kernels reference"))
    assert "rvq_encode=native" in fast and "transformer_step=native" in fast and "attention=torch" in fast
    assert "native" not in reference and "rvq_encode=torch" in reference
