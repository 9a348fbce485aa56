"""``AttentionOptions``: one place that checks the op's options, owns its argument order, and is
held by the op, the pass's config, the sites and the trainer's config alike."""
from __future__ import annotations

import pytest
import torch

import binattn
from binattn.binarize_pass.site import BinaryAttentionSite
from binattn.errors import UserError
from binattn.ops import options
from binattn.ops.options import AttentionOptions, AttentionTensors
from binattn.train.config import TrainConfig
from binattn.train.sites import set_options

BAD = [  # (option, value, error): each check names its option
    ("scale_mode", "max", ValueError), ("top_n", 0, ValueError), ("top_n", 2.5, ValueError),
    ("pv_bits", 4, ValueError), ("binarizer", "hard", ValueError),
    ("temperature", 0.0, ValueError), ("temperature", "hot", TypeError),
    ("ste_clip", None, TypeError), ("scale", "0.1", TypeError),
]


@pytest.mark.parametrize("name, value, error", BAD)
def test_every_holder_refuses_a_bad_option_by_name(name, value, error):
    """The op, AttentionOptions and BinarizeConfig raise the same error; TrainConfig wraps it
    in a UserError (its top_n=0 means off, so only the op's own bad values reach it)."""
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(error, match=name):
        AttentionOptions(**{name: value})
    with pytest.raises(error, match=name):
        binattn.ops.binary_attention(q, q, q, **{name: value})
    if name not in ("scale",):
        with pytest.raises(error, match=name):
            binattn.BinarizeConfig(**{name: value})
    if name in ("scale_mode", "pv_bits", "ste_clip") and value is not None:
        with pytest.raises(UserError, match=name):
            TrainConfig(**{name: value})


def test_train_config_top_n_zero_is_off_and_negative_is_refused():
    assert TrainConfig(top_n=0).site_options({"top_n": 30})["top_n"] is None
    assert TrainConfig().site_options({"top_n": 30})["top_n"] == 30
    with pytest.raises(UserError, match="top_n"):
        TrainConfig(top_n=-1)


def test_options_are_frozen_hashable_and_normalised():
    a = AttentionOptions(is_causal=1, scale=1, temperature=2)
    assert (a.is_causal, a.scale, a.temperature) == (True, 1.0, 2.0)
    assert hash(a) == hash(AttentionOptions(is_causal=True, scale=1.0, temperature=2.0))
    with pytest.raises(AttributeError):
        a.top_n = 3
    assert a.replace(top_n=3).top_n == 3 and a.top_n is None
    with pytest.raises(TypeError, match="unknown attention option"):
        a.replace(top_k=3)


def test_schema_and_argument_order_come_from_the_options():
    schema = str(torch.ops.binattn.binary_attention.default._schema)
    assert schema == "binattn::binary_attention" + options.op_schema(
        "Tensor q, Tensor k, Tensor v", "Tensor")
    t = AttentionTensors(bias=torch.ones(1), bias_index=torch.zeros(1, dtype=torch.int32))
    o = AttentionOptions(is_causal=True, scale=0.5, top_n=3, pv_bits=8, binarizer="tanh")
    args = options.op_args(t, o)
    assert len(args) == len(options.OP_ARGS)
    back_t, back_o = options.from_op_args(args)
    assert back_o == o and all(a is b for a, b in zip(back_t, t))
    # a program saved before bias_index (15 arguments) and arguments by name
    assert options.from_op_args(args[:-1])[1] == o
    assert options.from_op_args((), {"top_n": 3})[1] == AttentionOptions(top_n=3)
    with pytest.raises(TypeError, match="top_k"):
        options.from_op_args((), {"top_k": 3})


def test_the_backward_schema_ends_with_an_optional_delta():
    """``delta`` comes last with a default: calls and programs without it still work."""
    schema = str(torch.ops.binattn.binary_attention_backward.default._schema)
    assert schema == "binattn::binary_attention_backward" + options.op_schema(
        "Tensor grad, Tensor q, Tensor k, Tensor v", "(Tensor, Tensor, Tensor, Tensor, Tensor)",
        options.BACKWARD_ARGS)
    assert schema.split(") ->")[0].endswith("Tensor? delta=None")
    args = options.op_args(AttentionTensors(), AttentionOptions())
    delta = torch.zeros(1)
    assert options.split_backward_args(args) == (args, None)
    forward_args, got = options.split_backward_args(args + (delta,))
    assert forward_args == args and got is delta


def test_a_site_holds_one_options_object_that_training_replaces():
    site = BinaryAttentionSite(index=0, module_path="a", matcher="m", shape={},
                               options=AttentionOptions(is_causal=True, scale=0.25))
    before = site.options
    set_options([site], binarizer="tanh", temperature=0.5, mode="float")
    assert site.options is not before and site.mode == "float"
    assert site.options == before.replace(binarizer="tanh", temperature=0.5)
    site.top_n = 4                       # attribute form, same object replaced
    assert site.options.top_n == 4 and site.options.is_causal
    with pytest.raises(ValueError, match="top_n"):
        site.set_options(top_n=0)
    with pytest.raises(AttributeError):
        set_options([site], no_such_option=1)


def test_binarize_config_holds_one_options_object():
    config = binattn.BinarizeConfig(top_n=3, binarizer="tanh", bias="head")
    assert config.options == AttentionOptions(top_n=3, binarizer="tanh")
    assert config.top_n == 3 and config.to_dict()["binarizer"] == "tanh"
    site = config.site_options(True, 0.5, pv_bits=8)
    assert (site.is_causal, site.scale, site.top_n, site.pv_bits) == (True, 0.5, 3, 8)
    with pytest.raises(TypeError, match="is_causal"):
        binattn.BinarizeConfig(is_causal=True)
