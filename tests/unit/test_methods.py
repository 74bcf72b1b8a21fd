"""The lazy method registry: names without imports, one module per lookup, clear errors."""

import dataclasses
import importlib.util
import json
import subprocess
import sys

import pytest

from statprune.errors import StatpruneError
from statprune.methods import METHOD_PATHS, METHODS, MethodRegistry, register_method

PROBE = """
import json, sys
from statprune.methods import METHODS
out = {"names": METHODS.names(), "torch_before": "torch" in sys.modules}
try:
    METHODS.get("magnitud")
except Exception as e:
    out["error"] = str(e)
out["torch_after_error"] = "torch" in sys.modules
METHODS.get("magnitude")
out["loaded"] = sorted(m for m in sys.modules if m.startswith(("statprune.baselines", "statprune.stat")))
print(json.dumps(out))
"""


def test_names_and_errors_import_nothing_and_a_lookup_imports_one_method():
    res = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["names"] == sorted(METHOD_PATHS) and {"flap", "wanda-sp", "stat"} <= set(out["names"])
    assert not out["torch_before"] and not out["torch_after_error"]
    assert "did you mean 'magnitude'" in out["error"] and "kwon, magnitude, slicegpt, stat" in out["error"]
    assert out["loaded"] == ["statprune.baselines", "statprune.baselines.magnitude"]


@pytest.mark.parametrize("name", sorted(METHOD_PATHS))
def test_every_listed_method_resolves_to_its_function_and_options(name):
    module = METHOD_PATHS[name].partition(":")[0]
    if importlib.util.find_spec(module) is None:
        with pytest.raises(StatpruneError, match=f"{module} does not exist"):
            METHODS.get(name)
        return
    fn, options = METHODS.get(name)
    assert f"{fn.__module__}:{fn.__qualname__}" == METHOD_PATHS[name]
    assert dataclasses.is_dataclass(options) and options.__dataclass_params__.frozen


def test_missing_module_and_undeclared_function_are_clear_errors():
    reg = MethodRegistry({"ghost": "statprune.baselines.ghost:ghost_prune", "bare": "statprune.io:json"})
    with pytest.raises(StatpruneError, match=r"ghost.*statprune\.baselines\.ghost does not exist"):
        reg.get("ghost")
    with pytest.raises(StatpruneError, match="not declared with @register_method"):
        reg.get("bare")
    with pytest.raises(ValueError, match="module:function"):
        reg.add("x", "no_colon")


def test_register_method_must_match_the_table():
    def stat_prune(*a, **k):  # defined here, so its module:function is not the table's
        return None

    with pytest.raises(ValueError, match=r"METHOD_PATHS\['stat'\]"):
        register_method("stat", object)(stat_prune)
    with pytest.raises(ValueError, match="listed as None"):
        register_method("not-listed", object)(stat_prune)
