"""The saved view of an experiment's runs table that `nanoact ui --experiment` opens: one study's FINISHED cells
grouped by activation, learning curves first in the chart view (MLflow's "share view" state, an experiment tag)."""

from __future__ import annotations

import json
from typing import Any, Mapping

from nanoact.tracking import schema as S

VIEW_KEY = "nanoact-by-activation"  # the shared views of the runs table that `nanoact ui --experiment` opens


def view_key(study: str) -> str:
    """The share key of one study's view (study names are plain: letters, digits, '-', '_', '.')."""
    return f"{VIEW_KEY}.{study}"


def runs_table_view(grid: Mapping[str, list[Any]], study: str) -> tuple[str, str]:
    """(tag name, tag value) of a shared view of the runs table (the MLflow UI's "share view" state): the FINISHED
    cells of one study only, grouped by activation, with the grid's axes, final val loss/accuracy and wall time as
    columns, best first. The UI reads it from the experiment tag ``mlflow.sharedViewState.<key>``."""
    axes = [S.P_ACTIVATION if k == S.P_MODEL_ACTIVATION else S.P_SEED if k == S.P_TRAIN_SEED else k for k in grid]
    columns = [f"params.`{a}`" for a in dict.fromkeys([S.P_ACTIVATION, S.P_SEED, *axes])]
    columns += [f"metrics.`{m}`" for m in (S.FINAL_VAL_LOSS, S.FINAL_VAL_ACC, S.TIME_WALL_S)]
    state = {
        "searchFilter": view_filter(study),
        "orderByKey": f"metrics.`{S.FINAL_VAL_LOSS}`", "orderByAsc": True,
        "selectedColumns": columns,
        "groupBy": {"aggregateFunction": "average",
                    "groupByKeys": [{"mode": "param", "groupByData": S.P_ACTIVATION}]},
        "groupsExpanded": {},
        **_chart_view(),
    }
    return f"{S.SHARED_VIEW_PREFIX}{view_key(study)}", json.dumps(state)


def view_filter(study: str) -> str:
    """The runs-table filter of a study's view: its cells that trained to the end (no FAILED or KILLED attempt
    joins an activation's group)."""
    return (f"{S.tag_filter(S.STUDY, study)} and {S.tag_filter(S.ROLE, S.ROLE_CELL)} and "
            "attributes.status = 'FINISHED'")


CURVES = (S.VAL_LOSS, S.TRAIN_LOSS_ITER, S.VAL_ACC, S.LR, S.TRAIN_LOSS)
SUMMARIES = ("best", "final", "time")  # single-point metrics: their chart sections start collapsed


def _chart_view() -> dict[str, Any]:
    """The chart view opens on learning curves (line charts over steps), summaries collapsed below. Losses get a
    log y-axis: step 0 (about ln 65 = 4.2 nats) would otherwise squeeze the activations' curves together near the
    bottom of a linear axis that starts at 0."""
    def line(key: str) -> dict[str, Any]:
        return {"type": "LINE", "uuid": f"nanoact-{key}", "metricSectionId": "nanoact-curves", "isGenerated": True,
                "deleted": False, "metricKey": key, "selectedMetricKeys": [key], "displayName": key,
                "runsCountToCompare": 10, "lineSmoothness": 0, "xAxisScaleType": "linear",
                "scaleType": "log" if "loss" in key else "linear",
                "range": {}, "xAxisKey": "step", "selectedXAxisMetricKey": "", "yAxisKey": "metric",
                "yAxisExpressions": [], "ignoreOutliers": False, "useGlobalXaxisKey": True,
                "useGlobalLineSmoothing": True}

    def section(uuid: str, name: str, display: bool) -> dict[str, Any]:
        return {"uuid": uuid, "name": name, "display": display, "isReordered": False, "deleted": False,
                "isGenerated": True}

    sections = [section("nanoact-curves", "learning curves", True)]
    sections += [section(f"autogen-{name}", name, False) for name in SUMMARIES]
    return {"compareRunCharts": [line(k) for k in CURVES], "compareRunSections": sections,
            "isAccordionReordered": True}


def runs_table_path(tracking_uri: str, experiment: str, study: str | None = None) -> tuple[str, str | None]:
    """(the UI path of an experiment's runs table, the study it shows): nanoact's shared view of ``study`` (default:
    the newest study) when the sweep stored one, else the plain table (study None)."""
    from nanoact.errors import NanoactError
    from nanoact.tracking.store import Store

    store = Store(tracking_uri)
    exp = store.client.get_experiment_by_name(experiment)
    if exp is None:
        raise NanoactError(f"no experiment {experiment!r} in this store yet; run `nanoact sweep --experiment "
                           f"{experiment}` (or `nanoact train`) first")
    known = store.studies(exp.experiment_id)
    if study is not None and study not in known:
        raise NanoactError(f"experiment {experiment!r} has no study {study!r}; its studies: "
                           f"{', '.join(known) or 'none'}")
    chosen = study or next(iter(known), None)
    # workflowType: MLflow 3's UI opens in its GenAI mode (an empty trace overview) unless told otherwise
    path = f"/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
    if chosen is not None and f"{S.SHARED_VIEW_PREFIX}{view_key(chosen)}" in exp.tags:
        return f"{path}&viewStateShareKey={view_key(chosen)}", chosen
    return path, None
