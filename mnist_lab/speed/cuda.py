"""The training step as one CUDA graph, replayed: what makes batch-64 training fast on a GPU.

At batch 64 these models are bound by kernel launches on a GPU, not by arithmetic: a step is
30-300 small kernels, each a few microseconds of Python and driver work. `StepGraph` records
one whole full-batch step (the batch gather from the GPU-resident data, the augmentation, the
forward and backward pass, the optimizer step, the loss and accuracy sums) and replays it
⌊n / batch⌋ times an epoch; the last, partial batch runs the same function eagerly.

What capture needs, and where it comes from:
- fixed addresses: the epoch's order and the step's position live in device tensors the step
  reads (`order`, `position`), and gradients are zeroed, not freed;
- a capturable optimizer whose learning rate is a tensor, so StepLR's updates reach the graph
  (`captured_optimizer`);
- random draws from the run's generator, registered with the graph, which advances it on every
  replay (dropout's from CUDA's default one, seeded by `torch.manual_seed`);
- warm-up steps before capture (allocations, cuDNN's choices, the optimizer's state), undone
  afterwards so that the first real step starts from the model as initialised.

The step itself is the trainer's (`train.TrainStep`), the one the eager loop runs, NaN check
included (`train.check_finite`, once an epoch here). The trainer uses graphs on CUDA's fast path
(`RunSpec.cuda_graphs`; `mnist-lab train --no-cuda-graphs` keeps the eager loop). On the CPU,
`capture=False` runs the same epochs eagerly, which is how the tests check it there; on a GPU
they also replay captured graphs.
"""

from __future__ import annotations

import torch
from torch import nn

WARMUP_STEPS = 3  # PyTorch's CUDA-graph examples warm up a few iterations on a side stream


class CapturableSGD(torch.optim.Optimizer):
    """Plain SGD (no momentum, as the report's) with the learning rate as a tensor: torch's own
    SGD turns a tensor learning rate into a Python number, a host sync a graph cannot hold."""

    def __init__(self, params, lr: torch.Tensor, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            torch._foreach_add_(params, torch._foreach_mul(grads, group["lr"]), alpha=-1)


def captured_optimizer(model: nn.Module, optimizer: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The experiment's optimizer in a form a CUDA graph can hold: capturable, its learning rate a
    tensor on the device that StepLR updates in place (torch's schedulers `fill_` a tensor lr)."""
    device = next(model.parameters()).device
    rate = torch.tensor(lr, device=device)
    if optimizer == "sgd":
        return CapturableSGD(model.parameters(), lr=rate, weight_decay=weight_decay)
    optimizer_class = torch.optim.Adam if optimizer == "adam" else torch.optim.AdamW
    return optimizer_class(model.parameters(), lr=rate, weight_decay=weight_decay, capturable=True)


class StepGraph:
    """`train.TrainStep` on full batches, captured once as a CUDA graph and replayed."""

    def __init__(self, step, *, batch_size: int, capture: bool = True):
        device = step.train_set.labels.device
        self.step, self.batch_size = step, batch_size
        self.order = torch.zeros(len(step.train_set), dtype=torch.long, device=device)
        self.position = torch.zeros((), dtype=torch.long, device=device)
        self.offsets = torch.arange(batch_size, device=device)
        self.graph = self._capture() if capture else None

    def _full_batch(self) -> None:
        self.step(self.order.index_select(0, self.offsets + self.position))
        self.position += self.batch_size

    def run_epoch(self, order: torch.Tensor) -> tuple[float, float]:
        """Train one epoch in the given order; returns (mean loss, accuracy in percent)."""
        n = len(order)
        self.step.start_epoch()
        self.order.copy_(order)
        self.position.zero_()
        full, rest = divmod(n, self.batch_size)
        for _ in range(full):
            self.graph.replay() if self.graph is not None else self._full_batch()
        if rest:
            self.step(order[full * self.batch_size:])
        return self.step.totals(n)

    def _capture(self) -> torch.cuda.CUDAGraph:
        step = self.step
        step.model.train()
        saved = [t.detach().clone() for t in self._state()]
        saved_optimizer = {(id(p), key): value.clone() for p, state in step.optimizer.state.items()
                           for key, value in state.items() if isinstance(value, torch.Tensor)}  # a resumed run's
        saved_generator = step.generator.get_state()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self._full_batch()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # The run's own generator, not CUDA's default: each replay advances it as an eager step would.
        graph.register_generator_state(step.generator)
        with torch.cuda.graph(graph):
            self._full_batch()
        with torch.no_grad():  # undo the warm-up: the weights, BatchNorm's statistics, the optimizer's state
            for tensor, value in zip(self._state(), saved):
                tensor.copy_(value)
            for parameter, state in step.optimizer.state.items():
                for key, value in state.items():
                    if isinstance(value, torch.Tensor):  # as it was, or as new (zeros: Adam's first step)
                        before = saved_optimizer.get((id(parameter), key))
                        value.copy_(before) if before is not None else value.zero_()
        step.generator.set_state(saved_generator)
        return graph

    def _state(self) -> list[torch.Tensor]:
        return [*self.step.model.parameters(), *self.step.model.buffers()]
