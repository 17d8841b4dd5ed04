"""Each figure shows exactly the numbers it claims, checked against independent computations.

Models are tiny (p = 17, d_model 32) with weights planted where the answer is known in closed
form (a cosine embedding, a sine read-out) or checked against a hand-written forward pass.
"""

from __future__ import annotations

import math
import re

import plotly.graph_objects as go
import pytest
import torch

from tl_grokking.analysis.ablations import AblationRow, AblationTable
from tl_grokking.analysis.circuits import NeuronClusters
from tl_grokking.analysis.logits import TrigDecomposition
from tl_grokking.data.tasks import ModularAddition
from tl_grokking.figures import plots
from tl_grokking.model.config import ModelConfig
from tl_grokking.model.transformer import make_model

P = 17


@pytest.fixture(scope="module")
def model():
    m = make_model(ModelConfig(p=P, d_model=32, n_heads=2, d_mlp=24), seed=3)
    m.eval()
    return m


@pytest.fixture(scope="module")
def task():
    return ModularAddition(P)


def _x(p: int) -> torch.Tensor:
    return torch.arange(p, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# curves
# ---------------------------------------------------------------------------------------------


def test_loss_curves_data_log_axis_and_phase_shading():
    metrics = [
        {"epoch": e, "train_loss": 10.0 ** (-e / 10), "test_loss": 5.0 - e / 100, "lr": 1e-3}
        for e in range(0, 101, 10)
    ]
    metrics.append({"epoch": 105, "note": "no losses here"})
    phases = {
        "phases": [
            {"name": "memorization", "start": 0, "end": 20},
            {"name": "circuit_formation", "start": 20, "end": 70},
            {"name": "cleanup", "start": 70, "end": 100},
        ]
    }
    fig = plots.loss_curves(metrics, phases=phases)
    train, test = fig.data
    assert train.name == "train loss" and test.name == "test loss"
    assert list(train.x) == list(range(0, 101, 10))
    assert list(train.y) == [10.0 ** (-e / 10) for e in range(0, 101, 10)]
    assert list(test.y) == [5.0 - e / 100 for e in range(0, 101, 10)]
    assert fig.layout.yaxis.type == "log"
    rects = [(s.x0, s.x1, s.name) for s in fig.layout.shapes]
    assert rects == [(0, 20, "memorization"), (20, 70, "circuit_formation"), (70, 100, "cleanup")]
    labels = [a.text for a in fig.layout.annotations]
    assert labels == ["memorisation", "circuit formation", "cleanup"]


def test_phase_spans_accepts_every_form_and_rejects_bad_spans():
    want = [("memorization", 0.0, 5.0), ("cleanup", 9.0, 12.0)]
    assert plots.phase_spans([("cleanup", 9, 12), ("Memorisation", 0, 5)]) == want
    assert plots.phase_spans({"memorisation": (0, 5), "cleanup": {"start": 9, "end": 12}}) == want

    # a Phases-like object with to_dict(); spans with a missing end are dropped
    class Fake:
        def to_dict(self):
            return {
                "phases": [
                    {"name": "memorization", "start": 0, "end": 5},
                    {"name": "cleanup", "start": 9, "end": None},
                ]
            }

    assert plots.phase_spans(Fake()) == [("memorization", 0.0, 5.0)]
    assert plots.phase_spans(None) == []
    with pytest.raises(ValueError, match="start <= end"):
        plots.phase_spans([("cleanup", 10, 3)])


def test_phase_spans_of_detect_phases_output(small_run):
    from tl_grokking.analysis.phases import detect_phases
    from tl_grokking.runs.rundir import read_metrics

    metrics = [r for r in read_metrics(small_run)]
    cols = {k: [r[k] for r in metrics] for k in ("epoch", "train_loss", "test_loss", "test_acc")}
    phases = detect_phases(cols)
    spans = plots.phase_spans(phases)
    edges = [phases.first_epoch, *phases.boundaries]
    expected = [
        (name, float(a), float(b))
        for name, a, b in zip(
            ("memorization", "circuit_formation", "cleanup"), edges[:-1], edges[1:], strict=True
        )
        if a is not None and b is not None
    ]
    assert spans == expected
    fig = plots.loss_curves(metrics, phases=phases)
    assert [(s.x0, s.x1) for s in fig.layout.shapes] == [(a, b) for _, a, b in expected]


def test_progress_measures_panel_traces_equal_columns():
    cols = {
        "epoch": [0, 10, 20],
        "train_loss": [1.0, 0.1, 0.01],
        "test_loss": [1.0, 2.0, 0.5],
        "restricted_loss": [3.0, 1.0, 0.2],
        "excluded_loss": [1.0, 3.0, 4.0],
        "gini_W_E": [0.1, 0.2, 0.6],
        "gini_W_L": [0.15, 0.25, 0.7],
        "sum_sq_weights": [900.0, 700.0, 400.0],
        "excluded_loss_k3": [9.0, 9.0, 9.0],  # not plotted
    }
    fig = plots.progress_measures_panel(cols, phases=[("cleanup", 10, 20)])
    by_col = {t.meta: t for t in fig.data}
    assert set(by_col) == {
        "train_loss",
        "test_loss",
        "restricted_loss",
        "excluded_loss",
        "gini_W_E",
        "gini_W_L",
        "sum_sq_weights",
    }
    for name, trace in by_col.items():
        assert list(trace.x) == cols["epoch"] and list(trace.y) == cols[name]
    # losses in panel 1 (log), Gini in panel 2, weight norm in panel 3
    assert {by_col[n].xaxis for n in ("train_loss", "restricted_loss", "excluded_loss")} == {"x"}
    assert by_col["gini_W_E"].xaxis == by_col["gini_W_L"].xaxis == "x2"
    assert by_col["sum_sq_weights"].xaxis == "x3"
    assert fig.layout.yaxis.type == "log"
    # the cleanup span is shaded in each of the three panels
    assert sorted((s.xref, s.x0, s.x1) for s in fig.layout.shapes) == [
        ("x", 10, 20),
        ("x2", 10, 20),
        ("x3", 10, 20),
    ]
    with pytest.raises(ValueError, match="epoch"):
        plots.progress_measures_panel({"train_loss": [1.0]})


def test_progress_measures_panel_reads_a_progress_measures_table(small_run):
    from tl_grokking.analysis.progress import ProgressMeasures

    table = ProgressMeasures({"epoch": [0, 5], "gini_W_E": [0.2, 0.4], "train_loss": [2.0, 1.0]})
    fig = plots.progress_measures_panel(table)
    assert {t.meta: list(t.y) for t in fig.data} == {
        "train_loss": [2.0, 1.0],
        "gini_W_E": [0.2, 0.4],
    }


# ---------------------------------------------------------------------------------------------
# Fourier structure of the weights
# ---------------------------------------------------------------------------------------------


def test_embedding_norms_equal_brute_force(model, task):
    fig = plots.embedding_fourier_norms(model, task)
    bars = fig.data[0]
    w_e = model.W_E.detach()[:P].double()
    x = _x(P)
    want = [w_e.sum(0).norm() / math.sqrt(P)]
    for k in range(1, (P - 1) // 2 + 1):
        for trig in (torch.cos, torch.sin):
            row = trig(2 * math.pi * k * x / P) * math.sqrt(2 / P)
            want.append((row @ w_e).norm())
    assert torch.allclose(
        torch.tensor(bars.y, dtype=torch.float64), torch.stack(want).double(), atol=1e-5
    )
    expected_names = ["const"] + [f"{t} {k}" for k in range(1, 9) for t in ("cos", "sin")]
    assert list(bars.x) == expected_names


def test_embedding_cos_and_sin_are_labelled_correctly():
    """Plant W_E = cos(w_3 a) in dimension 0 and sin(w_5 a) in dimension 1: exactly the bars
    'cos 3' and 'sin 5' are non-zero, each of norm sqrt(p/2)."""
    m = make_model(ModelConfig(p=P, d_model=32, n_heads=2, d_mlp=24), seed=0)
    x = _x(P)
    planted = torch.zeros(P + 1, 32)
    planted[:P, 0] = torch.cos(2 * math.pi * 3 * x / P).float()
    planted[:P, 1] = torch.sin(2 * math.pi * 5 * x / P).float()
    planted[P, 2] = 100.0  # the '=' row must be ignored
    with torch.no_grad():
        m.embed.W_E.copy_(planted)
    fig = plots.embedding_fourier_norms(m, key_freqs=[3, 5])
    values = dict(zip(fig.data[0].x, fig.data[0].y, strict=True))
    big = {name for name, v in values.items() if v > 1e-4}
    assert big == {"cos 3", "sin 5"}
    assert values["cos 3"] == pytest.approx(math.sqrt(P / 2), rel=1e-5)
    assert values["sin 5"] == pytest.approx(math.sqrt(P / 2), rel=1e-5)
    colors = dict(zip(fig.data[0].x, fig.data[0].marker.color, strict=True))
    assert colors["cos 3"] == colors["sin 3"] == colors["sin 5"] != colors["cos 4"]


def test_unembed_heatmap_equals_W_L_times_basis(model, task):
    fig = plots.unembed_fourier_heatmap(model, task)
    z = torch.tensor(fig.data[0].z, dtype=torch.float64)
    w_l = model.blocks[0].mlp.W_out.detach().double() @ model.W_U.detach().double()[:, :P]
    x = _x(P)
    rows = [torch.full((P,), 1 / math.sqrt(P), dtype=torch.float64)]
    for k in range(1, 9):
        rows += [
            torch.cos(2 * math.pi * k * x / P) * math.sqrt(2 / P),
            torch.sin(2 * math.pi * k * x / P) * math.sqrt(2 / P),
        ]
    want = w_l @ torch.stack(rows).T
    assert torch.allclose(z, want, atol=1e-5)
    assert fig.data[0].x[1:3] == ("cos 1", "sin 1")


def test_unembed_heatmap_groups_neurons_by_cluster_and_labels_sin():
    m = make_model(ModelConfig(p=P, d_model=32, n_heads=2, d_mlp=6), seed=0)
    c = _x(P)
    with torch.no_grad():
        m.blocks[0].mlp.W_out.zero_()
        m.blocks[0].mlp.W_out[4, 0] = 1.0  # neuron 4 writes direction 0 ...
        m.unembed.W_U.zero_()
        m.unembed.W_U[0, :P] = torch.sin(2 * math.pi * 2 * c / P).float()  # ... read as sin(w_2 c)
    clusters = NeuronClusters(
        p=P,
        threshold=0.85,
        freq=torch.tensor([3, 2, 5, 2, 2, 1]),
        fve=torch.tensor([0.9, 0.95, 0.2, 0.9, 0.99, 0.3]),
        fve_all=torch.zeros(8, 6),
    )
    fig = plots.unembed_fourier_heatmap(m, clusters=clusters)
    heat = fig.data[0]
    # clustered neurons by frequency (2: 1, 3, 4; 3: 0), then unclustered (2, 5)
    order = [int(label.split()[1]) for label in heat.y]
    assert order == [1, 3, 4, 0, 2, 5]
    row4 = torch.tensor(heat.z[order.index(4)], dtype=torch.float64)
    nonzero = [heat.x[i] for i in torch.nonzero(row4.abs() > 1e-5).flatten().tolist()]
    assert nonzero == ["sin 2"]
    assert float(row4.abs().max()) == pytest.approx(math.sqrt(P / 2), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# neurons
# ---------------------------------------------------------------------------------------------


def test_cluster_sizes_count_neurons_at_threshold():
    freqs = [3, 3, 5, 5, 5, 7, 1, 3]
    fve = [0.9, 0.85, 0.99, 0.86, 0.5, 0.84, 0.95, 0.2]
    fig = plots.neuron_cluster_sizes(freqs, fve, threshold=0.85)
    assert list(fig.data[0].x) == ["k=1", "k=3", "k=5", "unclustered"]
    assert list(fig.data[0].y) == [1, 2, 2, 3]
    clusters = NeuronClusters(
        p=P,
        threshold=0.85,
        freq=torch.tensor(freqs),
        fve=torch.tensor(fve),
        fve_all=torch.zeros(8, 8),
    )
    same = plots.neuron_cluster_sizes(clusters)
    assert list(same.data[0].y) == [1, 2, 2, 3]
    assert (
        dict(zip([int(x[2:]) for x in same.data[0].x[:-1]], same.data[0].y[:-1], strict=True))
        == clusters.sizes
    )
    with pytest.raises(ValueError, match="fve"):
        plots.neuron_cluster_sizes(freqs)


def test_fve_histogram_holds_every_value_and_the_threshold():
    values = [0.1, 0.5, 0.86, 0.9, 0.99, 1.0]
    fig = plots.fve_histogram(values, threshold=0.8)
    assert list(fig.data[0].x) == values
    assert fig.data[0].xbins.start == 0 and fig.data[0].xbins.end == 1
    assert [s.x0 for s in fig.layout.shapes] == [0.8]


def _manual_forward(model, tokens):
    """Attention pattern and MLP post-activation of a 1-layer, no-LayerNorm model by hand."""
    resid = model.W_E[tokens] + model.W_pos[None, :3]  # [n, 3, d]
    attn = model.blocks[0].attn
    q = torch.einsum("npd,hde->nhpe", resid, attn.W_Q) + attn.b_Q[None, :, None]
    k = torch.einsum("npd,hde->nhpe", resid, attn.W_K) + attn.b_K[None, :, None]
    v = torch.einsum("npd,hde->nhpe", resid, attn.W_V) + attn.b_V[None, :, None]
    scores = torch.einsum("nhqe,nhke->nhqk", q, k) / math.sqrt(model.cfg.d_head)
    mask = torch.ones(3, 3, dtype=torch.bool).tril()
    pattern = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    z = torch.einsum("nhqk,nhke->nhqe", pattern, v)
    out = torch.einsum("nhqe,hed->nqd", z, attn.W_O) + attn.b_O
    mid = resid + out
    mlp = model.blocks[0].mlp
    post = torch.relu(mid @ mlp.W_in + mlp.b_in)
    return pattern.detach(), post[:, -1].detach()


def test_attention_grid_equals_hand_computed_pattern(model, task):
    fig = plots.attention_to_operands(model, task)
    pattern, _ = _manual_forward(model, task.tokens())
    assert len(fig.data) == 2 * model.cfg.n_heads
    for trace in fig.data:
        h, pos = trace.meta
        want = pattern[:, h, 2, pos].reshape(P, P)  # rows a, columns b
        assert torch.allclose(torch.tensor(trace.z, dtype=torch.float64), want.double(), atol=1e-5)
        assert trace.name == f"head {h} → {'ab'[pos]}"
    a, b = 5, 11
    assert fig.data[0].z[a][b] == pytest.approx(float(pattern[a * P + b, 0, 2, 0]), abs=1e-6)


def test_attention_examples_match_the_pattern(model, task):
    examples = plots.attention_examples(model, task, [(2, 9), (16, 0)])
    pattern, _ = _manual_forward(model, torch.tensor([[2, 9, P], [16, 0, P]]))
    assert [toks for toks, _ in examples] == [["a=2", "b=9", "="], ["a=16", "b=0", "="]]
    for (_, pat), want in zip(examples, pattern, strict=True):
        assert torch.allclose(pat, want, atol=1e-5)
    with pytest.raises(ValueError, match="examples"):
        plots.attention_examples(model, task, [(P, 0)])


def test_neuron_grids_show_top_variance_neurons_of_each_cluster(model, task):
    _, post = _manual_forward(model, task.tokens())
    variance = post.double().var(0)
    d_mlp = post.shape[1]
    freqs = [1 + (i % 3) for i in range(d_mlp)]  # clusters 1, 2, 3
    fve = [0.9 if i % 4 else 0.1 for i in range(d_mlp)]  # every 4th neuron unclustered
    fig = plots.neuron_activation_grids(model, task, freqs, fve, per_cluster=2)
    shown = [trace.meta for trace in fig.data]
    want = []
    for k in (1, 2, 3):
        members = [i for i in range(d_mlp) if freqs[i] == k and fve[i] >= 0.85]
        want += sorted(members, key=lambda i: -float(variance[i]))[:2]
    assert sorted(shown) == sorted(want) and len(shown) == 6
    for trace in fig.data:
        assert torch.allclose(
            torch.tensor(trace.z, dtype=torch.float64),
            post[:, trace.meta].reshape(P, P).double(),
            atol=1e-5,
        )
    empty = plots.neuron_activation_grids(model, task, freqs, [0.0] * d_mlp)
    assert len(empty.data) == 0 and "no neuron" in empty.layout.title.text


# ---------------------------------------------------------------------------------------------
# logits and ablations
# ---------------------------------------------------------------------------------------------


def test_trig_identity_bars_equal_alphas():
    fig = plots.trig_identity_coefficients({7: 2.5, 3: -1.0}, fve=0.93)
    assert list(fig.data[0].x) == ["k=3", "k=7"] and list(fig.data[0].y) == [-1.0, 2.5]
    assert "93.0 %" in fig.layout.title.text
    dec = TrigDecomposition(
        p=P, freqs=[2, 4], alpha={2: 1.5, 4: 0.5}, fve=0.5, loss=0.2, approx_loss=0.1
    )
    fig = plots.trig_identity_coefficients(dec)
    assert list(fig.data[0].y) == [1.5, 0.5] and "50.0 %" in fig.layout.title.text


def test_trig_identity_of_planted_logits():
    """Logits that are exactly 3 cos(w_2(a+b-c)) - 0.5 cos(w_5(a+b-c)): the bars read 3, -0.5."""
    from tl_grokking.analysis.logits import trig_logit_decomposition

    a = torch.arange(P).repeat_interleave(P)
    b = torch.arange(P).repeat(P)
    s = (a + b).double()[:, None] - torch.arange(P).double()[None, :]
    logits = 3 * torch.cos(2 * math.pi * 2 * s / P) - 0.5 * torch.cos(2 * math.pi * 5 * s / P)
    fig = plots.trig_identity_coefficients(trig_logit_decomposition(logits, None, [2, 5]))
    assert fig.data[0].y == pytest.approx((3.0, -0.5), abs=1e-9)


def test_ablation_table_cells():
    table = AblationTable(
        p=P,
        key_freqs=[2],
        rows=[
            AblationRow("full model", 2.41e-7, 1.0),
            AblationRow("excluded k = 2", 0.0123, 0.5, "train"),
        ],
    )
    fig = plots.ablation_table_figure(table)
    cols = fig.data[0].cells.values
    assert list(cols[0]) == ["full model", "excluded k = 2"]
    assert list(cols[1]) == ["all", "train"]
    assert list(cols[2]) == ["2.410e-07", "0.0123"]
    assert [float(v) for v in cols[2]] == pytest.approx([2.41e-7, 0.0123], rel=1e-3)
    assert isinstance(fig, go.Figure) and isinstance(fig.data[0], go.Table)
    same = plots.ablation_table_figure([{"ablation": "x", "loss": 1.5}])
    assert list(same.data[0].cells.values[1]) == ["1.5"]


def test_one_number_format_for_report_figures_and_cli():
    """fmt_num is the one display format (figures, report, console): 4 significant digits,
    scientific below 1e-3 and from 1e5 on, integers in full; importable without torch."""
    import subprocess
    import sys

    from tl_grokking._format import fmt_num

    assert fmt_num(None) == "—"
    assert (fmt_num(1400), fmt_num(12300.0), fmt_num(1.0), fmt_num(0.0)) == (
        "1400",
        "12300",
        "1",
        "0",
    )
    assert (fmt_num(2.41e-7), fmt_num(0.0123), fmt_num(1.5)) == ("2.410e-07", "0.0123", "1.5")
    assert (fmt_num(123456.7), fmt_num(-4.2e-5)) == ("1.235e+05", "-4.200e-05")
    assert (fmt_num(float("nan")), fmt_num(float("inf"))) == ("nan", "inf")
    assert fmt_num(torch.tensor(0.25, dtype=torch.float64)) == "0.25"
    assert (fmt_num("add"), fmt_num(True)) == ("add", "True")
    fig = plots.trig_identity_coefficients({3: 2.5e-7, 5: 1.25})
    assert list(fig.data[0].text) == ["2.500e-07", "1.25"]
    code = "import sys, tl_grokking._format; sys.exit(bool({'torch', 'plotly'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_model_and_task_must_agree(model):
    with pytest.raises(ValueError, match="p = 19"):
        plots.embedding_fourier_norms(model, ModularAddition(19))


def test_token_fourier_plots_refuse_other_tasks_by_name():
    from tl_grokking.data.tasks import make_task

    p = 7
    model = make_model(ModelConfig(p=p, d_model=16, n_heads=2, d_mlp=16), seed=0)
    for name in ("mul", "x2+y2"):
        task = make_task(name, p)
        with pytest.raises(ValueError, match=f"W_E Fourier-norm plot.*'{re.escape(name)}'"):
            plots.embedding_fourier_norms(model, task)
        with pytest.raises(ValueError, match=f"W_L Fourier heatmap.*'{re.escape(name)}'"):
            plots.unembed_fourier_heatmap(model, task)
    sub = make_task("sub", p)
    fig = plots.embedding_fourier_norms(model, sub)  # the token-order basis applies to a - b
    expected = torch.linalg.vector_norm(model.W_E[:p].detach().double(), dim=1).square().sum()
    assert sum(v * v for v in fig.data[0].y) == pytest.approx(float(expected))  # Parseval
    div = make_task("div", p)
    with pytest.raises(ValueError, match="attention-to-operands.*every pair.*'div'"):
        plots.attention_to_operands(model, div)
    # the attention grid needs no group structure: fine for mul (full grid)
    assert plots.attention_to_operands(model, make_task("mul", p)).data
