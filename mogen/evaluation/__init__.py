"""Forgetting evaluation: suites of held-out probes, the reward-hacking alarm, eval and run reports.

For the training loop:
    suite = load_suite("recipes/eval/toy_quick.yaml")
    metrics.update(run_probes(policy, suite))           # {"probe/<probe>/<metric>": float}
    alarm = HackingAlarm.from_suite(suite); warning = alarm.update(metrics)
"""

from mogen.evaluation.alarm import HackingAlarm
from mogen.evaluation.probes import MetricValues, SuiteResult, metric_directions, run_probes, run_suite
from mogen.evaluation.suite import Suite, load_suite

__all__ = ["HackingAlarm", "MetricValues", "Suite", "SuiteResult", "load_suite", "metric_directions", "run_probes", "run_suite"]
