"""torchrun target of test_two_process_ddp_on_cpu: scripts/train.py's main, with each rank writing the window
indices it drew and a digest of its weights (parameters) once training ends to PROBE_DIR/rank<N>.json."""
import hashlib
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [os.path.join(ROOT, "scripts"), ROOT]

from landcover_plugin.core.training import loader, trainer  # noqa: E402

drawn = []
_batches = loader._StepBatches.__iter__


def _recording(self):
    for indices in _batches(self):
        drawn.extend(indices)
        yield indices


_finish = trainer._Run._finish


def _finish_and_record(self):
    weights = b"".join(p.detach().cpu().numpy().tobytes() for _, p in sorted(self.net.named_parameters()))
    with open(os.path.join(os.environ["PROBE_DIR"], f"rank{self.rank}.json"), "w") as fh:
        json.dump({"weights": hashlib.sha256(weights).hexdigest(), "drawn": drawn, "steps": self.step}, fh)
    _finish(self)


loader._StepBatches.__iter__ = _recording
trainer._Run._finish = _finish_and_record

import train  # noqa: E402

import _common  # noqa: E402

_common.run_main(train.main)
