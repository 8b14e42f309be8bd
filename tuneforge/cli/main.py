"""The `tuneforge` command. Each command parses arguments and calls the library."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tuneforge.errors import TuneforgeError

app = typer.Typer(
    help="Fine-tune language models on your own data, and prove it was worth it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err = Console(stderr=True)


@app.command()
def quickstart(
    out: Path = typer.Option(Path("runs"), help="Folder for the run directory."),
    as_json: bool = typer.Option(False, "--json", help="Print only one JSON object on stdout."),
) -> None:
    """Pretrain (once) a demo model, fine-tune it with LoRA on support-desk data, compare with the base."""
    from tuneforge.quickstart import REPORTED, run_quickstart

    summary = run_quickstart(out, progress=not as_json, say=lambda m: err.print(f"[bold cyan]{m}[/bold cyan]"))
    if as_json:
        print(json.dumps(summary))
        return
    from tuneforge.quickstart import QUICKSTART_APPROACHES

    shown = [a for a in QUICKSTART_APPROACHES if a in summary]
    table = Table(
        title=f"held-out test split ({summary['test_examples']} conversations); "
        "token F1 and fact accuracy with 95% intervals"
    )
    table.add_column("metric")
    for name in shown:
        table.add_column(name.replace("_", "-"), justify="right")
    for metric in REPORTED:
        table.add_row(metric, *(f"{summary[name][metric]:.4f}" for name in shown))
    table.add_row("token_f1 95% CI", *(_interval(summary["intervals"][name].get("token_f1")) for name in shown))
    table.add_row(
        "fact_accuracy 95% CI", *(_interval(summary["intervals"][name].get("fact_accuracy")) for name in shown)
    )
    table.add_row("prompt tokens", *(f"{summary['prompt_tokens_per_request'][name]:.0f}" for name in shown))
    Console().print(table)
    for name, pct in summary.get("forgetting", {}).get("change_percent_vs_base", {}).items():
        budget = summary["forgetting"]["budget_percent"]
        Console().print(f"- general-text perplexity of {name}: {pct:+.1f}% vs the base (aim: at most +{budget}%)")
    for line in summary["verdict"] if isinstance(summary["verdict"], list) else [summary["verdict"]]:
        Console().print(f"- {line}")
    Console().print(f"run directory: {summary['run_dir']}   total time: {summary['seconds']:.0f} s")


def _interval(m: dict | None) -> str:
    return f"[{m['ci_low']:.3f}, {m['ci_high']:.3f}]" if m and m.get("ci_low") is not None else "-"


@app.command("demo-data")
def demo_data(
    out: Path = typer.Argument(..., help="Folder for train/validation/test.jsonl."),
    n: int = typer.Option(900, help="Conversations in all (split 80/10/10)."),
    seed: int = typer.Option(0),
) -> None:
    """Write the Lumora support-desk dataset (OpenAI chat JSONL) used by the quickstart."""
    from tuneforge.quickstart import write_support_splits

    for name, path in write_support_splits(out, n, seed).items():
        print(f"{name}\t{path}")


@app.command()
def train(
    config: Path = typer.Argument(..., help="YAML run config."),
    overrides: list[str] | None = typer.Argument(None, help="key=value overrides, e.g. train.lr=1e-4"),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run directory's last checkpoint."),
    quiet: bool = typer.Option(False, help="No progress bar."),
    nproc_per_node: int | None = typer.Option(
        None,
        min=1,
        help="Train on this many processes per machine (torchrun; one device per process on CUDA, gloo on CPU).",
    ),
    nnodes: int = typer.Option(1, min=1, help="Machines in the job (start the same command on each)."),
    node_rank: int | None = typer.Option(
        None,
        min=0,
        help="This machine's rank (0 hosts --rdzv-endpoint); without it torchrun's c10d rendezvous assigns ranks.",
    ),
    rdzv_endpoint: str | None = typer.Option(None, help="HOST:PORT every machine reaches (machine 0)."),
    max_restarts: int = typer.Option(
        0, min=0, help="Restart the group this many times after a failure; training resumes from the last checkpoint."
    ),
) -> None:
    """Fine-tune a model as described by a YAML config."""
    from tuneforge.config import load_config
    from tuneforge.train import train as run_train
    from tuneforge.train.distributed import launched

    cfg = load_config(config, overrides or [])  # validated before any process starts
    if nproc_per_node is not None and not launched():
        from tuneforge.cli.launch import launch_torchrun

        sys.exit(
            launch_torchrun(
                config,
                overrides or [],
                resume=resume,
                quiet=quiet,
                nproc_per_node=nproc_per_node,
                nnodes=nnodes,
                node_rank=node_rank,
                rdzv_endpoint=rdzv_endpoint,
                max_restarts=max_restarts,
                run_id=str(cfg.output_dir),
            )
        )
    if launched():
        from tuneforge.cli.launch import rank_failures_named, shutdown_process_group

        with rank_failures_named():
            result = run_train(cfg, resume=resume, progress=not quiet)
        shutdown_process_group()
        if int(os.environ["RANK"]) != 0:
            return  # rank 0 reports
    else:
        result = run_train(cfg, resume=resume, progress=not quiet)
    err.print(f"[green]{result.status}[/green] after {result.steps} steps; run directory: {result.run_dir}")
    print(json.dumps({"run_dir": str(result.run_dir), "status": result.status, **result.final_metrics}))


@app.command("config-help")
def config_help(
    section: str | None = typer.Argument(
        None, help="One section: top level, model, data, method, train, eval (all when absent)."
    ),
) -> None:
    """List every run-config key with its type, default and help text."""
    from tuneforge.config import config_help as describe

    print(describe(section), end="")


@app.command()
def pretrain(
    config: Path = typer.Argument(..., help="YAML pretraining config (corpus, architecture, train)."),
    overrides: list[str] | None = typer.Argument(None, help="key=value overrides"),
) -> None:
    """Train a tokenizer and a small Llama from scratch with the causal-LM objective."""
    from tuneforge.train.pretrain import load_pretrain_config
    from tuneforge.train.pretrain import pretrain as run_pretrain

    folder = run_pretrain(load_pretrain_config(config, overrides or []))
    print(folder)


_TEMPLATE_HELP = (
    "Chat template for a base model without one (chatml, llama3, mistral, gemma, phi3, alpaca or "
    "a .jinja file); a fine-tune uses the one it was trained with."
)


def _load_for_chat(model: str, chat_template: str | None, merge: bool = False):
    from tuneforge.models.chat_templates import prompt_like_training
    from tuneforge.models.loading import load_for_inference

    m, tok = load_for_inference(model, merge=merge)
    prompt_like_training(m, tok, chat_template, where="--chat-template")
    return m, tok


@app.command()
def generate(
    model: str = typer.Argument(..., help="Base model, run directory or adapter folder."),
    prompt: str = typer.Option(..., help="User message."),
    system: str | None = typer.Option(None, help="System message."),
    max_new_tokens: int = typer.Option(64),
    temperature: float = typer.Option(0.0),
    merge: bool = typer.Option(False, help="Merge an adapter into the base before generating."),
    chat_template: str | None = typer.Option(None, help=_TEMPLATE_HELP),
) -> None:
    """Answer one prompt."""
    from tuneforge.models.generate import generate_batch

    m, tok = _load_for_chat(model, chat_template, merge)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    print(generate_batch(m, tok, [messages], max_new_tokens, temperature)[0].text)


@app.command()
def chat(
    model: str = typer.Argument(..., help="Base model, run directory or adapter folder."),
    system: str | None = typer.Option(None, help="System message."),
    max_new_tokens: int = typer.Option(128),
    temperature: float = typer.Option(0.0),
    chat_template: str | None = typer.Option(None, help=_TEMPLATE_HELP),
) -> None:
    """Chat in the terminal (empty line or Ctrl-D to leave)."""
    from tuneforge.models.generate import generate_batch

    m, tok = _load_for_chat(model, chat_template)
    history = [{"role": "system", "content": system}] if system else []
    for line in sys.stdin if not sys.stdin.isatty() else iter(lambda: input("you> "), ""):
        if not line.strip():
            break
        history.append({"role": "user", "content": line.strip()})
        answer = generate_batch(m, tok, [history], max_new_tokens, temperature)[0].text
        history.append({"role": "assistant", "content": answer})
        print(f"assistant> {answer}", flush=True)


@app.command()
def export(
    run: Path = typer.Argument(..., help="Run directory."),
    out: Path = typer.Option(..., help="Folder for the standalone HF model (or the GGUF files and Modelfile)."),
    merge: bool = typer.Option(True, help="Fold the adapter into the base weights."),
    fmt: str = typer.Option("hf", "--format", help="hf (a transformers folder) or gguf (llama.cpp, Ollama)."),
    quant: list[str] | None = typer.Option(
        None, "--quant", help="GGUF type, repeatable: f16 (default), q8_0, f32, bf16; q4_k_m needs llama-cpp-python."
    ),
) -> None:
    """Write a standalone Hugging Face model folder (adapter merged into the base), or GGUF files for llama.cpp."""
    from tuneforge.errors import ModelLoadError, Problem
    from tuneforge.models.artifact import read_artifact
    from tuneforge.models.loading import load_for_inference

    if not merge:
        raise typer.BadParameter(
            "only --merge export is supported; the unmerged artifact is already in the run directory"
        )
    if fmt not in ("hf", "gguf"):
        raise typer.BadParameter(f"--format {fmt}: use hf or gguf")
    if quant and fmt != "gguf":
        raise typer.BadParameter("--quant applies to --format gguf only")
    if fmt == "gguf":
        from tuneforge.export.gguf import describe, export_gguf

        for line in describe(export_gguf(run, out, quant or ["f16"])):
            print(line)
        return
    artifact = read_artifact(run)
    if not artifact.can_merge:
        raise ModelLoadError(
            f"a {artifact.method} run cannot be merged into a standalone model",
            [
                Problem(
                    str(run),
                    f"{artifact.method} keeps extra modules or virtual tokens that plain transformers cannot load",
                    "serve or load the run directory itself (tuneforge generate/chat/serve, load_for_inference)",
                )
            ],
        )
    m, tok = load_for_inference(run, merge=True)
    m.save_pretrained(out)
    tok.save_pretrained(out)
    from tuneforge.export.model_card import write_model_card

    write_model_card(run, out)  # the merged folder explains itself too
    print(out)


models_app = typer.Typer(help="Base models that tuneforge builds itself.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("pull-demo")
def pull_demo(quiet: bool = typer.Option(False, help="No progress bar.")) -> None:
    """Build the demo base model (once, about a minute on a CPU); print the folder it lives in."""
    from tuneforge.models.demo import demo_model_built
    from tuneforge.train.pretrain import ensure_demo_model

    cached = demo_model_built()
    folder = ensure_demo_model(progress=not quiet)
    err.print("the demo model was already built" if cached else "built the demo model")
    print(folder)


def _quiet_libraries() -> None:
    """Library start-up chatter (torchao CUDA-only kernels, hub progress bars) is not for our users.

    Only the named loggers are quietened: when peft first imports them, torchao and bitsandbytes log
    that their CUDA/triton kernels did not load, and torch's pytree logs a deprecation for torchao's
    enums. Of the Python warnings only one is filtered, by message: peft reads a transformers
    attribute that transformers deprecated (on every PeftModel); the rest can be about the user's own
    config or data, so they show.
    """
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging
    import warnings

    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

    logging.getLogger("torchao").setLevel(logging.ERROR)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import torch  # noqa: F401  (torch configures its loggers on import; quieten pytree's afterwards)

    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)


# before the sub-commands import peft/torchao, which log at import time
_quiet_libraries()


def _register_subcommands() -> None:
    from tuneforge.cli import data, estimate, serve, tune
    from tuneforge.cli import eval as eval_cli

    app.add_typer(data.app, name="data")
    serve.register(app)
    eval_cli.register(app)
    estimate.register(app)
    tune.register(app)


_register_subcommands()


def main() -> None:
    try:
        app()
    except TuneforgeError as exc:
        err.print(f"[bold red]error:[/bold red] {exc}", highlight=False, markup=True, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
