"""Probes inside `mogen align`: held-out metrics every `eval.every` steps and the reward-hacking alarm."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from mogen.config import EvalConfig
from mogen.evaluation.alarm import HackingAlarm
from mogen.evaluation.probes import run_probes
from mogen.evaluation.suite import Suite, load_suite
from mogen.models.contract import FlowPolicy


@dataclass
class Probes:
    """The recipe's eval suites and one alarm per suite. Falsy when the recipe asks for no probes."""

    suites: list[Suite] = field(default_factory=list)
    alarms: list[HackingAlarm] = field(default_factory=list)

    @classmethod
    def build(cls, cfg: EvalConfig) -> Probes:
        if not cfg.every or not cfg.suites:
            return cls()
        suites = [load_suite(path) for path in cfg.suites]
        return cls(suites, [HackingAlarm.from_suite(s) for s in suites])

    def __bool__(self) -> bool:
        return bool(self.suites)

    @property
    def should_stop(self) -> bool:
        return any(alarm.should_stop for alarm in self.alarms)

    def run(self, policy: FlowPolicy) -> dict[str, float]:
        """`probe/<probe>/<metric>` means of every suite (the base model when the adapter is still zero)."""
        metrics: dict[str, float] = {}
        for suite in self.suites:
            metrics.update(run_probes(policy, suite))
        return metrics

    def check(self, metrics: dict[str, float]) -> None:
        """Give a step's logged metrics (rewards and, on eval steps, probes) to the alarms; warn when one fires."""
        for alarm in self.alarms:
            message = alarm.update(metrics)
            if message:
                warnings.warn(message)

    def replay(self, logged: list[dict[str, float]]) -> None:
        """On `--resume`, rebuild the alarms' history from the metrics already logged (without warning again)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for metrics in logged:
                self.check(metrics)
