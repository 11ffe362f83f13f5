"""Checkpoint averaging: the mean of the weights of the last epochs, which often generalises better than
any one of them (Izmailov et al. 2018); the run keeps it only where it validates better."""
from __future__ import annotations


class LastEpochs:
    """The floating-point weights of the last `n` epochs, on the CPU."""

    def __init__(self, n: int):
        self.n = n
        self.kept: list[tuple[int, dict]] = []

    def add(self, epoch: int, net) -> None:
        """Keep this epoch's weights (every epoch: the plan may still grow), forgetting the oldest."""
        self.kept.append((epoch, {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()
                                  if v.is_floating_point()}))
        del self.kept[:-self.n]

    @property
    def epochs(self) -> list[int]:
        return [e for e, _ in self.kept]

    def load_mean_into(self, net) -> None:
        """Load the mean of the kept weights into `net` (its other state, such as batch counts, stays)."""
        mean = {k: sum(s[k].double() for _, s in self.kept) / len(self.kept) for k in self.kept[0][1]}
        net.load_state_dict({k: mean[k].to(v.dtype) if k in mean else v for k, v in net.state_dict().items()})
