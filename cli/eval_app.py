"""`rlhf-eval`: score a saved model on held-out questions, as the in-run evaluation does."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from cli.common import err, out, print_json, run_app

app = typer.Typer(name="rlhf-eval", pretty_exceptions_enable=False, add_completion=False)

EXIT_CODES_EVAL = (
    "Exit codes: 0 done; 1 a problem with an input (the folder, data file or option, named on "
    "stderr) or a worker that failed; 2 a usage error (unknown option, missing argument); 3 an "
    "internal error (rerun with --debug); 130 / 143 interrupted."
)


@app.command(epilog=EXIT_CODES_EVAL)
def evaluate(
    model: Annotated[
        Path,
        typer.Argument(
            help="A run folder (its final actor, or a checkpoint's with --iteration), a "
            "checkpoint folder (checkpoints/iter-N), or a Hugging Face model folder."
        ),
    ],
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help='JSONL with one {"question", "answer"} per line (answer: reasoning, then '
            '"#### <number>"), or builtin:arithmetic. Default: the run\'s [evaluation] '
            "dataset, else builtin:arithmetic.",
        ),
    ] = None,
    iteration: Annotated[
        int | None,
        typer.Option(min=1, help="With a run folder: the checkpoint after N iterations."),
    ] = None,
    role: Annotated[
        str, typer.Option(help="With a run or checkpoint folder: which model.")
    ] = "actor",
    shots: Annotated[
        int | None, typer.Option(min=0, help="Few-shot exemplars (first rows).")
    ] = None,
    questions: Annotated[int | None, typer.Option(min=1, help="Held-out questions.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(min=1, help="Tokens per answer.")] = None,
    workers: Annotated[
        int, typer.Option(min=1, help="Data-parallel workers sharing the questions.")
    ] = 1,
    device: Annotated[str, typer.Option(help="cpu (gloo workers) or cuda (one GPU each).")] = "cpu",
    dtype: Annotated[
        str | None,
        typer.Option(help="float32 or bfloat16; default: the run's, else the folder's."),
    ] = None,
    tokenizer: Annotated[
        Path | None, typer.Option(help="Tokenizer folder; default: the run's or the model's.")
    ] = None,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds any wait may take.")] = 120.0,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print one JSON document on stdout and nothing else there."),
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
) -> None:
    """Score a saved model on a held-out question set: few-shot chain-of-thought prompts,
    greedy decoding, exact match of the final number (the in-run evaluation's code). A run
    folder's settings ([evaluation] of its plan, dtype, tokenizer) are the defaults, so the
    result equals the run's own evaluation of the same model with as many workers as its
    generation call has data-parallel replicas."""
    from executor.runtime.evaluate_model import EvalTask, evaluate_worker, prepare
    from executor.runtime.launch import launch
    from plans import PlanError
    from plans.experiment import EvalSpec

    folder, exp = _resolve(model, iteration, role)
    base = exp.evaluation if exp is not None and exp.evaluation is not None else None
    given = {"shots": shots, "questions": questions, "max_new_tokens": max_new_tokens}
    fields = {
        **(base.model_dump() if base else {}),
        **{k: v for k, v in given.items() if v is not None},
    }
    fields["dataset"] = (
        str(Path(data).resolve()) if data and data != "builtin:arithmetic" else data
    ) or fields.get("dataset", "builtin:arithmetic")
    if fields["dataset"] != "builtin:arithmetic" and not Path(fields["dataset"]).is_file():
        raise PlanError("no such file", field="--data", source=fields["dataset"])
    try:
        spec = EvalSpec.model_validate(fields)
    except Exception as e:  # pydantic's ValidationError: name the option
        from pydantic import ValidationError

        from plans.errors import from_validation_error

        if isinstance(e, ValidationError):
            raise from_validation_error(e, prefix="evaluation") from None
        raise
    if device not in ("cpu", "cuda"):
        raise PlanError(f"{device!r} is neither cpu nor cuda", field="--device")
    if device == "cuda":
        import torch

        if torch.cuda.device_count() < workers:
            raise PlanError(
                f"{workers} workers need {workers} GPUs; torch sees {torch.cuda.device_count()}",
                field="--workers",
            )
    dtype = dtype or (exp.dtype if exp is not None else _folder_dtype(folder))
    if dtype not in ("float32", "bfloat16"):
        raise PlanError(f"{dtype!r} is neither float32 nor bfloat16", field="--dtype")
    if spec.questions < workers:
        raise PlanError(
            f"{spec.questions} questions cannot be shared by {workers} workers", field="--workers"
        )
    tok = str(tokenizer) if tokenizer else (exp.tokenizer if exp is not None else None)
    with tempfile.TemporaryDirectory(prefix="rlhf-eval-") as tmp:
        task = EvalTask(str(folder), spec.model_dump(), dtype, tok, str(Path(tmp) / "result.json"))
        prepare(task)  # a bad folder, tokenizer or data file: one line, before any worker
        if not as_json:
            err.print(
                f"rlhf-eval: {folder} on {spec.dataset} ({spec.questions} questions, "
                f"{spec.shots} shots), {workers} {device} worker(s)",
                highlight=False,
            )
        code = launch(evaluate_worker, task, world=workers, timeout_s=timeout, device=device)
        if code != 0:
            raise typer.Exit(code)
        result = json.loads(Path(task.result).read_text(encoding="utf-8"))
    doc = {
        "model": str(folder),
        "dataset": spec.dataset,
        "shots": spec.shots,
        "max_new_tokens": spec.max_new_tokens,
        "dtype": dtype,
        "workers": workers,
        "device": device,
        **result,
    }
    if as_json:
        print_json(doc)
        return
    out.print(
        f"accuracy {doc['accuracy']:.4f} ({doc['correct']}/{doc['questions']} exact matches) "
        f"on {spec.dataset}",
        highlight=False,
    )


def _resolve(model: Path, iteration: int | None, role: str):
    """(HF folder, the run's experiment or None) for a run, checkpoint or model folder."""
    from plans import PlanError, load_plan

    if not model.is_dir():
        raise PlanError("no such folder", source=str(model))
    run_dir = None
    if (model / "plan.json").is_file():  # a run folder
        run_dir = model
        if iteration is not None:
            model = model / "checkpoints" / f"iter-{iteration:06d}"
            if not model.is_dir():
                raise PlanError(f"no checkpoint {model}", field="--iteration")
        else:
            model = model / "final"
    elif iteration is not None:
        raise PlanError("--iteration needs a run folder (one with plan.json)", field="--iteration")
    if (model / "run.json").is_file():  # a checkpoint folder: its HF folders are in hf/
        run_dir = run_dir or model.parent.parent
        model = model / "hf"
    if run_dir is not None:
        model = model / role
        if not (model / "config.json").is_file():
            raise PlanError(
                f"no {role} model in {model.parent} (is the run finished?)", field="--role"
            )
    elif not (model / "config.json").is_file():
        raise PlanError(
            "neither a run folder (plan.json), a checkpoint (run.json) nor a model folder "
            "(config.json)",
            source=str(model),
        )
    exp = None
    if run_dir is not None and (run_dir / "plan.json").is_file():
        exp = load_plan(run_dir / "plan.json").experiment
    return model, exp


def _folder_dtype(folder: Path) -> str:
    """The folder's stored dtype when it is one the executor runs, else float32."""
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "float32"
    stored = cfg.get("torch_dtype") or cfg.get("dtype")
    return stored if stored in ("float32", "bfloat16") else "float32"


def main() -> None:
    run_app(app, "rlhf-eval")


if __name__ == "__main__":
    main()
