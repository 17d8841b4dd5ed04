"""Full-size checks at the paper's configuration (p = 113), marked ``slow``.

Kept out of the default run (``pyproject.toml``: ``-m 'not slow'``); ``python -m pytest -m slow``
runs them (about a minute on two CPU cores). They use only what the repository ships
(``tests/data/paper_no_wd.safetensors``: the ``paper_model`` fixture of ``conftest.py``) or
train from scratch.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_shipped_checkpoint_key_frequencies_and_trig_fit(paper_model):
    """docs/analysis.md: clusters and W_L agree on {36, 52}; W_E (no weight decay) is not
    sparse; the trig identity explains 94.8 % of the logit variance."""
    from tl_grokking.analysis.circuits import key_frequencies
    from tl_grokking.analysis.logits import trig_logit_decomposition

    keys = key_frequencies(paper_model, rule="all")
    assert keys.by_rule["clusters"] == [36, 52]
    assert keys.by_rule["unembed"] == [36, 52]
    assert len(keys.by_rule["embed"]) == 11 and {36, 52} <= set(keys.by_rule["embed"])
    assert not keys.agree
    assert keys.clusters.sizes == {36: 181, 52: 139}
    dec = trig_logit_decomposition(paper_model, freqs=[36, 52])
    assert dec.fve == pytest.approx(0.948, abs=1e-3)
    alpha = {int(k): float(v) for k, v in dec.alpha.items()}
    assert alpha[36] == pytest.approx(249.6, abs=0.1)
    assert alpha[52] == pytest.approx(114.7, abs=0.1)


def test_shipped_checkpoint_ablation_table(paper_model):
    """The fixture's ablation table as docs/analysis.md reports it."""
    from tl_grokking.analysis.ablations import ablation_table

    t = ablation_table(paper_model)
    assert t.key_freqs == [36, 52]
    assert t["full model"].loss == pytest.approx(1.111e-7, rel=2e-3)
    assert t["full model"].accuracy == 1.0
    assert t["restricted logits (key x+y)"].loss == pytest.approx(1.13e-8, rel=2e-2)
    assert t["neurons -> own 3x3 block"].loss == pytest.approx(2.7e-2, rel=2e-2)
    dropped = t["neurons -> own 3x3 block + unclustered dropped"].loss
    assert dropped == pytest.approx(0.58, rel=2e-2)
    assert t["attention zero-ablated"].loss == pytest.approx(20.0, rel=1e-2)
    assert t["excluded k = 36"].loss > 10 and t["excluded k = 52"].loss > 10


def test_cli_ablate_on_the_shipped_checkpoint(paper_checkpoint, capsys):
    """`tl-grokking ablate tests/data/paper_no_wd.safetensors`, as the README runs it."""
    from tl_grokking.cli import main

    assert main(["ablate", str(paper_checkpoint)]) == 0
    out = capsys.readouterr().out
    assert "[36, 52]" in out
    assert "attention zero-ablated" in out


def test_paper_training_steps_agree_with_a_hooked_transformer_loop(tmp_path):
    """The trainer (fast final-position path) and a plain TransformerLens training loop — the
    demo's: HookedTransformer forward, float64 cross-entropy at '=', AdamW with the paper's
    settings and the 10-step warm-up — give the same train and test losses, epoch by epoch, at
    the paper's size (p = 113, d_model 128, 4 heads, d_mlp 512, 3830 training pairs)."""
    from tl_grokking.model.transformer import make_model
    from tl_grokking.runs.rundir import read_metrics
    from tl_grokking.training.config import TrainConfig
    from tl_grokking.training.trainer import train_model

    epochs = 15
    config = TrainConfig(epochs=epochs, log_every=1, checkpoint_every=epochs)
    assert (config.p, config.d_model, config.d_mlp, config.frac_train) == (113, 128, 512, 0.3)
    train_model(config, tmp_path / "run", progress=False)
    ours = {m["epoch"]: m for m in read_metrics(tmp_path / "run")}

    task = config.make_task()
    train_idx, test_idx = task.split(config.frac_train, seed=config.seed)
    assert len(train_idx) == 3830
    tokens, labels = task.tokens(), task.labels()
    model = make_model(config.model_config(), seed=config.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        params, lr=config.lr, weight_decay=config.weight_decay, betas=(config.beta1, config.beta2)
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: min(step / config.warmup_steps, 1.0)
    )

    def losses() -> tuple[float, float]:
        with torch.no_grad():
            logits = model(tokens)[:, -1, : task.p].double()
        return (
            F.cross_entropy(logits[train_idx], labels[train_idx]).item(),
            F.cross_entropy(logits[test_idx], labels[test_idx]).item(),
        )

    reference = {0: losses()}
    for epoch in range(1, epochs + 1):
        logits = model(tokens[train_idx])[:, -1, : task.p]
        loss = F.cross_entropy(logits.double(), labels[train_idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        reference[epoch] = losses()

    assert reference[epochs][0] < reference[0][0] - 0.01  # the loop really trains
    for epoch, (train_loss, test_loss) in reference.items():
        assert ours[epoch]["train_loss"] == pytest.approx(train_loss, rel=1e-4), epoch
        assert ours[epoch]["test_loss"] == pytest.approx(test_loss, rel=1e-4), epoch


def test_paper_config_memorises_first(tmp_path):
    """The paper's first phase at full size: within 250 epochs the model fits every training
    pair while the test loss rises far above its initial value (test accuracy near chance)."""
    from tl_grokking.runs.rundir import read_metrics
    from tl_grokking.training.config import TrainConfig
    from tl_grokking.training.trainer import train_model

    config = TrainConfig(epochs=250, log_every=50, checkpoint_every=250)
    train_model(config, tmp_path / "run", progress=False)
    metrics = read_metrics(tmp_path / "run")
    first, last = metrics[0], metrics[-1]
    assert last["epoch"] == 250
    assert last["train_acc"] == 1.0 and last["train_loss"] < 0.05
    assert last["test_acc"] < 0.1
    assert last["test_loss"] > 3 * first["test_loss"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["p"] == 113
