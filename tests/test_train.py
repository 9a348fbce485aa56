"""binattn.train: schedules, losses, top-N, short real training runs, checkpoints and resume.

Every run is real: the built-in ViT on real digits (scikit-learn), binarized by the pass,
trained by the recipes. Models are small so the file stays well under a minute on 2 cores.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import binattn
from binattn.errors import UserError
from binattn.models import digits_vit
from binattn.ops import reference
from binattn.train import (TrainConfig, checkpoint, data, find_sites, had_stage, losses,
                           make_teacher, metrics, train, warmup_cosine)
from binattn.train.trainer import Trainer, predict

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
BATCH = 32


@pytest.fixture(scope="module")
def digits_small():
    full = data.digits()
    return full.subset(range(256)), full.subset(range(256, 384))


@pytest.fixture(scope="module")
def fp_trained(digits_small):
    """A small FP ViT trained briefly on the digits (the model a user would binarize)."""
    fp = small_vit()
    train(fp, digits_small[0], recipe="fp", steps=120, batch_size=BATCH, lr=3e-3, progress=False)
    return fp.eval()


def small_vit(seed: int = 0):
    torch.manual_seed(seed)
    return digits_vit(dim=32, depth=2, heads=2).eval()


def binarized(fp, bias="relpos"):
    fp = copy.deepcopy(fp)  # binarize shares parameter tensors with its input
    return binattn.binarize(fp, fp.example_inputs(BATCH), binattn.BinarizeConfig(bias=bias))


# -- schedules ---------------------------------------------------------------------------------
def test_had_stage_values_at_given_steps():
    total = 100  # stages: [0, 25) scaled tanh, [25, 50) tanh, [50, 80) sign, [80, 100) sign, no map
    first, mid1, last1 = had_stage(0, total), had_stage(12, total), had_stage(24, total)
    assert (first.stage, first.binarizer, first.temperature) == (1, "scaled_tanh", 5.0)
    assert mid1.temperature == pytest.approx(math.sqrt(5.0))  # geometric 5 → 1
    assert last1.temperature == pytest.approx(1.0)
    s2a, s2b = had_stage(25, total), had_stage(49, total)
    assert (s2a.binarizer, s2a.temperature) == ("tanh", pytest.approx(1.0))
    assert s2b.temperature == pytest.approx(0.05)
    s3 = had_stage(50, total)
    assert (s3.stage, s3.binarizer, s3.ste_clip, s3.attention_loss) == (3, "sign", 2.0, True)
    s4 = had_stage(80, total)
    assert (s4.stage, s4.binarizer, s4.attention_loss) == (4, "sign", False)
    assert had_stage(99, total).stage == 4


def test_had_stage_rejects_bad_fractions():
    with pytest.raises(ValueError, match="fractions"):
        had_stage(0, 10, fractions=(1, 1, 1))


def test_warmup_cosine_values():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.01 + 0.99 * 0.5)
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.01)


# -- losses and metrics ------------------------------------------------------------------------
def test_hard_kd_is_half_label_ce_half_teacher_argmax_ce():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    ce = torch.nn.functional.cross_entropy
    expected = 0.5 * ce(s, y) + 0.5 * ce(s, t.argmax(-1))
    assert losses.hard_kd(s, t, y).item() == pytest.approx(expected.item())
    assert losses.hard_kd(s, None, y).item() == pytest.approx(ce(s, y).item())


def test_attention_kl_is_zero_on_equal_maps_and_positive_otherwise():
    p = torch.softmax(torch.randn(2, 3, 5, 5), -1)
    q = torch.softmax(torch.randn(2, 3, 5, 5), -1)
    assert losses.attention_kl([p], [p]).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.attention_kl([q], [p]).item() > 0.01


def test_embedding_agreement_is_one_for_identical_and_spearman_is_rank_based():
    x = torch.randn(20, 8, generator=torch.Generator().manual_seed(1))
    same = metrics.embedding_agreement(x, x)
    assert same["mean_cosine"] == pytest.approx(1.0) and same["spearman"] == pytest.approx(1.0)
    scaled = metrics.embedding_agreement(3 * x, x)  # cosine ignores the norm
    assert scaled["mean_cosine"] == pytest.approx(1.0)


def test_paired_interval_contains_the_mean():
    mean, lo, hi = metrics.paired_interval([0.9, 0.92, 0.91, 0.95], [0.95, 0.96, 0.94, 0.97])
    assert lo < mean < hi and mean == pytest.approx(-0.035)


# -- top-N -------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 12), rows=st.integers(1, 4), keys=st.integers(1, 12),
       ties=st.booleans(), seed=st.integers(0, 1000))
def test_top_n_mask_keeps_exactly_n_per_row(n, rows, keys, ties, seed):
    n = min(n, keys)  # the op applies top-N only when N < Nk
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(-3, 3, (rows, keys), generator=g).float() if ties else \
        torch.randn(rows, keys, generator=g)
    mask = reference.top_n_mask(scores, n)
    assert bool((mask.sum(-1) == n).all())
    kept_min = scores.masked_fill(~mask, float("inf")).amin(-1, keepdim=True)
    dropped_max = scores.masked_fill(mask, float("-inf")).amax(-1, keepdim=True)
    assert bool((kept_min >= dropped_max).all())  # the kept ones are the largest
    index = torch.arange(keys)
    tied = scores == kept_min  # ties at the threshold: the lower key indices are kept
    kept_tied = torch.where(mask & tied, index, -1).amax(-1)
    dropped_tied = torch.where(~mask & tied, index, keys).amin(-1)
    assert bool((kept_tied < dropped_tied).all())


def test_had_training_sites_attend_to_exactly_top_n_keys(digits_small):
    train_set, _ = digits_small
    gm = binarized(small_vit(), bias=None)
    train(gm, train_set, recipe="had", steps=2, batch_size=BATCH, top_n=5, calib_batches=2,
          progress=False)
    site = find_sites(gm)[0]
    assert site.top_n == 5
    site.record_probs = True
    with torch.no_grad():
        gm(train_set.inputs[0][:BATCH])
    nonzero = (site.last_probs > 0).sum(-1)
    assert bool((nonzero == 5).all())


# -- teacher and calibration -------------------------------------------------------------------
def test_teacher_is_the_model_before_binarization(digits_small):
    fp = small_vit()
    gm = binarized(fp)
    x = digits_small[1].inputs[0][:BATCH]
    teacher = make_teacher(gm)
    torch.testing.assert_close(teacher(x), fp(x), rtol=1e-4, atol=1e-5)
    assert not any(p.requires_grad for p in teacher.parameters())
    assert (gm(x) - fp(x)).abs().max() > 1e-3  # the student itself is binary


def test_had_calibration_sets_static_scales_to_q_k_std(digits_small):
    train_set, _ = digits_small
    fp = small_vit()
    gm = binarized(fp, bias=None)
    captured = []
    site0 = find_sites(gm)[0]
    hook = site0.register_forward_pre_hook(lambda m, a: captured.append((a[0].std(), a[1].std())))
    train(gm, train_set, recipe="had", steps=1, batch_size=BATCH, calib_batches=3, lr=1e-12,
          progress=False)
    hook.remove()
    q_std = sum(float(c[0]) for c in captured[:3]) / 3
    assert site0.scale_mode == "static"
    assert float(site0.q_scale) == pytest.approx(q_std, rel=1e-5)


# -- training runs -----------------------------------------------------------------------------
@pytest.mark.parametrize("recipe", ["binaryattention", "had"])
def test_short_training_lowers_the_loss(recipe, digits_small, fp_trained):
    train_set, _ = digits_small
    gm = binarized(fp_trained, bias="relpos" if recipe == "binaryattention" else None)
    result = train(gm, train_set, recipe=recipe, steps=30, batch_size=BATCH, lr=2e-3,
                   calib_batches=2, had_fractions=(0, 0, 1, 0), progress=False, seed=0)
    losses_ = [h["loss"] for h in result.history]
    assert len(losses_) == 30
    assert sum(losses_[-6:]) / 6 < 0.7 * sum(losses_[:6]) / 6
    if recipe == "had":
        assert "attn_kl" in result.history[0]
        assert find_sites(gm)[0].binarizer == "sign"


def test_bfloat16_autocast_trains_with_float32_weights(digits_small, fp_trained):
    """``autocast="bfloat16"``: the attention sites see bfloat16 q/k/v (autocast reached the
    forward), the loss and its parts stay float32 and close to a float32 run's first step,
    the loss falls, and weights and optimizer state stay float32."""
    train_set, _ = digits_small
    seen: list[torch.dtype] = []
    first = {}
    for autocast in (None, "bfloat16"):
        gm = binarized(fp_trained)
        hooks = [site.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
                 for site in find_sites(gm)]
        result = train(gm, train_set, recipe="binaryattention", steps=30, batch_size=BATCH,
                       lr=2e-3, attn_weight=1.0, hidden_weight=1.0, autocast=autocast,
                       progress=False, seed=0)
        for hook in hooks:
            hook.remove()
        first[autocast] = result.history[0]["loss"]
        assert all(isinstance(h["loss"], float) for h in result.history)
        losses_ = [h["loss"] for h in result.history]
        assert sum(losses_[-6:]) / 6 < 0.7 * sum(losses_[:6]) / 6, autocast
    assert torch.bfloat16 in seen and torch.float32 in seen
    assert first["bfloat16"] == pytest.approx(first[None], rel=0.05)
    assert {p.dtype for p in gm.parameters()} == {torch.float32}


def _padded_text(n: int = 90, padded: int = 20, seed: int = 0) -> data.TensorData:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, padded + 1, (n,), generator=gen)
    mask = (torch.arange(padded) < lengths[:, None]).long()
    ids = torch.randint(1, 100, (n, padded), generator=gen) * mask
    return data.TensorData((ids, mask), torch.arange(n), data.text_lengths(mask))


@pytest.mark.parametrize("world_size", [1, 2])
def test_length_buckets_cut_each_batch_to_its_longest_and_see_every_example_once(world_size):
    text = _padded_text()
    seen, padded_tokens, plain_tokens = [], 0, 0
    for rank in range(world_size):
        for (ids, mask), labels in data.batches(text, 8, seed=3, epoch=1, rank=rank,
                                                world_size=world_size, length_buckets=4):
            assert ids.shape == mask.shape and ids.shape[0] == 8
            assert ids.shape[1] == int(text.lengths[labels].max())   # cut to its longest
            assert torch.equal(ids, text.inputs[0][labels, : ids.shape[1]])
            seen += labels.tolist()
            padded_tokens += ids.numel()
        for (ids, _), _ in data.batches(text, 8, seed=3, epoch=1, rank=rank,
                                        world_size=world_size):
            plain_tokens += ids.numel()
    steps = len(text) // (8 * world_size)
    assert len(seen) == len(set(seen)) == steps * 8 * world_size   # each example at most once
    assert padded_tokens < 0.8 * plain_tokens
    again = [labels.tolist() for _, labels in data.batches(text, 8, seed=3, epoch=1,
                                                            length_buckets=4)]
    assert again == [labels.tolist() for _, labels in data.batches(text, 8, seed=3, epoch=1,
                                                                    length_buckets=4)]


def test_length_buckets_need_lengths(digits_small):
    with pytest.raises(UserError, match="length_buckets needs text data"):
        next(data.batches(digits_small[0], 8, seed=0, epoch=0, length_buckets=2))
    with pytest.raises(UserError, match="length_buckets needs text data"):
        train(binarized(small_vit()), digits_small[0], steps=1, batch_size=BATCH,
              length_buckets=2, progress=False)
    with pytest.raises(UserError, match="lengths must be in"):
        data.TensorData((torch.zeros(2, 4),), lengths=torch.tensor([0, 3]))


def test_learned_bias_gets_gradient_and_no_weight_decay(digits_small):
    train_set, _ = digits_small
    gm = binarized(small_vit())
    before = {n: p.detach().clone() for n, p in gm.named_parameters() if "binattn_bias" in n}
    assert before
    train(gm, train_set, recipe="binaryattention", steps=3, batch_size=BATCH, progress=False)
    after = dict(gm.named_parameters())
    assert all(not torch.equal(before[n], after[n]) for n in before)
    from binattn.train.trainer import param_groups
    groups = param_groups(gm, TrainConfig())
    bias_ids = {id(after[n]) for n in before}
    for g in groups:
        if any(id(p) in bias_ids for p in g["params"]):
            assert g["weight_decay"] == 0.0


@pytest.mark.parametrize("recipe", ["binaryattention", "had"])
def test_checkpoint_reloads_to_identical_outputs(recipe, digits_small, tmp_path):
    train_set, eval_set = digits_small
    fp = small_vit()
    bias = "relpos" if recipe == "binaryattention" else None
    gm = binarized(fp, bias)
    path = tmp_path / "run.ckpt"
    train(gm, train_set, recipe=recipe, steps=4, batch_size=BATCH, calib_batches=2,
          checkpoint=str(path), progress=False)
    fresh = binarized(fp, bias)
    from binattn.train.recipes import make_recipe
    make_recipe(TrainConfig(recipe=recipe)).prepare(find_sites(fresh))
    checkpoint.restore(checkpoint.load(path), fresh)
    for s_a, s_b in zip(find_sites(gm), find_sites(fresh)):  # stage options follow the step
        s_b.binarizer, s_b.temperature = s_a.binarizer, s_a.temperature
    x = eval_set.inputs[0][:BATCH]
    with torch.no_grad():
        assert torch.equal(gm.eval()(x), fresh.eval()(x))


def test_resume_continues_exactly_where_it_stopped(digits_small, tmp_path):
    train_set, _ = digits_small
    fp = small_vit()
    straight = binarized(fp)
    train(straight, train_set, recipe="binaryattention", steps=6, batch_size=BATCH,
          progress=False)
    path = tmp_path / "resume.ckpt"
    part = binarized(fp)
    train(part, train_set, recipe="binaryattention", steps=6, stop_at=3, batch_size=BATCH,
          checkpoint=str(path), progress=False)
    # a new process would rebuild the same binarized model and resume from the checkpoint
    resumed = binarized(fp)
    blob = checkpoint.load(path)
    assert blob["step"] == 3
    cfg = TrainConfig(recipe="binaryattention", steps=6, batch_size=BATCH, progress=False,
                      checkpoint=str(path))
    train(resumed, train_set, cfg)
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_unlabeled_data_trains_by_pure_distillation(digits_small):
    train_set, eval_set = digits_small
    unlabeled = data.TensorData(train_set.inputs)
    gm = binarized(small_vit())
    result = train(gm, unlabeled, recipe="binaryattention", steps=5, batch_size=BATCH,
                   eval_data=data.TensorData(eval_set.inputs), progress=False)
    assert result.history[0]["stage"] == "sign"
    assert set(result.metrics) == {"mean_cosine", "spearman"}
    assert -1 <= result.metrics["spearman"] <= 1


# -- bad input ---------------------------------------------------------------------------------
def test_bad_config_names_the_option():
    with pytest.raises(UserError, match="recipe"):
        TrainConfig(recipe="nope")
    with pytest.raises(UserError, match="top_n"):
        TrainConfig(top_n=-1)
    with pytest.raises(UserError, match="autocast must be None or one of"):
        TrainConfig(autocast="int8")


def test_too_little_data_for_one_batch_is_a_clear_error(digits_small):
    gm = binarized(small_vit())
    with pytest.raises(UserError, match="fewer than one batch"):
        train(gm, digits_small[0].subset(range(5)), steps=1, batch_size=BATCH, progress=False)


def test_corrupt_checkpoint_is_a_one_line_user_error(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        checkpoint.load(bad)
    with pytest.raises(UserError, match="not found"):
        checkpoint.load(tmp_path / "missing.ckpt")


# -- data helpers ------------------------------------------------------------------------------
def test_cluttered_digits_are_deterministic_and_shaped():
    a = data.cluttered_digits(seed=3)
    b = data.cluttered_digits(seed=3)
    assert a.inputs[0].shape == (1797, 1, 24, 24)
    assert torch.equal(a.inputs[0], b.inputs[0]) and torch.equal(a.labels, data.digits().labels)
    assert 0 <= float(a.inputs[0].min()) and float(a.inputs[0].max()) <= 1


def test_render_cluttered_puts_each_digit_at_its_position_over_other_digits_fragments():
    images = data.digits().inputs[0][:40, 0]
    rng = lambda: np.random.default_rng(5)  # noqa: E731
    canvas, pos = data.render_cluttered(images, 24, 3, 4, rng(), copies=3)
    again, pos2 = data.render_cluttered(images, 24, 3, 4, rng(), copies=3)
    assert canvas.shape == (120, 24, 24) and pos.shape == (120, 2)
    assert torch.equal(canvas, again) and torch.equal(pos, pos2)  # deterministic in the rng
    for row in range(120):
        y, x = pos[row].tolist()
        window = canvas[row, y:y + 8, x:x + 8]
        digit = images[row % 40]  # rendering-major: row k·n + i is digit i
        assert torch.all(window >= digit)  # max-composited over the clutter
        outside = canvas[row].clone()
        outside[y:y + 8, x:x + 8] = 0
        assert int((outside > 0).sum()) <= 3 * 16  # only the three 4×4 fragments around it
    renderings = canvas.view(3, 40, 24, 24)
    assert not torch.equal(renderings[0], renderings[1])  # fresh positions/clutter per copy
    no_clutter, at = data.render_cluttered(images, 24, 0, 4, rng())
    y, x = at[7].tolist()
    assert torch.equal(no_clutter[7, y:y + 8, x:x + 8], images[7])
    assert float(no_clutter[7].sum()) == pytest.approx(float(images[7].sum()))


def test_cluttered_digits_selects_digits_and_repeats_labels():
    index = [3, 10, 11, 500]
    sub = data.cluttered_digits(fragments=2, seed=1, index=index, copies=2)
    labels = data.digits().labels[index]
    assert sub.inputs[0].shape == (8, 1, 24, 24)
    assert torch.equal(sub.labels, labels.repeat(2))
    with pytest.raises(ValueError, match="canvas"):
        data.cluttered_digits(canvas=6)


def test_stratified_folds_partition_every_image_once():
    labels = data.digits().labels
    folds = data.stratified_folds(labels, 5, seed=0)
    tests = torch.cat([torch.as_tensor(te) for _, te in folds])
    assert sorted(tests.tolist()) == list(range(len(labels)))


def test_stdlib_sentences_are_prose():
    sentences = data.stdlib_sentences(modules=["json", "textwrap", "argparse"])
    assert len(sentences) > 10
    assert all(s[0].isupper() and ">>>" not in s for s in sentences)


def test_predict_pads_the_last_batch_and_trims(digits_small):
    fp = small_vit()
    subset = digits_small[1].subset(range(37))
    out = predict(fp, subset, batch_size=16)
    torch.testing.assert_close(out, fp(subset.inputs[0]), rtol=1e-4, atol=1e-5)


def test_compiled_step_matches_eager_and_is_off_by_default_on_cpu(digits_small, fp_trained):
    """``compile=True``: the forwards run through torch.compile (Inductor) and the first steps'
    losses match an eager run's; ``compile=None`` (default) does not compile on CPU."""
    train_set, _ = digits_small
    losses_by = {}
    for compile_ in (False, True):
        gm = binarized(fp_trained)
        trainer = Trainer(gm, train_set, TrainConfig(recipe="binaryattention", steps=3,
                                                     batch_size=BATCH, lr=1e-3, progress=False,
                                                     seed=0, compile=compile_))
        assert trainer.compiled is compile_
        losses_by[compile_] = trainer.run().history
    got = [h["loss"] for h in losses_by[True]]
    want = [h["loss"] for h in losses_by[False]]
    assert got == pytest.approx(want, rel=1e-3, abs=1e-4)
    default = Trainer(binarized(fp_trained), train_set, TrainConfig(steps=1, batch_size=BATCH,
                                                                    progress=False))
    assert default.compiled is False


def test_compile_default_skips_recipes_whose_site_options_change():
    """HAD anneals its temperature every step (each value would recompile): its default run
    is eager on any device; BinaryAttention's options stay fixed."""
    from binattn.train.recipes import make_recipe

    assert make_recipe(TrainConfig(recipe="binaryattention")).fixed_site_options
    assert not make_recipe(TrainConfig(recipe="had")).fixed_site_options
