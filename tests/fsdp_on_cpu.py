"""Run the `mogen` CLI under accelerate's FSDP engine on CPU processes (gloo), for tests/test_data_parallel.py.

accelerate selects FSDP only on accelerator devices: a CPU launch of an FSDP config (ACCELERATE_USE_CPU=1) becomes
plain data parallel (MULTI_CPU) with the FSDP plugin built and then dropped. This launcher changes only that
choice, after accelerate has built its state from the launcher's environment: everything else (the plugin read
from the config, `accelerator.prepare` sharding the transformer with torch's FSDP2 `fully_shard`, the gloo
collectives) is accelerate and torch as they run on GPUs. After `prepare` each process prints how many of the
transformer's parameters are DTensor shards, so the test can check that the model really was sharded.

A process ends with os._exit once mogen has returned: about one run in ten, a process that completed its run
(process group destroyed by accelerator.end_training) then aborted during interpreter teardown with "terminate
called without an active exception" (SIGABRT). Seen only with FSDP2 over gloo, which accelerate never sets up for
users; the exit code is mogen's own.

    ACCELERATE_USE_CPU=1 accelerate launch --config_file recipes/accelerate/fsdp.yaml --num_processes 2 \
        tests/fsdp_on_cpu.py align --recipe R
"""

from __future__ import annotations

import os
import runpy
import sys

from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType
from torch.distributed.tensor import DTensor

_state_init = AcceleratorState.__init__
_prepare = Accelerator.prepare


def _state_init_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs) -> None:
    _state_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if self.distributed_type == DistributedType.MULTI_CPU and fsdp_plugin is not None:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin


def _prepare_and_report(self: Accelerator, *args, **kwargs):
    prepared = _prepare(self, *args, **kwargs)
    params = list(prepared[0].parameters())
    shards = sum(isinstance(p, DTensor) for p in params)
    print(f"rank {self.process_index}: {shards} of {len(params)} transformer parameters are DTensor shards", flush=True)
    return prepared


AcceleratorState.__init__ = _state_init_with_fsdp_on_cpu
Accelerator.prepare = _prepare_and_report
sys.argv = ["mogen", *sys.argv[1:]]
try:
    runpy.run_module("mogen", run_name="__main__", alter_sys=True)
    code = 0
except SystemExit as exit_:  # the CLI always ends with sys.exit
    code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
