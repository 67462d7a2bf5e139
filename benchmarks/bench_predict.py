"""Prediction speed on this machine, in one run (not a test; run by hand).

Prints: the float32 and bfloat16 matmul peaks (GFLOP/s); the U-Net's achieved
GFLOP/s on 256x256 and 512x512 slices; ms per 512x512 slice through the full
predictor (normalisation, tiling, blending, argmax) for the default
architecture; and the ratio against MONAI's ``sliding_window_inference`` with
the same network, tile and overlap (MONAI is installed for this only:
``make bench`` does it).

    python benchmarks/bench_predict.py [--repeats 5] [--threads N]

``--fine-tuned W [W ...]`` prints only ms per 512x512 slice of the bundled
model as a fine-tuning round leaves it (instance norm, widened to W
channels; 12 = not widened), with the model's instance norm (a group norm of
one channel per group) and with torch's own instance-norm kernel.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from napari_unet.core.config import ModelConfig, UNetConfig
from napari_unet.core.device import cpu_has_native_bf16
from napari_unet.core.model import conv_flops, count_parameters
from napari_unet.core.predict import predict, prepare_network
from napari_unet.core.weights import new_model


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up (oneDNN primitive creation)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def matmul_peak(dtype: torch.dtype, n: int, repeats: int) -> float:
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    seconds = best_time(lambda: a @ b, repeats)
    return 2 * n**3 / seconds / 1e9


def fine_tuned_speed(widths: list[int], repeats: int) -> None:
    """ms per 512x512 slice of the bundled model converted to instance norm and
    widened, as a fine-tuning round returns it, with both instance-norm kernels."""
    import copy

    from torch import nn

    from napari_unet.core.model import InstanceNorm, to_instance_norm, widen
    from napari_unet.core.weights import SegmentationModel, load_model

    base = load_model(None, "cpu")
    stack = np.random.default_rng(0).integers(0, 4096, (4, 512, 512)).astype(np.uint16)
    print(f"bundled {base.name}, auto precision ({'bfloat16' if cpu_has_native_bf16() else 'float32'} here), "
          f"{torch.get_num_threads()} threads")
    for width in widths:
        net = to_instance_norm(base.net)
        if width > net.config.base_channels:
            net = widen(net, width)
        times = {}
        for kernel in ("group norm (the model's)", "torch instance norm"):
            variant = copy.deepcopy(net)
            if kernel.startswith("torch"):
                for module in variant.modules():
                    if type(module) is InstanceNorm:
                        module.__class__ = nn.InstanceNorm2d
            model = SegmentationModel(config=base.config.replace(architecture=variant.config), net=variant,
                                      source="bench")
            times[kernel] = best_time(lambda m=model: predict(stack, m, device="cpu"), repeats) / len(stack)
        print(f"width {width}: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in times.items()) + " per slice")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-monai", action="store_true")
    parser.add_argument("--fine-tuned", type=int, nargs="+", default=None, metavar="W",
                        help="only: ms per 512x512 slice of the bundled model as a round leaves it, widened to W")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fine_tuned:
        fine_tuned_speed(args.fine_tuned, args.repeats)
        return

    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16: {cpu_has_native_bf16()}")
    fp32_peak = matmul_peak(torch.float32, 2048, args.repeats)
    bf16_peak = matmul_peak(torch.bfloat16, 1024, max(1, args.repeats // 2))
    print(f"matmul peak: float32 {fp32_peak:.0f} GFLOP/s, bfloat16 {bf16_peak:.0f} GFLOP/s")

    config = ModelConfig(name="bench", architecture=UNetConfig())
    model = new_model(config, seed=0)
    model.net.eval()
    arch = config.architecture
    print(f"default U-Net: depth {arch.depth}, base {arch.base_channels} channels, "
          f"{count_parameters(model.net) / 1e6:.2f} M parameters")

    net = prepare_network(model.net, torch.device("cpu"))
    for size in (256, 512):
        x = torch.randn(1, arch.in_channels, size, size).contiguous(memory_format=torch.channels_last)
        flops = conv_flops(arch, size, size)
        with torch.inference_mode():
            t32 = best_time(lambda x=x: net(x), args.repeats)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                t16 = best_time(lambda x=x: net(x), 1)
        print(f"U-Net {size}x{size}: {flops / 1e9:.1f} GFLOP; float32 {t32 * 1e3:.0f} ms = {flops / t32 / 1e9:.0f} GFLOP/s "
              f"({flops / t32 / 1e9 / fp32_peak:.0%} of fp32 matmul peak); bfloat16 {t16 * 1e3:.0f} ms = "
              f"{flops / t16 / 1e9:.0f} GFLOP/s ({flops / t16 / 1e9 / bf16_peak:.0%} of bf16 matmul peak)")

    image = np.random.default_rng(0).integers(0, 4096, (512, 512)).astype(np.uint16)
    options = dict(tile=512, overlap=0.125, device="cpu")
    ours = best_time(lambda: predict(image, model, precision="auto", **options), args.repeats)
    ours32 = best_time(lambda: predict(image, model, precision="float32", **options), args.repeats)
    print(f"napari-unet predict, one 512x512 slice (auto precision): {ours * 1e3:.0f} ms (float32: {ours32 * 1e3:.0f} ms)")

    stack = np.random.default_rng(0).integers(0, 4096, (8, 512, 512)).astype(np.uint16)
    per_slice = best_time(lambda: predict(stack, model, **options), 1) / len(stack)
    print(f"napari-unet predict, 8-slice 512x512 stack: {per_slice * 1e3:.0f} ms per slice")

    if args.no_monai:
        return
    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        print("MONAI not installed: skipped the comparison (pip install monai)")
        return
    plain = model.net.eval()
    from napari_unet.core.normalize import intensity_ranges, normalize_slice

    def monai_path():
        ranges = intensity_ranges(image, config.input, False)
        x = torch.from_numpy(normalize_slice(image, ranges, 1, config.input))[None]
        with torch.inference_mode():
            logits = sliding_window_inference(x, (512, 512), 4, plain, overlap=0.125, mode="gaussian")
        return logits.argmax(1)

    theirs = best_time(monai_path, args.repeats)
    print(f"MONAI sliding_window_inference (float32, same net/tile/overlap): {theirs * 1e3:.0f} ms "
          f"-> napari-unet is {theirs / ours:.2f}x faster")
    x = np.random.default_rng(1).integers(0, 4096, (1000, 1000)).astype(np.uint16)
    big_ours = best_time(lambda: predict(x, model, **options), 1)

    def monai_big():
        ranges = intensity_ranges(x, config.input, False)
        t = torch.from_numpy(normalize_slice(x, ranges, 1, config.input))[None]
        with torch.inference_mode():
            return sliding_window_inference(t, (512, 512), 4, plain, overlap=0.125, mode="gaussian").argmax(1)

    big_theirs = best_time(monai_big, 1)
    print(f"1000x1000 image, 512 tiles: napari-unet {big_ours * 1e3:.0f} ms, MONAI {big_theirs * 1e3:.0f} ms "
          f"-> {big_theirs / big_ours:.2f}x")


if __name__ == "__main__":
    main()
