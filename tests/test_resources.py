"""Cost measurement against hand-computed figures."""

import torch

from qat.resources import (
    PeakTensorMemory,
    count_parameters,
    interleaved_times,
    measure,
    step_flops,
)


def test_peak_memory_counts_live_tensors_once():
    a0 = torch.randn(300, 500)
    with PeakTensorMemory() as tracker:
        a = a0 * 2  # 600 kB
        b = a + 1  # 600 kB, both alive: 1.2 MB
        del b
        v = a.view(-1)  # a view: same storage, no new bytes
        c = v * 3  # 600 kB with a: 1.2 MB again, never 1.8 MB
        del c
    assert tracker.peak == 2 * 300 * 500 * 4
    assert tracker.current == 300 * 500 * 4  # only `a` is still alive
    del a, v


def test_linear_step_flops_and_memory():
    batch, n_in, n_out = 16, 64, 32
    layer = torch.nn.Linear(n_in, n_out, bias=False)
    x = torch.randn(batch, n_in, requires_grad=False)

    def step():
        layer.zero_grad(set_to_none=True)
        layer(x).square().sum().backward()

    # forward x@W^T and backward grad_W = g^T x: 2 matmuls of 2*B*in*out flops (no grad_x).
    assert step_flops(step) == 2 * (2 * batch * n_in * n_out)
    cost = measure(layer, step, warmup=1, repeats=2)
    assert cost["params"] == count_parameters(layer) == n_in * n_out
    # The weight gradient (in*out floats) and the output (B*out floats) are both alive at once.
    assert cost["peak_memory_bytes"] >= 4 * (n_in * n_out + batch * n_out)
    assert cost["step_time_s"] > 0


def test_interleaved_times_run_every_callable_once_per_round_in_a_fresh_order():
    calls: list[str] = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abcde"}
    rounds: list[int] = []
    times = interleaved_times(fns, repeats=6, warmup=2, seed=1,
                              after_round=lambda: rounds.append(len(calls)))  # fmt: skip
    assert rounds == [5 * i for i in range(1, 9)]  # after each of 2 warm-up and 6 timed rounds
    timed = [calls[i : i + 5] for i in range(10, 40, 5)]
    assert all(sorted(r) == list("abcde") for r in timed)
    assert len({tuple(r) for r in timed}) > 1  # the order changes from round to round
    assert set(times) == set(fns) and all(len(t) == 6 and min(t) >= 0 for t in times.values())
