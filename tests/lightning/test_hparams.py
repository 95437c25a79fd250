"""Hyperparameters flattened into DearDiary parameters."""

from __future__ import annotations

import dataclasses
import enum
import functools
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.utilities.parsing import AttributeDict
from omegaconf import OmegaConf
from torch import nn

from deardiary_lightning.lightning.hparams import (
    EMPTY_TEXT,
    MASK,
    flatten_hparams,
    is_secret_key,
    qualified_name,
)


class Color(enum.Enum):
    RED = 1


@dataclasses.dataclass
class Optim:
    name: str = "adam"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)


def test_nested_containers_flatten_with_slashes():
    params = {
        "model": Namespace(hidden=[64, 32], dropout=0.1, act=None),
        "optim": Optim(),
        "data": AttributeDict(batch_size=32, shuffle=True, root=Path("/data")),
        "cfg": OmegaConf.create({"a": {"b": 2, "c": "${cfg_ref}"}, "cfg_ref": "x"}),
    }
    flat = flatten_hparams(params)
    assert flat == {
        "model/hidden": "[64, 32]",
        "model/dropout": "0.1",
        "model/act": "None",
        "optim/name": "adam",
        "optim/lr": "0.001",
        "optim/betas": "[0.9, 0.999]",
        "data/batch_size": "32",
        "data/shuffle": "true",
        "data/root": "/data",
        "cfg/a/b": "2",
        "cfg/a/c": "x",
        "cfg/cfg_ref": "x",
    }


def test_omegaconf_interpolations_are_resolved_at_the_root():
    flat = flatten_hparams(OmegaConf.create({"lr": "${base}", "base": 0.5}))
    assert flat == {"lr": "0.5", "base": "0.5"}


def test_lists_of_configs_get_one_subtree_per_item():
    flat = flatten_hparams({"callbacks": [{"class_path": "A", "init_args": {"k": 1}}, {"x": 2}]})
    assert flat == {
        "callbacks/0/class_path": "A",
        "callbacks/0/init_args/k": "1",
        "callbacks/1/x": "2",
    }
    assert flatten_hparams({"listcfg": OmegaConf.create([{"a": 1}])}) == {"listcfg/0/a": "1"}


def test_tensors_arrays_and_enums():
    flat = flatten_hparams(
        {
            "scalar": torch.tensor(0.5),
            "small": torch.tensor([1, 2, 3]),
            "big": torch.zeros(4, 8),
            "np_scalar": np.float32(2.0),
            "np_array": np.arange(3),
            "color": Color.RED,
        }
    )
    assert flat == {
        "scalar": "0.5",
        "small": "[1, 2, 3]",
        "big": "Tensor(shape=[4, 8], dtype=torch.float32)",
        "np_scalar": "2.0",
        "np_array": "[0, 1, 2]",
        "color": "Color.RED",
    }


def test_callables_are_named_never_called():
    calls = []

    def side_effect() -> None:
        calls.append(1)

    class Loss(nn.Module):
        def __call__(self, *args: object) -> None:
            calls.append(2)

    flat = flatten_hparams(
        {
            "fn": side_effect,
            "cls": torch.optim.Adam,
            "partial": functools.partial(side_effect),
            "module": Loss(),
            "builtin": len,
            "lambda": lambda: calls.append(3),
        }
    )
    assert calls == []
    assert flat["fn"].endswith("test_callables_are_named_never_called.<locals>.side_effect")
    assert flat["cls"] == "torch.optim.adam.Adam"
    assert flat["partial"].startswith("functools.partial(tests.lightning.test_hparams.")
    assert flat["module"].endswith("<locals>.Loss")
    assert flat["builtin"] == "len"
    assert flat["lambda"].endswith("<lambda>")


def test_every_value_is_non_empty_text():
    flat = flatten_hparams({"empty": "", "none": None, "": 1, "nested": {}, "set": {3, 1}})
    assert flat == {
        "empty": EMPTY_TEXT,
        "none": "None",
        EMPTY_TEXT: "1",
        "nested": "{}",
        "set": "[1, 3]",
    }
    assert all(isinstance(v, str) and v for v in flat.values())


def test_secrets_are_masked():
    flat = flatten_hparams(
        {"logger": {"password": "hunter2", "token": "t", "api_key": "k", "username": "me"}}
    )
    assert flat == {
        "logger/password": MASK,
        "logger/token": MASK,
        "logger/api_key": MASK,
        "logger/username": "me",
    }
    assert is_secret_key("trainer/logger/init_args/client_secret")
    assert not is_secret_key("tokenizer") and not is_secret_key("max_tokens_per_batch")


def test_self_reference_does_not_recurse_forever():
    loop: dict[str, object] = {}
    loop["self"] = loop
    flat = flatten_hparams({"loop": loop})
    (key,) = flat
    assert key.startswith("loop/self/self")


def test_refuses_a_leaf_at_the_top():
    with pytest.raises(TypeError, match="mapping, Namespace, dataclass"):
        flatten_hparams(42)
    assert qualified_name(qualified_name) == "deardiary_lightning.lightning.hparams.qualified_name"
