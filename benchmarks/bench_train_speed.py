"""Where the time of a bundled-model training step goes, on this machine.

    python benchmarks/bench_train_speed.py --steps 12

Times, for the training recipe of ``scripts/train_bundled.py`` (batch 4,
256x256 crops, the multi-scale canvas mix): simulating one scan (per canvas
scale), normalising it, assembling a batch from the pool, and one optimiser
step of the network (forward + backward + AdamW) with 1 and 2 threads,
channels-first and channels-last. Prints steps per second for the old recipe
(4 fresh 256 px scans per step, channels-first) and the new one (2 fresh
multi-scale scans per step, channels-last, the faster thread count), and the
network's share of the float32 matmul peak (training FLOPs = 3x forward).
Run on a quiet machine; not part of the tests.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--samples", type=int, default=12, help="simulated scans per canvas scale")
    args = p.parse_args(argv)

    from napari_unet.core.datasets import SimulatedBatches, simulated_sample
    from napari_unet.core.losses import masked_ce_dice_loss
    from napari_unet.core.model import conv_flops
    from napari_unet.core.simulate import SimulatorConfig
    from napari_unet.core.weights import load_model

    model = load_model(None, "cpu")
    config = model.config
    sim = SimulatorConfig(nerve_width=(1.0, 16.0))
    rng = np.random.default_rng(0)
    torch.set_num_threads(1)
    per_scale = {}
    for scale in (1.0, 1.5, 2.0, 3.0):
        times = [_timed(lambda s=scale: simulated_sample(rng, config, (256, 256), None, sim, canvas=s))
                 for _ in range(args.samples)]
        per_scale[scale] = float(np.median(times))
        print(f"simulate + normalise + crop, canvas {scale:g}x: {per_scale[scale] * 1e3:.0f} ms per scan")
    mix = {1.0: 0.4, 1.5: 0.25, 2.0: 0.25, 3.0: 0.1}
    sim_mix = sum(per_scale[s] * w for s, w in mix.items())
    print(f"multi-scale mix: {sim_mix * 1e3:.0f} ms per scan on average")

    sampler = SimulatedBatches(config, (256, 256), pool_size=32, fresh=1, sim_config=sim)
    sampler(rng, 32)  # fill the pool
    sampler.fresh = 0  # a full pool and no new scans: what is left is batch assembly (flips, stacking)
    assemble = float(np.median([_timed(lambda: sampler(rng, 4)) for _ in range(10)]))
    print(f"batch assembly from the pool: {assemble * 1e3:.1f} ms")
    x, y, m = sampler(rng, 4)
    xb, yb, mb = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(m)
    flops = 3 * 4 * conv_flops(config.architecture, 256, 256)
    peak = {}
    results = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        peak[threads] = matmul_peak()
        for layout in ("channels-first", "channels-last"):
            net = load_model(None, "cpu").net.train()
            inp = xb
            if layout == "channels-last":
                net = net.to(memory_format=torch.channels_last)
                inp = xb.contiguous(memory_format=torch.channels_last)
            opt = torch.optim.AdamW(net.parameters(), lr=1e-4)

            def step(net=net, inp=inp, opt=opt):
                opt.zero_grad(set_to_none=True)
                loss = masked_ce_dice_loss(net(inp), yb, mb)
                loss.backward()
                opt.step()

            step()
            t = float(np.median([_timed(step) for _ in range(args.steps)]))
            results[(threads, layout)] = t
            print(f"network step, {threads} thread(s), {layout}: {t * 1e3:.0f} ms = {flops / t / 1e9:.0f} GFLOP/s "
                  f"({flops / t / 1e9 / peak[threads]:.0%} of the {peak[threads]:.0f} GFLOP/s fp32 matmul peak)")
    old = 4 * per_scale[1.0] + results[(2, "channels-first")] + assemble
    best_net = min(results[(t, "channels-last")] for t in (1, 2))
    new = 2 * sim_mix + best_net + assemble
    print(f"old recipe (4 fresh 256 px scans, channels-first, 2 threads): {old * 1e3:.0f} ms = {1 / old:.2f} steps/s "
          f"(network {results[(2, 'channels-first')] / old:.0%} of the step)")
    print(f"new recipe (2 fresh multi-scale scans, channels-last): {new * 1e3:.0f} ms = {1 / new:.2f} steps/s "
          f"(network {best_net / new:.0%} of the step)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
