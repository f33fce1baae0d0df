"""Loading and saving contract documents. Only `PlanError` leaves these functions."""

from __future__ import annotations

import json
import os
import tempfile
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from plans.cluster import ClusterSpec
from plans.errors import PlanError, from_validation_error
from plans.experiment import ExperimentSpec
from plans.plan import Plan

_EXAMPLES = "examples"


def read_document(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlanError("no such file", source=str(path)) from None
    except IsADirectoryError:
        raise PlanError("is a folder, not a file", source=str(path)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise PlanError(f"cannot read: {e}", source=str(path)) from None
    return parse_document(text, toml=path.suffix.lower() == ".toml", source=str(path))


def parse_document(text: str, toml: bool = False, source: str | None = None) -> dict[str, Any]:
    """JSON or TOML text -> a dict, or PlanError."""
    try:
        doc = tomllib.loads(text) if toml else json.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PlanError(f"not valid TOML: {e}", source=source) from None
    except json.JSONDecodeError as e:
        raise PlanError(
            f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}", source=source
        ) from None
    except RecursionError:
        raise PlanError("document nested too deeply", source=source) from None
    if not isinstance(doc, dict):
        raise PlanError(f"the document must be an object, not {type(doc).__name__}", source=source)
    return doc


def _validate(
    cls: type[BaseModel], doc: Any, source: str | None, context: dict[str, Any] | None = None
):
    try:
        return cls.model_validate(doc, context=context)
    except ValidationError as e:
        raise from_validation_error(e).with_source(source or cls.__name__) from None
    except PlanError as e:
        raise (e.with_source(source) if source else e) from None
    except RecursionError:
        raise PlanError("document nested too deeply", source=source) from None


def plan_from_dict(doc: Any, source: str | None = None) -> Plan:
    return _validate(Plan, doc, source)


def load_plan(path: str | Path) -> Plan:
    """A plan file; the paths its experiment names resolve against the plan's folder, as an
    experiment file's do against its own (searched plans hold absolute paths already)."""
    path = Path(path)
    return _validate(Plan, read_document(path), str(path), context={"base_dir": path.parent})


def save_plan(plan: Plan, path: str | Path) -> None:
    """Write atomically: a reader never sees half a plan."""
    write_json_atomic(plan.model_dump(mode="json"), Path(path))


def write_json_atomic(doc: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def experiment_from_dict(
    doc: Any, source: str | None = None, base_dir: Path | None = None
) -> ExperimentSpec:
    return _validate(
        ExperimentSpec, doc, source, context={"base_dir": base_dir, "check_folders": True}
    )


def load_experiment(ref: str | Path) -> ExperimentSpec:
    """A TOML/JSON experiment file, or the name of a shipped example (`ppo-tiny`, ...)."""
    path = Path(ref)
    if not path.exists() and str(ref) in example_names("experiment"):
        path = example_path(str(ref), "experiment")
    elif not path.exists():
        raise PlanError(
            f"no such file, and not a built-in experiment ({', '.join(example_names('experiment'))})",
            source=str(ref),
        )
    doc = read_document(path)
    return _validate(ExperimentSpec, doc, str(path), context=base_dir_context(path))


def cluster_from_dict(doc: Any, source: str | None = None) -> ClusterSpec:
    return _validate(ClusterSpec, doc, source)


# ---- shipped examples -------------------------------------------------------------------------
def _examples_dir() -> Path:
    return Path(str(resources.files("plans") / _EXAMPLES))


def example_names(kind: str) -> list[str]:
    """Names of shipped examples: kind `experiment` (TOML) or `plan` (JSON)."""
    suffix = ".toml" if kind == "experiment" else ".json"
    return sorted(p.stem for p in _examples_dir().glob(f"*{suffix}"))


def example_path(name: str, kind: str) -> Path:
    return _examples_dir() / (name + (".toml" if kind == "experiment" else ".json"))


def base_dir_context(path: str | Path | None) -> dict[str, Any]:
    """Validation context of an experiment document: relative paths resolve against its
    file's folder, and model folders are opened and checked (plans.folders)."""
    return {"base_dir": Path(path).parent if path else None, "check_folders": True}
