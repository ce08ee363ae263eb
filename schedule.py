"""What a run decides after each epoch, apart from the loop so each rule tests on its own (--optimizer's help)."""
SWITCH, ANNEAL, STOP = "switch", "anneal", "stop"


def nonmono_triggered(history, val_loss, nonmono):
    """More than ``nonmono`` losses recorded and ``val_loss`` worse than the best of all but the last ``nonmono``."""
    return len(history) > nonmono and val_loss > min(history[:-nonmono])


class Schedule:
    """The epoch-level state of a run; ``state_dict()`` is a plain dict (saved in resume checkpoints)."""

    def __init__(self, cfg, best_val=float("inf")):
        self.cfg = {k: cfg[k] for k in ("optimizer", "lr", "nonmono", "patience", "anneal", "min_lr")}
        self.epoch, self.lr, self.averaging = 0, cfg["lr"], cfg["optimizer"] == "asgd"
        self.val_history, self.metrics = [], []
        self.best_val, self.best_epoch, self.bad_epochs = best_val, 0, 0
        self.stopped, self.elapsed = False, 0.0

    def improves(self, val_loss):
        return val_loss < self.best_val

    def decide(self, val_loss):
        """The rule's verdict on ``val_loss`` before it is recorded: None, SWITCH, ANNEAL or STOP."""
        c = self.cfg
        if c["optimizer"] == "asgd" or (c["optimizer"] == "asgd-nt" and not self.averaging):
            triggered = nonmono_triggered(self.val_history, val_loss, c["nonmono"])
            return (STOP if c["optimizer"] == "asgd" else SWITCH) if triggered else None
        if c["optimizer"] == "sgd-anneal" and self.bad_epochs > c["patience"]:
            return STOP if self.lr / c["anneal"] < c["min_lr"] else ANNEAL
        return None

    def update(self, epoch, val_loss):
        """Record epoch ``epoch``'s validation loss and apply the rule; returns the action taken."""
        if self.improves(val_loss):
            self.best_val, self.best_epoch, self.bad_epochs = val_loss, epoch, 0
        else:
            self.bad_epochs += 1
        action = self.decide(val_loss)
        self.val_history.append(val_loss)
        if action == SWITCH:
            self.averaging, self.lr = True, self.cfg["lr"]
        elif action == ANNEAL:
            self.lr, self.bad_epochs = self.lr / self.cfg["anneal"], 0
        self.stopped = self.stopped or action == STOP
        self.epoch = epoch
        return action

    phase = property(lambda self: "asgd" if self.averaging else "adam" if self.cfg["optimizer"] == "adam" else "sgd")

    def state_dict(self):
        return {k: v for k, v in vars(self).items() if k != "cfg"}

    def load_state_dict(self, state):
        vars(self).update(state)
        return self
