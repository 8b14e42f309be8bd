"""`tuneforge estimate`: parameters and training memory of a model x method, without loading weights."""

from __future__ import annotations

import json
from typing import Literal

import typer
from pydantic import TypeAdapter, ValidationError

from tuneforge.errors import ConfigError, Problem
from tuneforge.methods.registry import DEFAULT_METHOD, available_methods

GIB = 1 << 30
# method-section field -> the option that sets it
_OPTION = {"r": "--rank", "target_modules": "--targets", "num_virtual_tokens": "--virtual-tokens"}


def estimate(
    model: str = typer.Option(..., help="Hub id, local model folder, bare config.json, or 'demo' / 'minilm'."),
    method: str = typer.Option(DEFAULT_METHOD, help=f"The method: {', '.join(available_methods())}."),
    rank: int | None = typer.Option(None, "--rank", "-r", help="LoRA-family rank."),
    alpha: float | None = typer.Option(None, help="LoRA-family alpha."),
    targets: str | None = typer.Option(None, help="Comma-separated target modules (LoRA family, ia3), or all-linear."),
    top_layers: int | None = typer.Option(None, help="freeze: train the top N blocks."),
    patterns: str | None = typer.Option(
        None, help="freeze: comma-separated regular expressions of trained parameters."
    ),
    norms_and_biases: bool = typer.Option(False, "--norms-and-biases", help="freeze: train norms and biases."),
    double_quant: bool | None = typer.Option(
        None, "--double-quant/--no-double-quant", help="qlora: quantize the scales too."
    ),
    placement: str | None = typer.Option(None, help="adapter: houlsby, pfeiffer or parallel."),
    bottleneck: int | None = typer.Option(None, help="adapter: bottleneck width."),
    virtual_tokens: int | None = typer.Option(None, help="prompt_tuning / prefix_tuning: number of virtual tokens."),
    task: str = typer.Option(
        "causal_lm", help="Model head: causal_lm, sequence_classification, token_classification, masked_lm."
    ),
    num_labels: int = typer.Option(2, help="Labels of a classification head."),
    batch: int = typer.Option(1, min=1, help="Examples per micro-batch."),
    seq_len: int = typer.Option(512, min=1, help="Tokens per example."),
    precision: str = typer.Option(
        "bf16",
        help="train.precision: bf16 or fp16 (autocast; trained weights and AdamW states stay fp32) or fp32.",
    ),
    dtype: str = typer.Option(
        "auto",
        help="model.dtype of the base: auto (what train loads: fp32 when the base trains or under fp32, else the "
        "16-bit compute dtype), float32, bfloat16 or float16 (16-bit trained weights: no fp32 master copy).",
    ),
    gradient_checkpointing: bool = typer.Option(
        False, "--gradient-checkpointing", help="Recompute block activations in backward."
    ),
    attention: str = typer.Option("sdpa", help="sdpa (memory-efficient, no T x T matrix) or eager."),
    output: str = typer.Option("table", help="table or json (one JSON object on stdout)."),
) -> None:
    """Trainable/total parameters and training memory as `train` holds it (weights, autocast copies, gradients,
    optimizer states, activations)."""
    from tuneforge.methods.estimate import estimate as run_estimate

    options = {
        "r": rank,
        "alpha": alpha,
        "target_modules": _targets(targets),
        "top_layers": top_layers,
        "patterns": _split(patterns),
        "norms_and_biases": norms_and_biases or None,
        "double_quant": double_quant,
        "placement": placement,
        "bottleneck": bottleneck,
        "num_virtual_tokens": virtual_tokens,
    }
    method_cfg = method_section(method, {k: v for k, v in options.items() if v is not None})
    _check_choice("--precision", precision, ("bf16", "fp16", "fp32"))
    _check_choice("--dtype", dtype, ("auto", "float32", "bfloat16", "float16"))
    _check_choice("--attention", attention, ("sdpa", "eager"))
    _check_choice("--output", output, ("table", "json"))
    result = run_estimate(
        model,
        method_cfg,
        batch,
        seq_len,
        task=task,
        dtype=dtype,
        precision=precision,
        gradient_checkpointing=gradient_checkpointing,
        attention=attention,
        num_labels=num_labels,
    )
    if output == "json":
        print(json.dumps(result.to_dict()))
        return
    _print_table(result)


def method_section(name: str, options: dict):
    """The typed method config from CLI options; an option the method does not take is an error."""
    from tuneforge.config import MethodSection

    try:
        return TypeAdapter(MethodSection).validate_python({"name": name, **options})
    except ValidationError as exc:
        problems = [
            Problem(
                _option(e["loc"]), e["msg"] if e["type"] != "extra_forbidden" else f"not an option of method {name}"
            )
            for e in exc.errors()
        ]
        raise ConfigError(f"invalid options for method '{name}'", problems) from None


def _option(loc: tuple) -> str:
    if len(loc) < 2:
        return "--method"
    field = str(loc[1])
    return _OPTION.get(field, "--" + field.replace("_", "-"))


def _check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"invalid {option}", [Problem(option, f"'{value}' is not one of {list(choices)}")])


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _targets(value: str | None) -> list[str] | Literal["all-linear"] | None:
    return "all-linear" if value == "all-linear" else _split(value)


def _print_table(result) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result.model} - {result.method}")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("total parameters", f"{result.total_params:,}")
    table.add_row("trainable parameters", f"{result.trainable_params:,} ({100 * result.trainable_share:.3f}%)")
    for part, value in result.memory_bytes.items():
        table.add_row(f"memory: {part}", f"{value / GIB:,.2f} GiB")
    Console().print(table)
    Console().print(", ".join(f"{k}={v}" for k, v in result.assumptions.items()))


def register(app: typer.Typer) -> None:
    app.command("estimate")(estimate)
