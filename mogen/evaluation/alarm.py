"""The reward-hacking alarm: a trained reward keeps rising while a held-out probe gets worse.

Rising reward with stable probes is alignment; rising reward with falling probes is the signature of reward
hacking (or of forgetting bought with the reward). The alarm watches the metrics the trainer logs each step:

  trained reward rose:  mean of its last `window` values - mean of its first `window` values > 2 standard
                        errors of that difference (noise in a flat reward does not count as rising)
  probe worsened:       value < first - margin * |first|   (higher is better; mirrored when lower is better)
                        at `patience` probe evaluations in a row (one noisy evaluation is not a trend)

It fires on a step that logs probes when both hold, and returns a warning naming the reward and the probe.
"""

from __future__ import annotations

import math

import numpy as np

from mogen.evaluation.probes import metric_directions
from mogen.evaluation.suite import AlarmConfig, Suite

NOT_A_REWARD = ("reward/failed_fraction",)


class HackingAlarm:
    """Feed it each step's metrics with `update`; it returns warning text when the alarm fires, else None.

    `directions` maps each logged probe metric (e.g. "probe/heldout_count/count") to True if higher is better,
    False if lower is better, None to ignore it (the KL to base, which starts at 0 and has no "better").
    """

    def __init__(self, cfg: AlarmConfig, directions: dict[str, bool | None]):
        self.cfg = cfg
        self.directions = {key: higher for key, higher in directions.items() if higher is not None}
        self.first: dict[str, float] = {}
        self.strikes: dict[str, int] = {}  # consecutive probe evaluations beyond the margin
        self.history: dict[str, list[float]] = {}
        self.fired = False

    @classmethod
    def from_suite(cls, suite: Suite) -> HackingAlarm:
        return cls(suite.alarm, {f"probe/{key}": higher for key, higher in metric_directions(suite).items()})

    @property
    def should_stop(self) -> bool:
        """True once the alarm has fired and the suite asks to stop training (alarm.stop: true)."""
        return self.fired and self.cfg.stop

    def _is_trained(self, key: str) -> bool:
        if self.cfg.rewards is not None:
            return key in self.cfg.rewards
        return key.startswith("reward/") and key not in NOT_A_REWARD

    def update(self, metrics: dict[str, float]) -> str | None:
        for key, value in metrics.items():
            if self._is_trained(key) and math.isfinite(value):
                self.history.setdefault(key, []).append(float(value))
        worsened = []
        for key, higher in self.directions.items():
            value = metrics.get(key)
            if value is None or not math.isfinite(value):
                continue
            if key not in self.first:
                self.first[key] = float(value)
                continue
            first = self.first[key]
            gain = value - first if higher else first - value
            beyond = gain < -self.cfg.margin * max(abs(first), 1e-12)
            self.strikes[key] = self.strikes.get(key, 0) + 1 if beyond else 0
            if self.strikes[key] >= self.cfg.patience:
                worsened.append(f"{key} {first:.4g} -> {value:.4g} ({gain / max(abs(first), 1e-12):+.0%})")
        if not worsened:
            return None
        window = self.cfg.window
        rising = []
        for key, values in self.history.items():
            if len(values) >= 2 * window:
                first, last = np.array(values[:window]), np.array(values[-window:])
                noise = 2 * math.sqrt((first.var(ddof=1) + last.var(ddof=1)) / window) if window > 1 else 0.0
                if last.mean() - first.mean() > noise:
                    rising.append(f"{key} {first.mean():.4g} -> {last.mean():.4g}")
        if not rising:
            return None
        self.fired = True
        action = "stopping (alarm.stop: true)" if self.cfg.stop else "set alarm.stop: true in the eval suite to stop"
        return (
            f"reward-hacking alarm at step {metrics.get('step', '?')}: trained reward rose ({'; '.join(rising)}) "
            f"while held-out probes worsened by more than {self.cfg.margin:.0%} ({'; '.join(worsened)}); {action}"
        )
