"""`satchel model quantize`: INT8 quantization with the cost in agreement printed."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from manager.commands.common import echo_json, human_bytes, refusals_exit_1
from manager.errors import UsageError


@click.group()
def model() -> None:
    """Prepare models before bundling them."""


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: np.asarray(npz[k]) for k in npz.files}
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read calibration inputs {path}: {e}") from e


@model.command("quantize")
@click.argument(
    "model_path", metavar="MODEL.onnx", type=click.Path(dir_okay=False, exists=True, path_type=Path)
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the INT8 model.",
)
@click.option(
    "--calibration",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="INPUTS.npz (one array per input) for static INT8; dynamic without it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@refusals_exit_1
def quantize_cmd(model_path: Path, output: Path, calibration: Path | None, as_json: bool) -> None:
    """Quantize an ONNX model to INT8: dynamic, or static with calibration inputs.

    Prints float and INT8 sizes and how closely the INT8 model agrees with the float one.
    """
    from manager.quantize import QuantizeError, quantize_onnx

    samples = _read_npz(calibration) if calibration else None
    try:
        report = quantize_onnx(model_path, output, samples)
    except QuantizeError as e:
        raise UsageError(str(e)) from e
    if as_json:
        echo_json({"output": str(output), **report.to_dict()})
        return
    click.echo(f"{report.mode} INT8 -> {output}")
    change = (
        f"{report.ratio:.2f}x smaller"
        if report.ratio >= 1
        else f"{1 / report.ratio:.2f}x LARGER: too small a model to gain from INT8"
    )
    click.echo(
        f"  size      {human_bytes(report.float_bytes)} float32 -> "
        f"{human_bytes(report.int8_bytes)} int8 ({change})"
    )
    click.echo(
        f"  agreement on {report.samples} samples: max abs error {report.max_abs_error:.4g}, "
        f"mean cosine {report.mean_cosine:.5f}, top-1 {report.top1_agreement:.1%}"
    )
