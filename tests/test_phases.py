"""Phase boundaries: the documented rules on synthetic curves with hand-derived answers, clamping,
runs that never grok, bad input, and ordering on a real (small) run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tl_grokking.analysis.phases import (
    PhaseRule,
    Phases,
    analysis_notes,
    boundaries_text,
    detect_phases,
    first_epoch_at_or_above,
    grok_summary,
    phases_record,
)
from tl_grokking.analysis.progress import progress_measures
from tl_grokking.runs.rundir import GROK_ACC


@pytest.fixture(scope="module")
def small_measures(small_run):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread avoids OpenMP contention
    try:
        return progress_measures(small_run, progress=False)
    finally:
        torch.set_num_threads(threads)


def _ramp(e: float, e0: float, e1: float, y0: float, y1: float) -> float:
    """y0 before e0, y1 after e1, linear in between."""
    if e <= e0:
        return y0
    if e >= e1:
        return y1
    return y0 + (y1 - y0) * (e - e0) / (e1 - e0)


def paper_like(step: int = 100, last: int = 20_000, wiggle: float = 0.0) -> dict[str, list]:
    """Curves shaped like the paper's main run, with boundaries 1.4k / 9.4k / ~14k.

    log10 train loss: 0.5 -> -7 linearly over 0..1400, then flat.
    log10 test loss: 0.5 -> 1.3 over 0..1400, flat to 9400, falls linearly to -6 by 11000.
    Gini W_E: 0.1 until 9400, rises linearly to 0.8 by 14000; Gini W_L to 0.9 by 12600.
    """
    epochs = list(range(0, last + 1, step))
    cols: dict[str, list] = {"epoch": epochs}
    tr, te = [], []
    for i, e in enumerate(epochs):
        w = wiggle * math.sin(1.7 * i)  # deterministic noise, in decades
        tr.append(10 ** (_ramp(e, 0, 1400, 0.5, -7.0) + w))
        te.append(10 ** (_ramp(e, 0, 1400, 0.5, 1.3) + _ramp(e, 9400, 11000, 0, -7.3) + w))
    cols["train_loss"], cols["test_loss"] = tr, te
    cols["test_acc"] = [_ramp(e, 9400, 10400, 0.01, 1.0) for e in epochs]
    cols["gini_W_E"] = [_ramp(e, 9400, 14000, 0.1, 0.8) for e in epochs]
    cols["gini_W_L"] = [_ramp(e, 9400, 12600, 0.1, 0.9) for e in epochs]
    return cols


def test_rules_on_paper_like_curves_give_hand_derived_boundaries():
    ph = detect_phases(paper_like())
    # Memorisation: level = floor + 0.05 (start - floor) = -7 + 0.375 -> reached at 1330;
    # first checkpoint at or below it is 1400 (1300 is at -6.46).
    assert ph.memorization_end == 1400
    # Cleanup start: plateau 1.3, end -6; level1 (10 %) is crossed at 9560, level2 (50 %) at
    # 10200; the line through them meets the plateau at 9560 - 640 * 0.1 / 0.4 = 9400.
    assert ph.diagnostics["onset_crossings"] == pytest.approx([9560, 10200], abs=1e-6)
    assert ph.circuit_formation_end == 9400
    # Cleanup end: Gini W_E completes 90 % of its rise at 9400 + 0.9 * 4600 = 13540 -> 13600;
    # Gini W_L at 9400 + 0.9 * 3200 = 12280 -> 12300; the earlier one wins.
    assert ph.diagnostics["gini_W_E_end"] == 13600
    assert ph.diagnostics["gini_W_L_end"] == 12300
    assert ph.cleanup_end == 12300
    assert ph.test_acc_99_epoch == 10400  # ramp reaches 0.99 at 10389.9 -> next checkpoint
    assert ph.grokked and not ph.notes
    assert [p["name"] for p in ph.phases()] == ["memorization", "circuit_formation", "cleanup"]
    assert ph.phases()[1] == {"name": "circuit_formation", "start": 1400, "end": 9400}


def test_rules_are_robust_to_wiggles_and_a_spike():
    cols = paper_like(wiggle=0.05)
    i = cols["epoch"].index(5000)
    cols["test_loss"][i] *= 30  # a one-checkpoint spike on the plateau (1.5 decades)
    ph = detect_phases(cols)
    assert abs(ph.memorization_end - 1400) <= 100
    assert abs(ph.circuit_formation_end - 9400) <= 200
    assert abs(ph.cleanup_end - 12300) <= 100


def test_cleanup_end_falls_back_to_test_loss_without_gini():
    cols = paper_like()
    del cols["gini_W_E"], cols["gini_W_L"]
    ph = detect_phases(cols)
    # log test loss completes 90 % of its fall from 1.3 to -6 (level -5.27) at
    # 9400 + 0.9 * 1600 = 10840 -> first checkpoint at or below: 10900.
    assert ph.cleanup_end == 10900
    assert ph.diagnostics["test_loss_end"] == 10900


def test_boundaries_scale_with_the_run():
    """The rules use only fractions of each curve's range: stretching time stretches them."""
    base = detect_phases(paper_like())
    stretched = paper_like()
    stretched["epoch"] = [3 * e for e in stretched["epoch"]]
    ph = detect_phases(stretched)
    assert len(base.boundaries) == 3 and None not in base.boundaries  # not vacuous: it grokked
    assert ph.boundaries == tuple(3 * b for b in base.boundaries)


