"""schedule.Schedule: NT-ASGD's switch, averaged SGD's stop, annealing, the non-monotone rule and the
best-model bookkeeping, decided directly on sequences of validation losses."""
import pytest

from schedule import Schedule, nonmono_triggered


def run(optimizer, losses, **kw):
    cfg = dict(optimizer=optimizer, nonmono=3, patience=2, anneal=3.0, min_lr=0.1, lr=30.0, **kw)
    schedule = Schedule(cfg)
    return [schedule.update(epoch, loss) for epoch, loss in enumerate(losses, 1)], schedule


def test_nt_asgd_switches_when_worse_than_the_best_before_the_last_nonmono():
    # history must hold more than nonmono (3) losses; then a loss above min(history[:-3]) switches
    actions, state = run("asgd-nt", [5, 4, 3, 2.5, 4.9])
    assert actions == [None] * 5  # 4.9 is not worse than min([5])
    actions, state = run("asgd-nt", [5, 4, 3, 2.5, 5.5, 6, 7])
    assert actions == [None, None, None, None, "switch", None, None]  # switches once, never again
    assert state.averaging and state.val_history == [5, 4, 3, 2.5, 5.5, 6, 7]
    assert state.lr == 30.0 and state.phase == "asgd"  # averaged SGD restarts from the initial lr
    actions, _ = run("asgd-nt", [5, 4, 3, 6.0])  # only 3 losses recorded before: too early
    assert actions == [None] * 4


def test_nonmono_rule_boundary():
    assert not nonmono_triggered([1.0, 2.0, 3.0], 9.0, 3)  # not more than nonmono recorded
    assert nonmono_triggered([1.0, 2.0, 3.0, 4.0], 1.01, 3)
    assert not nonmono_triggered([1.0, 2.0, 3.0, 4.0], 1.0, 3)  # equal is not worse


def test_averaged_sgd_from_the_start_stops_by_the_nonmono_rule():
    actions, state = run("asgd", [5, 4, 3, 2.5, 2.4, 4.5, 1.0])
    assert actions == [None, None, None, None, None, "stop", None]
    assert state.averaging and state.stopped


def test_sgd_anneal_divides_lr_after_more_than_patience_bad_epochs_then_stops_below_min_lr():
    # patience 2: the third epoch without a new best anneals
    actions, state = run("sgd-anneal", [5, 6, 6, 6, 6, 6, 6])
    assert actions == [None, None, None, "anneal", None, None, "anneal"]
    assert state.lr == pytest.approx(30 / 9)
    actions, _ = run("sgd-anneal", [5] + [6] * 20)
    # lr 30 -> 10 -> 3.3 -> 1.1 -> 0.37 -> 0.12; one more division would fall below min_lr 0.1: stop
    assert [i for i, a in enumerate(actions) if a == "anneal"] == [3, 6, 9, 12, 15]
    assert actions.index("stop") == 18


def test_sgd_and_adam_never_switch_or_stop():
    for opt in ("sgd", "adam"):
        actions, state = run(opt, [1, 2, 3, 4, 5, 6, 7, 8])
        assert actions == [None] * 8 and state.phase == opt


def test_best_epoch_and_bad_epochs():
    _, state = run("sgd", [5, 4, 4.5, 3.9, 4.0, 4.1])
    assert (state.best_val, state.best_epoch, state.bad_epochs, state.epoch) == (3.9, 4, 2, 6)
    assert state.improves(3.8) and not state.improves(3.9)


def test_state_dict_round_trip_continues_identically():
    losses = [5, 4, 3, 2.5, 5.5, 6, 7]
    cfg = dict(optimizer="asgd-nt", nonmono=3, patience=2, anneal=3.0, min_lr=0.1, lr=30.0)
    whole = Schedule(cfg)
    whole_actions = [whole.update(e, l) for e, l in enumerate(losses, 1)]
    first = Schedule(cfg)
    actions = [first.update(e, l) for e, l in enumerate(losses[:3], 1)]
    saved = first.state_dict()
    assert "cfg" not in saved and all(isinstance(v, (int, float, bool, list)) for v in saved.values())
    again = Schedule(cfg).load_state_dict(saved)
    actions += [again.update(e, l) for e, l in enumerate(losses[3:], 4)]
    assert actions == whole_actions and again.state_dict() == whole.state_dict()
