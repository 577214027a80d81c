"""data.label_mode / data.label_columns: the params rules, the multi-label demo config, and that a
binary run's params hash is the one it had before label modes existed."""

from __future__ import annotations

import copy

import pytest
import yaml

from conftest import REPO
from fake_pipeline import committed_params
from pathtrail.config.compose import compose_params
from pathtrail.config.label_section import output_names, without_default_labels
from pathtrail.config.loading import ParamsError, parse_section
from pathtrail.config.sections import DataParams, training_sections
from pathtrail.core.hashing import digest

LABELS = ["lymphocytes", "fibrosis", "haemorrhage"]


def data_with(**keys) -> dict:
    params = committed_params()
    params["data"].update(keys)
    return params


def test_binary_is_the_default_and_the_committed_params_say_so():
    params = committed_params()
    assert params["data"]["label_mode"] == "binary" and params["data"]["label_columns"] == []
    data = parse_section(params, "data", DataParams)
    assert output_names(data) == ["benign", "tumour"]
    # a params file from before label modes (no such keys) still loads, as binary
    old = copy.deepcopy(params)
    del old["data"]["label_mode"], old["data"]["label_columns"]
    assert parse_section(old, "data", DataParams).label_mode == "binary"


def test_binary_training_hash_is_unchanged_by_the_new_keys():
    params = committed_params()
    old = copy.deepcopy(params)
    del old["data"]["label_mode"], old["data"]["label_columns"]
    assert digest(training_sections(params)) == digest(training_sections(old))
    multi = data_with(label_mode="multilabel", label_columns=LABELS)
    assert without_default_labels(multi["data"]) is multi["data"]  # a multi-label model hashes its labels
    assert digest(training_sections(multi)) != digest(training_sections(params))


@pytest.mark.parametrize(("keys", "message"), [
    ({"label_mode": "multiclass"}, "'data.classes' lists 2 classes but data.label_mode is multiclass"),
    ({"label_mode": "multiclass", "classes": ["a", "b", "c"], "label_columns": ["x"]},
     "data.label_mode is multiclass: set data.label_mode=multilabel"),
    ({"label_mode": "binary", "classes": ["a", "b", "c"]}, "set data.label_mode=multiclass for more than two"),
    ({"label_mode": "multiclass", "classes": ["a", "b", "c\x1b[31m"]}, "'data.classes' has the name .*printable"),
    ({"label_mode": "multiclass", "classes": ["a", "b", " c"]}, "'data.classes' has the name .*spaces around"),
    ({"label_mode": "multilabel", "label_columns": []}, "'data.label_columns' is empty"),
    ({"label_mode": "binary", "label_columns": ["a"]}, "data.label_mode is binary"),
    ({"label_mode": "multilabel", "label_columns": ["a", "a"]}, "has duplicates"),
    ({"label_mode": "multilabel", "label_columns": ["site"]}, "a column the pipeline uses itself"),
    ({"label_mode": "multilabel", "label_columns": ["ok", "bad\nname"]}, "printable characters"),
    ({"label_mode": "multilabel", "label_columns": [" padded"]}, "without spaces around them"),
    ({"label_mode": "multilabel", "label_columns": [""]}, "non-empty"),
    ({"label_mode": "ordinal"}, "data.label_mode"),
])
def test_label_params_errors_name_the_key_and_the_fix(keys, message):
    with pytest.raises(ParamsError, match=message):
        parse_section(data_with(**keys), "data", DataParams)


def test_odd_but_printable_label_names_are_accepted_and_kept_verbatim():
    names = ["=HYPERLINK(1)", "a|b", "<b>x</b>", "ü-ß"]
    data = parse_section(data_with(label_mode="multilabel", label_columns=names), "data", DataParams)
    assert output_names(data) == names


def test_the_multilabel_demo_variant_composes_into_valid_params():
    params = yaml.safe_load(compose_params(REPO / "pipelines", ["data=demo_multilabel"]))
    data = parse_section(params, "data", DataParams)
    assert data.label_mode == "multilabel" and data.label_columns == LABELS
    assert data.demo is not None and data.demo.findings == LABELS
    binary = committed_params()["data"]
    # the variant changes only the label keys and the demo's findings
    changed = {k for k in set(binary) | set(params["data"]) if binary.get(k) != params["data"].get(k)}
    assert changed == {"label_mode", "label_columns", "demo"}
    assert {k for k in params["data"]["demo"] if binary["demo"].get(k) != params["data"]["demo"][k]} == {"findings"}
