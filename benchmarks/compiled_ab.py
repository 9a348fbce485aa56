"""One e2e model's forward on five paths, interleaved call by call: a check of e2e.py's rows.

``python benchmarks/compiled_ab.py --model flux [--rounds 7] [--calls 10]``: the original model
eager and compiled, the binarized model eager and compiled, and the binarized graph with
float-SDPA sites compiled (what the rewrite alone costs), each called ``calls`` times per round
in turn, on CPU (float32, the small size, torch's default threads). Prints the median and the
minimum per path and their ratios to the original compiled. What it does not: profile, or time
anything but the whole forward (``benchmarks/e2e.py`` does both, path by path).
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

import binattn
from binattn.bench import models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="flux", choices=sorted(models.MODELS))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=10)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    built = models.build(args.model, "small", torch.device("cpu"), torch.float32)
    example = dict(example_kwargs=built.kwargs or None, copy=True)
    binary = binattn.binarize(built.model, built.args, **example)
    float_sites = binattn.binarize(built.model, built.args,
                                   binattn.BinarizeConfig(mode="float"), **example)
    paths = {"original compiled": torch.compile(built.model),
             "binarized compiled": torch.compile(binary),
             "float-site compiled": torch.compile(float_sites),
             "binarized eager": binary, "original eager": built.model}
    times: dict[str, list[float]] = {name: [] for name in paths}
    with torch.no_grad():
        for fn in paths.values():
            for _ in range(5):
                fn(*built.args, **built.kwargs)
        for _ in range(args.rounds):
            for name, fn in paths.items():
                for _ in range(args.calls):
                    start = time.perf_counter()
                    fn(*built.args, **built.kwargs)
                    times[name].append((time.perf_counter() - start) * 1e3)
    base = times["original compiled"]
    print(f"{args.model}: {args.rounds} rounds x {args.calls} calls, "
          f"{torch.get_num_threads()} threads")
    for name, t in times.items():
        print(f"{name:20s} median {statistics.median(t):7.2f} ms "
              f"x{statistics.median(base) / statistics.median(t):.3f}   "
              f"min {min(t):7.2f} ms x{min(base) / min(t):.3f}")


if __name__ == "__main__":
    main()
