"""Typed effects: one frozen class per store operation, dispatched by class, not by a string."""

from __future__ import annotations

import dataclasses
import inspect
from typing import cast

import pytest

from oauth2_broker_mw._core import effects
from oauth2_broker_mw._core.effects import CompareAndSwap
from oauth2_broker_mw._core.effects import StoreOp
from oauth2_broker_mw._core.effects import store_call
from oauth2_broker_mw._core.model import TokenRecord
from oauth2_broker_mw.stores.base import Offboarding
from oauth2_broker_mw.stores.base import ProviderGate
from oauth2_broker_mw.stores.base import TokenStore

STORE_EFFECTS = [
    cls
    for cls in (getattr(effects, name) for name in effects.__all__)
    if isinstance(cls, type) and issubclass(cls, StoreOp) and cls is not StoreOp
]


def test_there_is_one_class_per_store_operation() -> None:
    ops = sorted(cls.op for cls in STORE_EFFECTS)
    assert ops == sorted(
        [
            "get",
            "put",
            "compare_and_swap",
            "delete",
            "list_keys",
            "acquire_lock",
            "renew_lock",
            "release_lock",
            "put_pending",
            "take_pending",
            "backoff_until",
            "set_backoff",
            "take_token",
            "count_calls",
            "delete_keys",
            "delete_pending",
        ]
    )


@pytest.mark.parametrize("cls", STORE_EFFECTS, ids=lambda c: c.__name__)
def test_each_effect_is_frozen_slotted_and_names_a_store_method_with_its_arguments(
    cls: type[StoreOp],
) -> None:
    assert dataclasses.is_dataclass(cls)
    assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert "__slots__" in vars(cls)
    owner = next(p for p in (TokenStore, ProviderGate, Offboarding) if hasattr(p, cls.op))
    sync, async_ = getattr(owner, cls.op), getattr(owner, "a" + cls.op)
    assert inspect.iscoroutinefunction(async_)
    params = [
        p
        for p in inspect.signature(sync).parameters.values()
        if p.name != "self" and p.kind is not p.KEYWORD_ONLY
    ]
    fields = [f.name for f in dataclasses.fields(cls)]
    # every positional parameter of the store method is carried by a field of the effect
    assert len(params) <= len(fields), (cls.__name__, params, fields)


def test_a_compare_and_swap_carries_its_fence_as_a_keyword() -> None:
    record = cast(TokenRecord, object())  # the dispatcher never looks inside
    name, args, kwargs = store_call(CompareAndSwap(record, 7))
    assert (name, args, kwargs) == ("compare_and_swap", (record,), {"expected_version": 7})


def test_an_unknown_store_effect_is_refused() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Drop(StoreOp):
        op = "drop_everything"

    with pytest.raises(TypeError, match="unknown store effect Drop"):
        store_call(Drop())
