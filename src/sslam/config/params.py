"""The whole params file: every section, and the checks that span sections. Stage scripts load it with
:func:`load_config`, so an unknown key, a wrong type or an out-of-range value stops a stage at start-up
with a message naming the key and what is allowed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, model_validator

from sslam.config.base import (
    BUILTIN_ENCODERS,
    PARAMS_FILE,
    Name,
    exit_on_error,
    merged,
    read_params,
    validate,
)
from sslam.config.data import DownloadParams, OntologyParams
from sslam.config.downstream import (
    DatasetConfig,
    EvaluateConfig,
    FinetuneConfig,
    ImportConfig,
    LinearEvalConfig,
    TaskConfig,
)
from sslam.config.features import FeaturesParams
from sslam.config.pretrain import PretrainParams
from sslam.config.report import ReportConfig


class Config(DownloadParams, OntologyParams, FeaturesParams, PretrainParams):
    """Every section: what each stage reads (the ``*Params`` roots, with their checks) and the evaluation's."""

    finetune: FinetuneConfig
    linear_eval: LinearEvalConfig
    tasks: Annotated[dict[Name, TaskConfig], Field(min_length=1)]
    evaluate: EvaluateConfig
    report: ReportConfig
    datasets: dict[Name, DatasetConfig]  # downstream tasks on real datasets (docs/data.md)
    imports: dict[Name, ImportConfig]  # checkpoints from outside (docs/interop.md)

    def task(self, key: str) -> TaskConfig | DatasetConfig:
        """Task ``key``: a corpus task (``tasks``) or a real dataset (``datasets``); names are unique."""
        if key in self.tasks:
            return self.tasks[key]
        if key in self.datasets:
            return self.datasets[key]
        raise KeyError(
            f"task {key!r} is in neither tasks ({sorted(self.tasks)}) nor datasets ({sorted(self.datasets)})"
        )

    @property
    def task_names(self) -> list[str]:
        """Every evaluated task: the corpus's, then the real datasets."""
        return [*self.tasks, *self.datasets]

    @property
    def finetuned_tasks(self) -> list[str]:
        return [*self.evaluate.finetune_tasks, *self.evaluate.finetune_datasets]

    def finetune_recipe(self, task: str) -> FinetuneConfig:
        """The base fine-tuning recipe with the task's overrides."""
        return merged(self.finetune, self.task(task).recipe.model_dump(exclude_none=True))

    def linear_recipe(self, task: str) -> LinearEvalConfig:
        return merged(self.linear_eval, self.task(task).linear.model_dump(exclude_none=True))

    @model_validator(mode="after")
    def _check_tasks(self) -> Config:
        both = sorted(set(self.tasks) & set(self.datasets))
        if both:
            raise ValueError(f"{both} name both a task and a dataset: a task name must be unique")
        unknown = [t for t in self.evaluate.finetune_tasks if t not in self.tasks]
        if unknown:
            raise ValueError(f"evaluate.finetune_tasks {unknown} are not in tasks ({sorted(self.tasks)})")
        unknown = [t for t in self.evaluate.finetune_datasets if t not in self.datasets]
        if unknown:
            raise ValueError(f"evaluate.finetune_datasets {unknown} are not in datasets ({sorted(self.datasets)})")
        clash = [k for k in self.imports if re.fullmatch(BUILTIN_ENCODERS, k) or k in self.pretrain.stage2_runs]
        if clash:
            raise ValueError(f"imports {clash}: the name of a pretraining run or a random encoder; choose another")
        for key in ("linear_encoders", "finetune_encoders"):
            files = [e for e in getattr(self.evaluate, key) if e.startswith("file:")]
            if files:
                raise ValueError(
                    f"evaluate.{key} {files}: a checkpoint file is named under imports first, e.g. "
                    f"imports: {{released: {{path: {files[0][5:]}}}}}, then listed by that name (DVC then tracks it)"
                )
            bad = [
                e
                for e in getattr(self.evaluate, key)
                if not (re.fullmatch(BUILTIN_ENCODERS, e) or e in self.pretrain.stage2_runs or e in self.imports)
            ]
            if bad:
                raise ValueError(
                    f"evaluate.{key} {bad}: an encoder is stage1, stage2, random<N>, fbank_stats, a key of "
                    f"pretrain.stage2_runs ({sorted(self.pretrain.stage2_runs)}) or of imports ({sorted(self.imports)})"
                )
        if "fbank_stats" in self.evaluate.finetune_encoders:
            raise ValueError("evaluate.finetune_encoders: fbank_stats has no weights to fine-tune (a linear floor)")
        return self


def load_config_or_exit(path: str | Path = PARAMS_FILE) -> Config:
    """For stage scripts: the validated config, or the error on stderr and exit status 2."""
    return exit_on_error(load_config, path)


def parse_config(raw: Any, source: str = PARAMS_FILE) -> Config:
    """Validate an already-parsed params mapping."""
    return validate(Config, raw, source)


def load_config(path: str | Path = PARAMS_FILE, overrides: dict[str, Any] | None = None) -> Config:
    """Read and validate a params file; ``overrides`` maps dotted keys to values (as ``dvc exp run -S``)."""
    return parse_config(read_params(path, overrides), str(path))
