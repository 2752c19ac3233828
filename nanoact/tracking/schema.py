"""The run schema of docs/TRACKING.md as code: every tag, param and metric name nanoact writes or reads, MLflow's
limits, and the functions that build a run's tags. Rename a name here and every writer and reader follows.

Pure data: importing this module imports neither MLflow nor PyTorch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

# -- MLflow's limits ---------------------------------------------------------------------------------------------
MAX_TAG_LEN = 5000  # characters of a tag value
MAX_PARAM_LEN = 6000  # characters of a param value
MAX_PARAMS_PER_BATCH = 100  # params per log_batch call
MAX_METRICS_PER_BATCH = 1000  # metrics per log_batch call

# -- MLflow's own tags that nanoact sets ---------------------------------------------------------------------------
PARENT_RUN_ID = "mlflow.parentRunId"
RUN_NAME = "mlflow.runName"
NOTE = "mlflow.note.content"  # a run's or an experiment's description
SOURCE_NAME = "mlflow.source.name"
SOURCE_TYPE = "mlflow.source.type"
SOURCE_COMMIT = "mlflow.source.git.commit"
USER = "mlflow.user"
EXPERIMENT_KIND = "mlflow.experimentKind"
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."  # + a view's share key: a shared view of the runs table
DATASET_CONTEXT = "mlflow.data.context"  # an input tag of a run's dataset

# -- nanoact's run tags --------------------------------------------------------------------------------------------
ROLE = "nanoact.role"
ROLE_PARENT, ROLE_CELL = "parent", "cell"
STUDY = "nanoact.study"
GRID_KEY = "nanoact.grid_key"
TRIAL_NUMBER = "optuna.trial_number"
ERROR = "nanoact.error"
ACTIVATION = "nanoact.activation"
SEED = "nanoact.seed"
INIT_SEED = "nanoact.init_seed"
DATA_SEED = "nanoact.data_seed"
DROPOUT_SEED = "nanoact.dropout_seed"
MODEL = "nanoact.model"
EVAL_SET_SHA256 = "nanoact.eval_set_sha256"
DATA_SHA256 = "nanoact.data_sha256"
ACTIVATION_MODULES = "nanoact.activation_modules"
ACTIVATION_MODULES_EXPECTED = "nanoact.activation_modules_expected"
WIRING_CHECK = "nanoact.wiring_check"
N_PARAMS = "nanoact.n_params"
VERSION = "nanoact.version"
TORCH_VERSION = "nanoact.torch_version"
GIT_COMMIT = "nanoact.git_commit"
DEVICE = "nanoact.device"
HOST = "nanoact.host"
# a parent run's
GRID = "nanoact.grid"  # the declared axes as JSON (also an Optuna study user attr)
SWEEP_SOURCE = "nanoact.sweep_source"
N_CELLS = "nanoact.n_cells"
SEED_RULE = "nanoact.seed_rule"  # a seeds-on-demand sweep's rule as JSON (start, step, max, target)
STUDY_NONCE = "nanoact.study_nonce"  # finds a parent run whose creator was killed before recording it
# an experiment's
GRID_AXIS_PREFIX = "nanoact.grid."  # + an axis: its values as JSON

# -- params: the flattened config, plus the two design factors -----------------------------------------------------
P_ACTIVATION = "activation"
P_SEED = "seed"
P_MODEL_ACTIVATION = "model.activation"
P_TRAIN_SEED = "train.seed"
P_MAX_ITERS = "train.max_iters"
P_DTYPE_RESOLVED = "train.dtype_resolved"

# -- metrics -------------------------------------------------------------------------------------------------------
TRAIN_LOSS = "train/loss"
VAL_LOSS = "val/loss"
TRAIN_ACC = "train/acc"
VAL_ACC = "val/acc"
TRAIN_LOSS_ITER = "train/loss_iter"
LR = "lr"
TOKENS_PER_S = "tokens_per_s"
FINAL_TRAIN_LOSS = "final/train_loss"
FINAL_VAL_LOSS = "final/val_loss"
FINAL_TRAIN_ACC = "final/train_acc"
FINAL_VAL_ACC = "final/val_acc"
BEST_VAL_LOSS = "best/val_loss"
BEST_VAL_ACC = "best/val_acc"
TIME_TRAIN_S = "time/train_s"
TIME_LOSS_EVALS_S = "time/loss_evals_s"
TIME_PREDICTION_EVALS_S = "time/prediction_evals_s"
TIME_WALL_S = "time/wall_s"
TOKENS_PER_S_MEAN = "tokens_per_s_mean"
SUMMARY_PREFIXES = ("final/", "best/", "time/", TOKENS_PER_S_MEAN)  # a finished run's once-only metrics
REPORT_PREFIX = "report/"  # a parent run's metrics written by `nanoact report`

# -- artifacts -----------------------------------------------------------------------------------------------------
PREDICTIONS_DIR = "predictions"  # predictions/step_<N>.npz
CHECKPOINT_DIR = "checkpoint"  # checkpoint/model.pt
CONFIG_FILE = "config.json"


def tag_filter(tag: str, value: str) -> str:
    """A ``search_runs`` clause: tag ``tag`` equals ``value`` (the values nanoact writes need no escaping)."""
    return f"tags.`{tag}` = '{value}'"


def cell_tags(*, parent_run_id: str, study: str, grid_key: str, trial_number: int, note: str) -> dict[str, str]:
    """The tags a sweep sets on a cell run when it creates it (the trainer adds the run's own: activation, seeds,
    wiring check, provenance)."""
    return {PARENT_RUN_ID: parent_run_id, ROLE: ROLE_CELL, GRID_KEY: grid_key, STUDY: study,
            TRIAL_NUMBER: str(trial_number), NOTE: note}


def parent_tags(*, study: str, version: str, grid: Mapping[str, Any], sweep_source: str, n_cells: int,
                nonce: str, note: str) -> dict[str, str]:
    """The tags of a sweep's parent run."""
    return {ROLE: ROLE_PARENT, STUDY: study, VERSION: version, GRID: json.dumps(grid), SWEEP_SOURCE: sweep_source,
            N_CELLS: str(n_cells), SOURCE_NAME: "nanoact sweep", SOURCE_TYPE: "LOCAL", STUDY_NONCE: nonce,
            NOTE: note}


def experiment_grid_tags(grid: Mapping[str, Any]) -> dict[str, str]:
    """An experiment's tags ``nanoact.grid.<axis>``: each axis's values as JSON."""
    return {f"{GRID_AXIS_PREFIX}{k}": json.dumps(v) for k, v in grid.items()}


def training_tags(*, model: str, activation: str, seed: int, init_seed: int, data_seed: int, dropout_seed: int,
                  eval_set_sha256: str, data_sha256: str, modules_found: Sequence[str],
                  modules_expected: Sequence[str], wiring_failure: str | None, n_params: int) -> dict[str, str]:
    """The tags the trainer sets on its run once the model is built: what was trained, on what, and whether the
    activation is wired where the config says (``wiring_failure``: None when the check passed)."""
    return {
        MODEL: model, ACTIVATION: activation, SEED: str(seed), INIT_SEED: str(init_seed), DATA_SEED: str(data_seed),
        DROPOUT_SEED: str(dropout_seed), EVAL_SET_SHA256: eval_set_sha256, DATA_SHA256: data_sha256,
        ACTIVATION_MODULES: ";".join(modules_found), ACTIVATION_MODULES_EXPECTED: ";".join(sorted(modules_expected)),
        WIRING_CHECK: "passed" if wiring_failure is None else f"failed: {wiring_failure}", N_PARAMS: str(n_params),
    }
