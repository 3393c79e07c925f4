"""Forgetting evaluation: suites of held-out probes, the reward-hacking alarm, eval and run reports.

Modules are imported where they are used (importing this package stays light for the CLI). For the training loop:
    from mogen.evaluation.suite import load_suite; from mogen.evaluation.probes import run_probes
    suite = load_suite("recipes/eval/toy_quick.yaml")
    metrics.update(run_probes(policy, suite))           # {"probe/<probe>/<metric>": float}
    alarm = HackingAlarm.from_suite(suite); warning = alarm.update(metrics)
"""
