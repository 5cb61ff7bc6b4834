"""Time a PyTorch twin's step: the other side of `python -m archbench.checks.pytorch_ab`.

Runs in a Python with PyTorch and, for the Transformer families, transformers and timm (the
`reference` extra; no archbench): the driver starts `TORCH_PYTHON pytorch_server.py` and
talks to it in JSON lines on stdin and stdout:

- {"op": "prepare", "arch", "fields", "input", "task", "mode": "train"|"infer", "batch",
  "threads": N or null, "min_round_s"}: build the twin (pytorch_twins.TWINS), a random
  batch and, for train, AdamW at 1e-3; warm up, and grow the steps of a round until one
  lasts min_round_s. Answers {"params": trainable parameters, "steps_per_round", "torch",
  "threads"}.
- {"op": "block", "target_s"}: rounds for about target_s seconds (at least 3); answers
  {"step_s": the median round time per step}.
- A failure answers {"error": "one line"}.

A train step is forward, cross-entropy (next-token for a language model; Mixtral adds its
router's load-balancing loss), backward, the accuracy and the gradients' global norm, and
AdamW's update, as archbench's train step (the metrics stay tensors, as archbench's stay on
the device: neither step waits for them); infer is a forward pass under
torch.inference_mode.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time

import torch
from pytorch_twins import TWINS
from torch import nn


def make_batch(spec: dict, batch: int, generator: torch.Generator):
    """A random batch of archbench's input spec: (x, targets), NCHW images."""
    kind, shape = spec["input"]["kind"], spec["input"]["shape"]
    if kind == "tokens":
        x = torch.randint(0, spec["input"]["vocab_size"], (batch, *shape), generator=generator)
    else:
        x = torch.randn((batch, *shape), generator=generator)
    if kind == "image":
        x = x.permute(0, 3, 1, 2).contiguous()
    if spec["task"] == "lm":
        return x, x
    return x, torch.randint(0, spec["fields"]["num_classes"], (batch,), generator=generator)


def _loss(model: nn.Module, spec: dict, x, y):
    """(loss, logits, labels): the logits and labels of every predicted position, flat."""
    out = model(x)
    logits = getattr(out, "logits", out)
    if spec["task"] == "lm":  # next-token: positions 0..T-2 predict 1..T-1
        logits, y = logits[:, :-1].reshape(-1, logits.shape[-1]), y[:, 1:].reshape(-1)
    loss = nn.functional.cross_entropy(logits, y)
    aux = getattr(out, "aux_loss", None)  # Mixtral's load balancing, already weighted
    return (loss if aux is None else loss + aux), logits, y


class Stepper:
    """One cell's twin: its step, and rounds of steps timed."""

    def __init__(self, request: dict):
        torch.manual_seed(0)
        if request.get("threads"):
            torch.set_num_threads(int(request["threads"]))
        spec, self.mode = request, request["mode"]
        if request["arch"] not in TWINS:
            raise ValueError(f"no PyTorch twin of {request['arch']}; have {', '.join(TWINS)}")
        self.model = TWINS[request["arch"]](request["fields"], request).float()
        self.x, self.y = make_batch(spec, request["batch"], torch.Generator().manual_seed(0))
        self.params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        if self.mode == "train":
            self.model.train()
            trainable = [p for p in self.model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(trainable, lr=1e-3)

            def step():
                optimizer.zero_grad(set_to_none=True)
                loss, logits, labels = _loss(self.model, spec, self.x, self.y)
                loss.backward()
                with torch.no_grad():  # the metrics archbench's train step returns
                    accuracy = (logits.argmax(-1) == labels).float().mean()
                    grad_norm = nn.utils.get_total_norm(
                        [p.grad for p in trainable if p.grad is not None]
                    )
                optimizer.step()
                return loss.detach(), accuracy, grad_norm
        else:
            self.model.eval()

            def step():
                with torch.inference_mode():
                    self.model(self.x)

        self.step, self.steps_per_round = step, 1

    def run_round(self) -> float:
        start = time.perf_counter()
        for _ in range(self.steps_per_round):
            self.step()
        return time.perf_counter() - start

    def calibrate(self, min_round_s: float) -> None:
        self.run_round()  # warm-up
        while self.steps_per_round < 10_000:
            elapsed = self.run_round()
            if elapsed >= min_round_s:
                return
            grow = min_round_s / max(elapsed, 1e-6) * 1.2
            self.steps_per_round = max(
                2 * self.steps_per_round, math.ceil(grow * self.steps_per_round)
            )

    def block(self, target_s: float) -> float:
        """The median time per step of rounds filling about target_s (at least 3)."""
        times, start = [], time.perf_counter()
        while len(times) < 3 or time.perf_counter() - start < target_s:
            times.append(self.run_round() / self.steps_per_round)
        return statistics.median(times)


def serve(stdin=sys.stdin, stdout=sys.stdout) -> None:
    stepper = None
    for line in stdin:
        request = json.loads(line)
        try:
            if request["op"] == "prepare":
                stepper = None
                stepper = Stepper(request)
                stepper.calibrate(request.get("min_round_s", 0.05))
                answer = {"params": stepper.params, "steps_per_round": stepper.steps_per_round}
                answer["torch"] = torch.__version__
                answer["threads"] = torch.get_num_threads()
            elif request["op"] == "block":
                answer = {"step_s": stepper.block(request["target_s"])}
            else:
                answer = {"error": f"unknown op {request['op']!r}"}
        except Exception as exc:  # the driver prints it in one line
            text = str(exc).strip().splitlines()
            answer = {"error": f"{type(exc).__name__}: {text[0] if text else ''}"[:300]}
        stdout.write(json.dumps(answer) + "\n")
        stdout.flush()


if __name__ == "__main__":
    serve()
