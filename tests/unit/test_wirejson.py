"""tether.wirejson: the CNI plugin's JSON without the json module's imports. Same output
as json.dumps, same values as json.loads, a ValueError for every malformed input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether import wirejson

REPO = Path(__file__).resolve().parents[2]
VALUES = [
    {"cniVersion": "1.1.0", "ips": [{"address": "10.1.0.2/24", "gateway": "10.1.0.1"}], "dns": {}},
    {"a": [1, -2, 2.5, 1e300, None, True, False, "é\n\"\\\t\u2028"], "b": {"c": [], "d": {}}},
    [], {}, "text", 0, -7, 3.0, None, True, {"big": 10**40},
]


@pytest.mark.parametrize("value", VALUES)
def test_same_as_json(value: object) -> None:
    assert wirejson.dumps(value) == json.dumps(value)
    assert wirejson.loads(json.dumps(value)) == value
    assert wirejson.loads(json.dumps(value).encode()) == value
    assert wirejson.loads(" \n" + json.dumps(value, indent=2) + "\n ") == value
    assert wirejson.dumps_indented(value) == json.dumps(value, indent=2, sort_keys=True)  # the CLI's JSON


@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
))  # fmt: skip
def test_indented_is_json_indent_2_sorted(value: object) -> None:
    assert wirejson.dumps_indented(value) == json.dumps(value, indent=2, sort_keys=True)


@pytest.mark.parametrize("bad", ["", "   ", "{", "{not json", "[1,]", "[1, 2", '{"a" 1}', "{} x", "nul", "'a'"])
def test_malformed_is_a_value_error(bad: str) -> None:
    with pytest.raises(ValueError):
        wirejson.loads(bad)


def test_not_serializable_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        wirejson.dumps({"x": object()})


def test_errors_in_a_process_that_never_imported_json() -> None:
    """_json needs json.decoder to build its errors; without it, still a clean ValueError."""
    code = (
        "import sys; sys.path.insert(0, '.'); from tether import wirejson\n"
        "for bad in ('{not json', '[1, 2', b'\\xff'):\n"
        "    try:\n        wirejson.loads(bad)\n"
        "    except ValueError as e:\n        print(type(e).__name__)\n"
        "print('json' in sys.modules and 're' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-S", "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert r.stdout.split() == ["JSONDecodeError", "JSONDecodeError", "JSONDecodeError", "True"]