def test_run_that_never_groks_has_only_memorisation():
    cols = paper_like(last=9000)  # stops before the cliff
    ph = detect_phases(cols)
    assert not ph.grokked
    assert ph.memorization_end == 1400
    assert ph.circuit_formation_end is None and ph.cleanup_end is None
    assert ph.test_acc_99_epoch is None
    assert any("no grokking" in n for n in ph.notes)
    assert [p["name"] for p in ph.phases()] == ["memorization"]


def test_early_grokking_keeps_the_boundaries_ordered():
    """Train loss still falling when the test loss falls: memorisation ends where the test loss
    stops rising (its peak, epoch 200), before the train-loss rule's epoch (400: the floor is
    taken before the cleanup start, which it never passes)."""
    epochs = list(range(0, 3001, 50))
    cols = {
        "epoch": epochs,
        "train_loss": [10 ** _ramp(e, 0, 3000, 0.5, -7) for e in epochs],
        "test_loss": [
            10 ** (_ramp(e, 0, 200, 0.5, 1.0) + _ramp(e, 400, 800, 0, -6)) for e in epochs
        ],
        "test_acc": [_ramp(e, 400, 800, 0.0, 1.0) for e in epochs],
    }
    ph = detect_phases(cols)
    # train-loss rule: floor up to 400 is -0.5 (log10); 95 % of the fall from 0.5 is reached at
    # 380 -> 400. The test loss peaks (first maximum of its plateau) at 200, which comes first.
    assert ph.memorization_end == 200
    assert ph.circuit_formation_end == 400
    assert ph.diagnostics["test_loss_peak_epoch"] == 200
    b = ph.boundaries
    assert epochs[0] <= b[0] <= b[1] <= b[2] <= epochs[-1]


def test_to_dict_is_json_and_round_trips_the_numbers():
    ph = detect_phases(paper_like())
    data = json.loads(json.dumps(ph.to_dict()))
    assert data["memorization_end"] == 1400
    assert data["circuit_formation_end"] == data["cleanup_start"] == 9400
    assert data["cleanup_end"] == 12300
    assert data["rule"]["onset_fractions"] == [0.1, 0.5]
    assert "9400" in str(ph) and "12300" in str(ph)
    # the checkpoint-resolution epoch at 99 % is labelled as such
    assert "first checkpoint with test accuracy ≥ 99 %: epoch 10400 (checkpoint resolution)" in (
        str(ph).splitlines()
    )


def test_the_grok_threshold_is_the_one_of_the_run_directory():
    assert PhaseRule().grok_acc == GROK_ACC
    cols = paper_like()
    # first checkpoint at or above GROK_ACC, whatever its value
    want = next(e for e, a in zip(cols["epoch"], cols["test_acc"], strict=True) if a >= GROK_ACC)
    assert detect_phases(cols).test_acc_99_epoch == want


def test_custom_rule_changes_the_memorisation_boundary():
    ph = detect_phases(paper_like(), PhaseRule(mem_fraction=0.5))
    assert ph.memorization_end == 700  # half of the 0..1400 log-linear fall


def test_first_epoch_at_or_above():
    assert first_epoch_at_or_above([0, 10, 20], [0.1, 0.995, 1.0], 0.99) == 10
    assert first_epoch_at_or_above([0, 10, 20], [0.1, 0.2, 0.3], 0.99) is None


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda c: c.pop("test_acc"), "test_acc"),
        (lambda c: c.update({k: v[:2] for k, v in c.items()}), "at least 3"),
        (lambda c: c["epoch"].__setitem__(3, 0), "increasing"),
        (lambda c: c["train_loss"].__setitem__(3, float("nan")), "NaN"),
    ],
)
def test_bad_measures_raise(mutate, match):
    cols = paper_like()
    mutate(cols)
    with pytest.raises(ValueError, match=match):
        detect_phases(cols)


def test_bad_input_type_and_rule():
    with pytest.raises(ValueError, match="mapping"):
        detect_phases([1, 2, 3])
    with pytest.raises(ValueError, match="onset_fractions"):
        PhaseRule(onset_fractions=(0.5, 0.1))
    with pytest.raises(ValueError, match="mem_fraction"):
        PhaseRule(mem_fraction=1.0)


