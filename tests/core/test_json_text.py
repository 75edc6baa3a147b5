"""`json_text.dumps` never fails: what JSON cannot hold becomes its nearest JSON form (rules in its docstring)."""

from __future__ import annotations

import json
import sys
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

from engine.core.json_text import ARRAY_LIST_LIMIT, MAX_DEPTH, dumps


def test_plain_json_stays_compact():
    assert dumps({"a": [1, 2.5, "x", None, True]}) == '{"a":[1,2.5,"x",null,true]}'
    assert dumps((1, 2)) == "[1,2]"


def test_numpy_scalars_become_numbers():
    assert json.loads(dumps({"i": np.int64(3), "f": np.float32(0.5), "b": np.bool_(True)})) == \
        {"i": 3, "f": 0.5, "b": True}


def test_small_arrays_become_lists():
    assert json.loads(dumps({"a": np.arange(6).reshape(2, 3)})) == {"a": [[0, 1, 2], [3, 4, 5]]}
    assert json.loads(dumps(np.array(7))) == 7
    assert json.loads(dumps(np.zeros(ARRAY_LIST_LIMIT))) == [0.0] * ARRAY_LIST_LIMIT


def test_large_arrays_become_a_short_description():
    text = dumps({"image": np.zeros((1, 64, 64, 3), dtype=np.float32)})
    assert json.loads(text) == {"image": "ndarray(shape=[1, 64, 64, 3], dtype=float32)"}


def test_torch_tensors_like_arrays():
    torch = pytest.importorskip("torch")
    assert json.loads(dumps([torch.tensor([1, 2]), torch.tensor(0.5)])) == [[1, 2], 0.5]
    assert json.loads(dumps(torch.zeros(2, 300, dtype=torch.bfloat16))) == "Tensor(shape=[2, 300], dtype=bfloat16)"


def test_sets_bytes_and_paths():
    assert json.loads(dumps({"s": {3, 1, 2}, "f": frozenset({"b", "a"})})) == {"s": [1, 2, 3], "f": ["a", "b"]}
    assert sorted(json.loads(dumps({1, "a"})), key=str) == [1, "a"]  # mixed sets keep their own order
    assert json.loads(dumps([b"caption", bytearray(b"\xff\xfe"), b"x" * 5000])) == \
        ["caption", "<2 bytes>", "<5000 bytes>"]
    assert json.loads(dumps({"p": Path("out") / "a.png", "q": PurePosixPath("/x/y")})) == \
        {"p": str(Path("out") / "a.png"), "q": "/x/y"}


def test_keys_json_cannot_hold_become_text():
    assert json.loads(dumps({(1, 2): "pair", np.int64(4): [np.float64(1.5)]})) == {"(1, 2)": "pair", "4": [1.5]}


def test_cycles_and_deep_nesting_do_not_raise():
    loop: list = [1]
    loop.append(loop)
    assert json.loads(dumps(loop)) == [1, "..."]
    deep: list = []
    for _ in range(2 * sys.getrecursionlimit()):  # deeper than the json module can recurse
        deep = [deep]
    text = dumps({"deep": deep})
    assert text.count("[") == MAX_DEPTH - 1 and '"..."' in text


def test_objects_that_fail_to_describe_themselves():
    class Broken:
        def __str__(self):
            raise RuntimeError("no text")

    class SelfItem:
        def item(self):
            return self

    assert json.loads(dumps({"b": Broken(), "s": SelfItem()})) == {"b": "<Broken>", "s": "<SelfItem>"}
    assert json.loads(dumps({Broken(): 1})) == {"<Broken>": 1}
