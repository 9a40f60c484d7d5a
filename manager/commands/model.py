"""`satchel model quantize`: INT8 quantization with the cost in agreement printed."""

from __future__ import annotations

from pathlib import Path

import click

from satchel.manager.commands.common import echo_json, human_bytes, refusals_exit_1
from satchel.manager.commands.reports import output_line
from satchel.manager.errors import UsageError


@click.group()
def model() -> None:
    """Prepare models before bundling them."""


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
    help="SAMPLES.npz, as `bundle build --samples` takes it, for static INT8 (each feed one "
    "calibration batch); dynamic without it.",
)
@click.option(
    "--samples",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="SAMPLES.npz of real inputs to compare the INT8 model with the float one on "
    "(dynamic quantization; static compares on --calibration). Default: generated inputs.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@refusals_exit_1
def quantize_cmd(
    model_path: Path, output: Path, calibration: Path | None, samples: Path | None,
    as_json: bool,
) -> None:
    """Quantize an ONNX model to INT8: dynamic, or static with calibration samples.

    Prints float and INT8 sizes, how closely every output of the INT8 model agrees with the
    float one, and warns when `bundle build --reference` would refuse it by default.
    """
    # Imported here: numpy, onnx and the runtimes load only when a model is quantized.
    from satchel.manager.build import _load_samples
    from satchel.manager.quantize import QuantizeError, quantize_onnx

    if calibration and samples:
        raise click.UsageError("give --calibration (static) or --samples (dynamic), not both")
    calibrated = _load_samples(calibration) if calibration else None
    compared = _load_samples(samples) if samples else None
    try:
        report = quantize_onnx(model_path, output, calibrated, samples=compared)
    except QuantizeError as e:
        raise UsageError(str(e)) from e
    if not report.passed:
        click.echo(
            f"warning: `satchel bundle build --reference {model_path.name}` will refuse "
            f"{output.name} with its default checks: {'; '.join(report.failures)}",
            err=True,
        )
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
    feeds = f"{report.feeds} sample feed{'' if report.feeds == 1 else 's'}"
    rows = f" ({report.samples} rows)" if report.samples != report.feeds else ""
    click.echo(f"  vs float on {feeds}{rows}: {report.agreement.headline()}")
    for o in report.agreement.outputs:
        click.echo(f"    {output_line(o)}")
    verdict = "pass" if report.passed else "FAIL (see the warning)"
    click.echo(f"  default checks of bundle build --reference: {verdict}")