def test_phases_of_the_small_run_are_ordered_and_inside(small_measures):
    ph = detect_phases(small_measures)
    assert isinstance(ph, Phases)
    epochs = small_measures.epochs
    assert ph.grokked, ph.diagnostics
    b = ph.boundaries
    assert all(x in epochs for x in b)
    assert epochs[0] <= b[0] <= b[1] <= b[2] <= epochs[-1]
    assert b[0] < b[2]
    # the sharp test-loss fall happens inside [circuit-formation end, cleanup end]
    i1, i2 = epochs.index(b[1]), epochs.index(b[2])
    test = small_measures["test_loss"]
    assert test[i2] < test[i1] / 10


def test_run_ending_inside_cleanup_is_flagged():
    cols = paper_like(last=12_000)  # both Gini curves still rising at the end
    ph = detect_phases(cols)
    assert ph.circuit_formation_end == 9400
    # by 12000 W_L has risen 0.65 and W_E 0.396; each reaches 90 % of that at 11740 -> 11800
    assert ph.cleanup_end == 11_800
    assert any("still rising" in n and "lower bound" in n for n in ph.notes)
    assert not detect_phases(paper_like()).notes  # a finished cleanup has no such note


def test_a_creeping_gini_does_not_tie_cleanup_end_to_the_run_length():
    """W_E keeps creeping up after the cleanup; the boundary follows W_L, which has flattened."""
    ends = []
    for last in (16_000, 20_000, 30_000):
        cols = paper_like(last=last)
        cols["gini_W_E"] = [
            _ramp(e, 9400, 14000, 0.1, 0.8) + 2e-5 * max(0, e - 14000) for e in cols["epoch"]
        ]
        ends.append(detect_phases(cols).cleanup_end)
    assert ends == [12300, 12300, 12300]


# ---------------------------------------------------------------------------------------------
# what people read: the record, the caveats, the epoch at 99 %
# ---------------------------------------------------------------------------------------------


class _Measures:
    """A measures table as progress_measures returns it (columns, key frequencies, rule)."""

    def __init__(self, columns: dict, key_freqs: list[int], key_freq_rule: str) -> None:
        self.columns, self.key_freqs, self.key_freq_rule = columns, key_freqs, key_freq_rule


def test_phases_record_is_the_phases_json_record():
    phases, record = phases_record(_Measures(paper_like(last=12_000), [3, 7], "clusters"))
    assert phases is not None and record == {
        **phases.to_dict(),
        "key_freqs": [3, 7],
        "key_freq_rule": "clusters",
        "n_checkpoints": 121,
    }
    assert json.loads(json.dumps(record)) == record
    short = {k: v[:2] for k, v in paper_like().items()}
    phases, record = phases_record(_Measures(short, [], "given"))
    assert phases is None and record["phases"] is None and "at least 3" in record["reason"]


def test_analysis_notes_are_every_caveat():
    _, record = phases_record(_Measures(paper_like(last=12_000), [3, 7], "clusters"))
    assert analysis_notes(record) == list(record["notes"]) and record["notes"]
    _, record = phases_record(_Measures(paper_like(last=9000), [], "none found (clusters: 0)"))
    notes = analysis_notes(record)
    assert any("no grokking detected" in n for n in notes)
    assert (
        notes[-1]
        == "no key frequencies, so no restricted / excluded losses (none found (clusters: 0))"
    )
    fallback = analysis_notes({"phases": [], "key_freqs": [5], "key_freq_rule": "embed"})
    assert fallback == [
        "key frequencies from the fallback rule 'embed': the circuit rule found no "
        "sparse set of frequencies at the last checkpoint"
    ]
    assert analysis_notes({"phases": None, "reason": "need at least 3 checkpoints, got 2"}) == [
        "phases not detected: need at least 3 checkpoints, got 2"
    ]
    assert analysis_notes({"phases": [], "key_freq_rule": "given", "key_freqs": [1]}) == []
    assert analysis_notes(None) == []


def test_boundaries_text():
    record = detect_phases(paper_like()).to_dict()
    assert boundaries_text(record) == (
        "phases over epochs 0–20000: memorisation ends 1400, circuit formation ends 9400, "
        "cleanup ends 12300"
    )
    record = detect_phases(paper_like(last=9000)).to_dict()
    assert boundaries_text(record).endswith("circuit formation ends —, cleanup ends —")


def test_grok_summary_is_grok_epoch_of_the_metrics_log():
    metrics = [{"epoch": e, "test_acc": min(1.0, e / 1000)} for e in range(0, 1501, 25)]
    assert (
        grok_summary(metrics, 25) == "first at epoch 1000 (metrics.jsonl, logged every 25 epochs)"
    )
    assert grok_summary(metrics[:10], 25) == (
        "not reached by epoch 225 (metrics.jsonl, logged every 25 epochs)"
    )
    assert grok_summary([{"note": "no epoch"}]) == "unknown (no metrics.jsonl records)"
