"""The front carries the model's size as each pipeline reports it: parameters (served, trained or
prepared), trainable parameters and FLOPs per prediction -- in pareto.csv, trials.csv and the JSON
rows -- and leaves a figure empty (never 0) where the pipeline reports none."""

from __future__ import annotations

import csv
import json

import pandas as pd

from greenknobs.records import TrialRow
from greenknobs.report import tables
from greenknobs.search.rows import model_size

TEXT = {"model": {"details": {"parameters": 22_713_216}}, "training": {"details": {"trainable_parameters": 1_000}},
        "inference": {"details": {"workload": "x"}}}
VISION = {"training": {"details": {"parameters": {"dense": 500_000, "trained": 300_000}}},
          "inference": {"details": {"served": {"parameters": 290_000, "flops_per_image": 4_200_000, "blocks": 3}}}}


def test_size_is_read_from_the_details_each_pipeline_records():
    assert model_size(TEXT) == {"parameters": 22_713_216, "trainable_parameters": 1_000,
                                "sources": {"parameters": "model.parameters",
                                            "trainable_parameters": "training.trainable_parameters"}}
    vision = model_size(VISION)
    assert vision["parameters"] == 290_000 and vision["sources"]["parameters"] == "inference.served.parameters"
    assert vision["flops_per_prediction"] == 4_200_000 and "trainable_parameters" not in vision
    assert model_size({"training": VISION["training"]})["parameters"] == 300_000  # served size absent: as trained
    assert model_size({"model": {"details": {"parameters": {"odd": 1}}}}) == {}  # nothing usable: nothing
    assert model_size({}) == {}


def row(trial, size):
    return TrialRow(trial=trial, baseline=trial == 0, state="COMPLETE", metric="macro_f1", energy_j=10.0 + trial,
                    validation_quality=0.9, test_quality=0.9, energy_saving_pct=0.0, feasible=True,
                    provenance="modelled", meter="cpu-model", model_size=size)


def test_pareto_csv_and_json_carry_the_size_and_leave_unreported_figures_empty(tmp_path):
    rows = [row(0, model_size(TEXT)), row(1, model_size(VISION)), row(2, {})]
    files = tables.write_front(rows, rows, tmp_path)
    with files["pareto_csv"].open(newline="") as fh:
        cells = list(csv.DictReader(fh))  # the raw text: whole numbers, and empty cells
    assert {"parameters", "trainable_parameters", "flops_per_prediction"} <= set(cells[0])
    assert cells[0]["parameters"] == "22713216" and cells[0]["flops_per_prediction"] == ""  # whole, and empty
    assert cells[1]["flops_per_prediction"] == "4200000" and cells[1]["trainable_parameters"] == ""
    assert cells[2]["parameters"] == "" and cells[2]["flops_per_prediction"] == ""  # reported none: not 0
    frame = pd.read_csv(files["trials_csv"])
    assert frame["parameters"].tolist()[:2] == [22713216, 290000]
    assert json.loads(json.dumps(rows[1].to_dict()))["model_size"]["flops_per_prediction"] == 4_200_000
    table = tables.front_table_dict(rows)  # the MLflow table: plain values, None where empty
    assert table["parameters"] == [22713216, 290000, None]
    assert "| 22,713,216 |" in tables.front_markdown(rows, rows, "t") and "| – |" in tables.front_markdown(rows, rows, "t")
    assert "flops_per_prediction" in tables.render_front(rows)
    assert "flops_per_prediction" not in tables.render_front(rows[:1])  # no row reported it: no empty column
