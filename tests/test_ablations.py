"""The ablation table: each row against an independent hook-based or logit-level computation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tl_grokking.analysis.ablations import (
    ablation_table,
    cluster_block_hooks,
    mlp_readout,
    replace_by_cluster_blocks,
)
from tl_grokking.analysis.circuits import NeuronClusters
from tl_grokking.analysis.fourier import project_grid
from tl_grokking.analysis.grid import (
    all_logits,
    evaluate_model,
    grid_activations,
    loss_and_accuracy,
)
from tl_grokking.analysis.hooks import mean_ablate, zero_ablate
from tl_grokking.analysis.logits import excluded_logits, restricted_logits
from tl_grokking.data.tasks import ModularAddition
from tl_grokking.model.config import ModelConfig
from tl_grokking.model.transformer import make_model

FIXTURE = (
    Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "paper_original_format_no_wd.pth"
)
P = 13
D_MLP = 30


@pytest.fixture(scope="module")
def model():
    m = make_model(ModelConfig(p=P, d_model=24, n_heads=2, d_mlp=D_MLP, d_vocab_out=P + 1), seed=7)
    with torch.no_grad():
        m.blocks[0].mlp.b_in.normal_(0, 0.2, generator=torch.Generator().manual_seed(2))
        m.blocks[0].mlp.b_out.normal_(0, 0.2, generator=torch.Generator().manual_seed(3))
    return m


@pytest.fixture(scope="module")
def clusters():
    """Hand-made clusters: neurons 0-7 at k = 2, 8-13 at k = 5, the rest unclustered."""
    freq = torch.full((D_MLP,), 1)
    freq[:8], freq[8:14] = 2, 5
    fve = torch.full((D_MLP,), 0.2, dtype=torch.float64)
    fve[:14] = 0.9
    return NeuronClusters(
        p=P, threshold=0.85, freq=freq, fve=fve, fve_all=torch.zeros(P // 2, D_MLP)
    )


@pytest.fixture(scope="module")
def table(model, clusters):
    task = ModularAddition(P)
    train, _ = task.split(0.4, seed=1)
    return ablation_table(model, task, key_freqs=[2, 5], train_indices=train, clusters=clusters)


def test_logit_rows_match_logit_functions(model, table):
    task = ModularAddition(P)
    train, _ = task.split(0.4, seed=1)
    L = all_logits(model, task)
    labels = task.labels()
    full = loss_and_accuracy(L, labels)
    assert table["full model"].loss == pytest.approx(full[0], rel=1e-9)
    assert table["full model"].accuracy == pytest.approx(full[1])
    r = loss_and_accuracy(restricted_logits(L, P, [2, 5]), labels)
    assert table["restricted logits (key x+y)"].loss == pytest.approx(r[0], rel=1e-9)
    for k in (2, 5):
        row = table[f"excluded k = {k}"]
        e = loss_and_accuracy(excluded_logits(L, P, [k])[train], labels[train])
        assert (row.loss, row.subset) == (pytest.approx(e[0], rel=1e-9), "train")
    e = loss_and_accuracy(excluded_logits(L, P, [2, 5])[train], labels[train])
    assert table["excluded logits (all keys)"].loss == pytest.approx(e[0], rel=1e-9)


def test_neuron_rows_match_hooked_forward_passes(model, clusters, table):
    task = ModularAddition(P)
    for drop, name in [
        (False, "neurons -> own 3x3 block"),
        (True, "neurons -> own 3x3 block + unclustered dropped"),
    ]:
        hooked = evaluate_model(
            model, task, cluster_block_hooks(model, clusters, drop_unclustered=drop)
        )
        assert table[name].loss == pytest.approx(hooked["all_loss"], rel=1e-5)
        assert table[name].accuracy == pytest.approx(hooked["all_acc"])
    for k, n in [(2, 8), (5, 6)]:
        hooked = evaluate_model(model, task, zero_ablate(model, "mlp_post", clusters.neurons(k)))
        row = table[f"cluster k = {k} removed ({n} neurons)"]
        assert row.loss == pytest.approx(hooked["all_loss"], rel=1e-5)
    attn = evaluate_model(model, task, zero_ablate(model, "attn_z"))
    assert table["attention zero-ablated"].loss == pytest.approx(attn["all_loss"], rel=1e-6)


def test_mean_ablation_variant(model, clusters):
    task = ModularAddition(P)
    t = ablation_table(model, task, key_freqs=[2], clusters=clusters, neuron_ablation="mean")
    hooked = evaluate_model(model, task, mean_ablate(model, "mlp_post", clusters.neurons(5)))
    assert t["cluster k = 5 removed (6 neurons)"].loss == pytest.approx(
        hooked["all_loss"], rel=1e-5
    )
    assert t["excluded k = 2"].subset == "all"  # no split given: measured on all inputs
    with pytest.raises(ValueError, match="neuron_ablation"):
        ablation_table(model, task, clusters=clusters, neuron_ablation="noise")


def test_block_replacement_and_readout(model, clusters):
    task = ModularAddition(P)
    names = ["blocks.0.hook_resid_mid", "blocks.0.mlp.hook_post", "unembed.hook_out"]
    acts = grid_activations(model, task, names)
    post = acts[names[1]].double()
    # the affine readout reproduces the model's logits (first p classes)
    torch.testing.assert_close(
        mlp_readout(model, acts[names[0]].double(), post),
        acts[names[2]][:, :P].double(),
        atol=1e-5,
        rtol=1e-5,
    )
    replaced = replace_by_cluster_blocks(post, clusters)
    torch.testing.assert_close(replaced[:, 14:], post[:, 14:])  # unclustered kept
    expected = project_grid(post[:, :8], P, [2], basis="block", mode="keep")
    torch.testing.assert_close(replaced[:, :8], expected)
    dropped = replace_by_cluster_blocks(post, clusters, drop_unclustered=True)
    assert dropped[:, 14:].abs().max() == 0


def test_row_names_are_exactly_those_of_the_module_doc(table):
    import re

    from tl_grokking.analysis import ablations

    rows_doc = ablations.__doc__.split("The restricted / excluded rows")[0]  # the list of rows
    templates = re.findall(r'``"([^"]+)"``', rows_doc)
    assert "full model" in templates and "attention zero-ablated" in templates
    patterns = [re.escape(t).replace(r"\{k\}", r"\d+").replace(r"\{n\}", r"\d+") for t in templates]
    used = set()
    for row in table.rows:
        hits = [
            t for t, pat in zip(templates, patterns, strict=True) if re.fullmatch(pat, row.name)
        ]
        assert hits, f"row {row.name!r} is not listed in the module doc {templates}"
        used.update(hits)
        assert table[row.name].name == row.name
    assert used == set(templates)  # every listed name is a row of this (add, with split) table


def test_clusters_in_discrete_log_order_stay_on_their_own_grid(model):
    from tl_grokking.analysis.circuits import neuron_clusters
    from tl_grokking.data.tasks import make_task

    mul = make_task("mul", P)
    clusters = neuron_clusters(model, mul)  # group coordinates: the (p-1)² grid
    assert clusters.discrete_log and clusters.n == P - 1
    post = grid_activations(model, mul, "mlp_post", reindex=None)["blocks.0.mlp.hook_post"]
    replaced = replace_by_cluster_blocks(post.double(), clusters)
    for k in clusters.sizes:
        idx = clusters.neurons(k)
        expected = project_grid(post[:, idx].double(), P - 1, [k], basis="block", mode="keep")
        torch.testing.assert_close(replaced[:, idx], expected)
    with pytest.raises(ValueError, match="post must be"):
        replace_by_cluster_blocks(post[:-1], clusters)
    with pytest.raises(ValueError, match="discrete-log order"):
        cluster_block_hooks(model, clusters)
    with pytest.raises(ValueError, match="clusters must be in token order"):
        ablation_table(model, ModularAddition(P), key_freqs=[1], clusters=clusters)


def test_table_str_is_aligned(table):
    text = str(table)
    lines = text.splitlines()
    assert "key frequencies [2, 5]" in lines[0]
    body = lines[3:]
    assert len(body) == len(table.rows)
    assert len({len(line) for line in body}) == 1  # aligned columns
    assert table.to_dict()["rows"][0]["name"] == "full model"
    with pytest.raises(KeyError, match="no ablation row"):
        table["nope"]


def test_fixture_ablation_table():
    if not FIXTURE.exists():
        pytest.skip(f"fixture checkpoint not found at {FIXTURE}")
    from tl_grokking.runs.checkpoints import load_checkpoint

    model = load_checkpoint(FIXTURE)
    t = ablation_table(model)
    assert t.key_freqs == [36, 52]
    full = t["full model"]
    assert 5e-8 < full.loss < 5e-7 and full.accuracy == 1.0
    assert t["restricted logits (key x+y)"].loss < full.loss
    assert t["attention zero-ablated"].loss > 10
    assert t["cluster k = 36 removed (181 neurons)"].loss > 1.0
    assert t["excluded k = 36"].loss > 1.0
    # this no-weight-decay model still relies on its unclustered neurons
    block = t["neurons -> own 3x3 block"].loss
    assert full.loss < block < t["neurons -> own 3x3 block + unclustered dropped"].loss


def test_small_grokked_model_table(small_model, small_task, small_run):
    from tl_grokking.training.config import load_train_config

    config = load_train_config(small_run)
    train, _ = small_task.split(config.frac_train, config.seed)
    t = ablation_table(small_model, small_task, train_indices=train)
    full = t["full model"]
    assert full.accuracy == 1.0
    # the paper's picture: the key x+y components alone do better than the full logits ...
    assert t["restricted logits (key x+y)"].loss < full.loss
    # ... and removing them ruins the training set, which the full model fits
    train_full = [r for r in t.rows if r.name == "full model" and r.subset == "train"][0]
    assert t["excluded logits (all keys)"].loss > 1000 * train_full.loss
    assert t["neurons -> own 3x3 block"].accuracy == 1.0
    assert t["attention zero-ablated"].loss > 1.0


def test_cli_ablate_matches_the_library(small_run, small_model, small_task, capsys):
    import json

    from tl_grokking.cli import main
    from tl_grokking.training.config import load_train_config

    assert main(["ablate", str(small_run), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    config = load_train_config(small_run)
    train, _ = small_task.split(config.frac_train, config.seed)
    table = ablation_table(small_model, small_task, train_indices=train)
    assert out["ablation_table"]["key_freqs"] == table.key_freqs
    assert out["key_frequencies"]["agree"] is True
    assert out["key_frequencies"]["contested"] == []  # every rule agrees on this run
    assert out["key_frequencies"]["restricted"]["accuracy"] == 1.0
    assert set(out["key_frequencies"]["without"]) == {str(k) for k in table.key_freqs}
    for got, want in zip(out["ablation_table"]["rows"], table.rows, strict=True):
        assert got["name"] == want.name and got["subset"] == want.subset
        assert got["loss"] == pytest.approx(want.loss, rel=1e-6)
    assert main(["ablate", str(small_run / "nope.pth")]) == 2
    assert "error" in capsys.readouterr().err


def test_table_rejects_wrong_activations(model, clusters, unchecked_types):
    with unchecked_types(), pytest.raises(ValueError, match="activations"):
        ablation_table(model, clusters=clusters, activations={"blocks.0.mlp.hook_post": None})


def test_sub_table_drops_the_x_plus_y_rows_and_says_why(model, clusters):
    from tl_grokking.data.tasks import make_task

    sub = make_task("sub", P)
    t = ablation_table(model, sub, key_freqs=[2, 5], clusters=clusters)
    names = [r.name for r in t.rows]
    assert not any("restricted" in n or "excluded" in n for n in names)
    assert len(t.notes) == 1 and "x+y rows" in t.notes[0] and "'sub'" in t.notes[0]
    assert "note:" in str(t) and t.to_dict()["notes"] == t.notes
    # the remaining rows are the task's own: the full-model row is sub's loss on all pairs
    assert t["full model"].loss == pytest.approx(evaluate_model(model, sub)["all_loss"], rel=1e-9)
    with pytest.raises(ValueError, match="ablation table.*'mul'.*discrete_log"):
        ablation_table(model, make_task("mul", P), key_freqs=[2], clusters=clusters)


def test_cli_ablate_on_subtraction_skips_the_sum_direction_analyses(task_runs, capsys):
    """Subtraction has token-order Fourier structure but no a+b sum directions: the command
    prints key frequencies, clusters and the table, with no trig-identity fit and no x+y rows."""
    import json

    from tl_grokking.cli import main

    assert main(["ablate", str(task_runs["sub"]), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["trig"] is None
    names = [row["name"] for row in out["ablation_table"]["rows"]]
    assert not any("restricted" in n or "excluded" in n for n in names)
    assert names[0] == "full model"
