"""Inference speed of a label completer, next to the classical baselines, in one run.

Measures images/s of

- ``api``: the public path, ``completer.complete_batch(images, labels, batch_size=b)`` on lists of
  uint8 ``[3, H, W]`` image tensors and int64 ``[H, W]`` labels (255 = missing), results back on the CPU;
- ``raw``: ``torch_label_mae.inference.complete_tensors`` on batches stacked and moved to the device
  beforehand, under ``torch.inference_mode`` (and bf16 autocast on CUDA, as the API does), so the
  API's overhead (checks, conversions, stacking, transfers, copies back) is the difference;
- ``api-compiled`` / ``raw-compiled`` with ``--compile`` (the model wrapped in ``torch.compile``);
- ``nearest`` (scipy nearest fill) and ``rw`` (skimage random walker, beta 2000, mode bf) on the same
  images, from ``benchmarks/baselines.py``;
- ``transform``: ``CompleteLabels(completer)`` applied per sample inside a ``DataLoader`` with
  ``--workers`` workers, against ``complete_batch`` on the same images;

at every ``--batch-sizes`` x ``--sizes`` (W x H of the input; the model itself always runs at its
config size) x ``--devices``. Warm-up runs are excluded; every figure is the median of ``--repeats``
timings. Also reports FLOPs per image of the completion (``FlopCounterMode``, batch 1), the achieved
GFLOP/s, a matmul roofline measured in the same run and peak memory. Run::

    python benchmarks/bench_inference.py --data ../shared/data/camvid --json bench.json
    python benchmarks/bench_inference.py --model runs/camvid-m0.5/best --batch-sizes 1 32 --devices cpu

See benchmarks/README.md for what each column means.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from common import (
    MISSING,
    bench_api,
    nearest_fill,
    parse_size,
    random_walker,
    read_samples,
    real_inputs,
    rss_mib,
    size_name,
    synthetic_inputs,
    time_it,
)

from torch_label_mae.completer import PRECISIONS, LabelCompleter
from torch_label_mae.inference import complete_tensors
from torch_label_mae.transforms import CompleteLabels

RW_BETA = 2000.0
# printed under the tables and written to the JSON
NOTES = [
    "sizes are W x H of the inputs; the model runs at its config size (inputs resized inside complete_tensors)",
    "img/s = images per timing / median seconds; warm-up excluded",
    "CPU peak MiB is the process's peak RSS so far (ru_maxrss): monotone over the run, so a config shows "
    "its own peak only where it raises the figure; CUDA peak MiB is torch.cuda.max_memory_allocated per config",
    "GFLOP/img: FlopCounterMode on complete_tensors at batch 1 (matmul, conv, attention), mean over up to 4 "
    "images; batched runs pad visible tokens to the batch maximum, so they do slightly more work",
    "roofline: matmul in the precision the model computes in (float32, or bfloat16 under autocast), at the "
    "torch thread count; the roofline fraction is against that one (on the CPU the float32 one is "
    "printed too when the model runs in bfloat16)",
    "DataLoader workers run torch with 1 thread each; baselines (scipy, skimage) run single-threaded",
]


# -- inputs ---------------------------------------------------------------------------------------------
class Pairs(torch.utils.data.Dataset):
    """``(image, label)`` pairs, passed through a joint ``transforms(image, label)``."""

    def __init__(self, images, labels, transforms=None):
        self.images, self.labels, self.transforms = images, labels, transforms

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        image, label = self.images[i], self.labels[i]
        if self.transforms is not None:
            image, label = self.transforms(image, label)
        return image, label


# -- timing helpers ---------------------------------------------------------------------------------------
def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return rss_mib()


def roofline(device: torch.device, n: int, repeats: int, dtype: torch.dtype) -> dict:
    """Matmul GFLOP/s of an n x n ``dtype`` matmul on ``device`` (current CPU thread count)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    inner = 20 if device.type == "cuda" else 1

    def run():
        for _ in range(inner):
            torch.mm(a, b)

    secs = time_it(run, repeats, run, device)
    flops = 2.0 * n**3 * inner
    med = statistics.median(secs)
    return dict(
        device=device.type,
        dtype=str(dtype).replace("torch.", ""),
        n=n,
        matmuls_per_timing=inner,
        threads=torch.get_num_threads(),
        seconds=secs,
        gflops=flops / med / 1e9,
    )


def flops_per_image(completer: LabelCompleter, images, labels, k: int = 4) -> tuple[float, int]:
    """FLOPs of ``complete_tensors`` at batch 1, averaged over the first ``k`` images (the encoder only
    sees visible patches, so the count depends on the holes). Matmuls, convolutions and attention."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    # torch's table only knows the CUDA attention kernels; on the CPU the mode sees the composite op (or the
    # CPU flash kernel): count them the same way. A mode sees one level per call, so nothing is counted twice.
    custom = {}
    for name in ("scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu"):
        op = getattr(torch.ops.aten, name, None)
        if op is not None:
            custom[op] = sdpa_flop
    dev = completer.device
    counts = []
    for image, label in list(zip(images, labels, strict=True))[:k]:
        img, lab = image.unsqueeze(0).to(dev), label.unsqueeze(0).to(dev)
        with FlopCounterMode(display=False, custom_mapping=custom) as fc:
            complete_tensors(completer.model, img, lab, lab == MISSING)
        counts.append(fc.get_total_flops())
    return float(np.mean(counts)), len(counts)


# -- machine ----------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int, devices) -> dict:
    import scipy

    info = dict(
        python=platform.python_version(),
        platform=platform.platform(),
        torch=torch.__version__,
        numpy=np.__version__,
        scipy=scipy.__version__,
        cpu_model=cpu_model(),
        cpu_count=os.cpu_count(),
        cpus_usable=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        torch_threads=threads,
        torch_interop_threads=torch.get_num_interop_threads(),
        loadavg_start=os.getloadavg() if hasattr(os, "getloadavg") else None,
        cuda_available=torch.cuda.is_available(),
    )
    try:
        import skimage

        info["skimage"] = skimage.__version__
    except ImportError:
        info["skimage"] = None
    if any(d.type == "cuda" for d in devices):
        info.update(
            cuda=torch.version.cuda,
            device_name=torch.cuda.get_device_name(0),
            device_capability=list(torch.cuda.get_device_capability(0)),
            device_memory_gib=torch.cuda.get_device_properties(0).total_memory / 2**30,
            allow_tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        )
    else:
        info["device_name"] = info["cpu_model"]
    return info


# -- the benchmark ------------------------------------------------------------------------------------------
def load_completer(name: str, device: torch.device, precision: str) -> LabelCompleter:
    try:
        return LabelCompleter.from_pretrained(name, device=device, precision=precision)
    except Exception as e:  # HubError, missing folder, ...
        raise SystemExit(
            f"cannot load completer {name!r}: {e}\n(pass --model <folder with config.json + model.safetensors>)"
        ) from None


def try_compile(completer: LabelCompleter, image, label):
    """``torch.compile(completer.model)`` checked on one sample -> ``(module or None, error or None)``."""
    try:
        compiled = torch.compile(completer.model)
        dev = completer.device
        img, lab = image.unsqueeze(0).to(dev), label.unsqueeze(0).to(dev)
        amp = completer.autocast_dtype()
        with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
            complete_tensors(compiled, img, lab, lab == MISSING)
        return compiled, None
    except Exception as e:  # no compiler, unsupported op, ...
        return None, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


def bench_raw(model, device, amp, images, labels, b, repeats, warmup):
    chunks = []
    for s in range(0, len(images), b):
        img = torch.stack(images[s : s + b]).to(device)
        lab = torch.stack(labels[s : s + b]).to(device)
        chunks.append((img, lab, lab == MISSING))

    def run_chunks(cs):
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            for img, lab, miss in cs:
                complete_tensors(model, img, lab, miss)

    def warm():
        for _ in range(warmup):
            run_chunks(chunks[:1])

    return time_it(lambda: run_chunks(chunks), repeats, warm if warmup else None, device)


def bench_transform(completer, spec, device, images, labels, workers, repeats):
    """Per-sample ``CompleteLabels`` inside a DataLoader (one warm-up epoch that also starts the workers and
    loads their models, then ``repeats`` timed epochs). CPU: the ready completer, forked into the workers;
    CUDA with workers: the model name (each spawned worker loads its own copy on the GPU)."""
    ctx = None
    if device.type == "cuda" and workers > 0:
        transform, how, ctx = CompleteLabels(spec, device=str(device)), "name, spawn", "spawn"
    else:
        transform, how = CompleteLabels(completer), "object" + (", fork" if workers else ", main process")
    loader = torch.utils.data.DataLoader(
        Pairs(images, labels, transform),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        persistent_workers=workers > 0,
        multiprocessing_context=ctx,
    )

    def epoch():
        for _ in loader:
            pass

    secs = time_it(epoch, repeats, epoch, torch.device("cpu"))
    return secs, how


def run_baseline(method, images, labels, repeats):
    missing = [lab == MISSING for lab in labels]
    floats = [im.float() / 255.0 for im in images]  # as evaluate() passes them; converted outside the timing

    def run():
        method(floats, labels, missing)

    def warm():
        method(floats[:1], labels[:1], missing[:1])

    return time_it(run, repeats, warm, torch.device("cpu"))


def row(**kw) -> dict:
    secs = kw.get("seconds")
    if secs:
        med = statistics.median(secs)
        kw.update(median_s=med, images_per_s=kw["images"] / med, ms_per_image=1000 * med / kw["images"])
    return kw


def fmt(v, spec: str, width: int) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-".rjust(width)
    return format(v, spec).rjust(width)


def print_table(rows) -> None:
    head = (
        f"{'device':6s} {'size':>8s} {'path':13s} {'batch':>5s} {'img/s':>9s} {'ms/img':>8s} {'vs raw':>7s} "
        f"{'GFLOP/img':>9s} {'GFLOP/s':>8s} {'roofline':>8s} {'peak MiB':>9s}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        if r.get("error"):
            print(f"{r['device']:6s} {r['size']:>8s} {r['path']:13s} {str(r.get('batch') or '-'):>5s}  {r['error']}")
            continue
        frac = r.get("roofline_fraction")
        print(
            f"{r['device']:6s} {r['size']:>8s} {r['path']:13s} {str(r.get('batch') or '-'):>5s} "
            f"{fmt(r.get('images_per_s'), '.1f', 9)} {fmt(r.get('ms_per_image'), '.2f', 8)} "
            f"{fmt(r.get('vs_raw'), '.2f', 7)} {fmt(r.get('gflop_per_image'), '.3f', 9)} "
            f"{fmt(r.get('achieved_gflops'), '.1f', 8)} {fmt(None if frac is None else 100 * frac, '.1f', 7)}"
            f"{'%' if frac is not None else ' '} {fmt(r.get('peak_mib'), '.0f', 9)}"
        )


def parse_args(argv=None) -> tuple[argparse.Namespace, list[torch.device]]:
    """Parse and check the command line -> ``(options, devices to run on)``."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="camvid-m0.5", help="registered name, Hub repo id or local folder")
    ap.add_argument("--data", help="dataset folder (<data>/<split>/images, labels); synthetic inputs without it")
    ap.add_argument("--split", default="val")
    ap.add_argument("--sizes", type=parse_size, nargs="+", default=[(224, 224), (360, 480)], metavar="WxH")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 128])
    ap.add_argument("--devices", nargs="+", choices=["cpu", "cuda"], help="default: cpu, and cuda when available")
    ap.add_argument("--images", type=int, help="images per timing run (default: the largest batch size)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per figure; the median is reported")
    ap.add_argument("--warmup", type=int, default=1, help="untimed warm-up batches before each figure")
    ap.add_argument("--ratio", type=float, default=0.5, help="fraction of patches / blocks hidden")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rw-images", type=int, default=8, help="images for the random walker (slow)")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    ap.add_argument("--compile", action="store_true", help="also time the model wrapped in torch.compile")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers for the transform path")
    ap.add_argument("--transform-images", type=int, help="images for the transform path (default: --images)")
    ap.add_argument("--transform-batch", type=int, default=32, help="complete_batch batch size it is compared to")
    ap.add_argument("--no-transform", action="store_true")
    ap.add_argument("--roofline-n", type=int, default=4096, help="matmul size of the roofline")
    ap.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="completer precision (auto: bfloat16 on CUDA and AMX CPUs, else float32)",
    )
    ap.add_argument("--json", help="write every number and the machine info here")
    a = ap.parse_args(argv)
    if min(a.batch_sizes) < 1 or a.repeats < 1 or a.warmup < 0 or a.workers < 0:
        ap.error("batch sizes and --repeats must be >= 1, --warmup and --workers >= 0")
    devices = [torch.device(d) for d in (a.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))]
    if any(d.type == "cuda" for d in devices) and not torch.cuda.is_available():
        ap.error("--devices cuda given but CUDA is not available")
    return a, devices


def describe_machine(devices: list[torch.device], n: int, repeats: int) -> dict:
    """Print the thread count, devices and machine -> the machine info."""
    print(
        f"threads: {torch.get_num_threads()} (interop {torch.get_num_interop_threads()}), devices: "
        f"{', '.join(str(d) for d in devices)}, images per timing: {n}, repeats: {repeats}"
    )
    machine = machine_info(torch.get_num_threads(), devices)
    print(
        f"torch {machine['torch']}, CPU {machine['cpu_model']} ({machine['cpus_usable']} usable), "
        f"device {machine['device_name']}, load average {machine['loadavg_start']}"
    )
    return machine


def describe_model(name: str, completer: LabelCompleter) -> int:
    """Print the model's size, working size and classes -> its parameter count."""
    cfg = completer.config
    n_params = sum(p.numel() for p in completer.model.parameters())
    print(
        f"model {name}: {n_params / 1e6:.2f}M parameters, works at {cfg.size[1]}x{cfg.size[0]}, "
        f"{cfg.num_classes} classes"
    )
    return n_params


def make_inputs(a: argparse.Namespace, cfg, n: int) -> tuple[dict, str]:
    """``n`` inputs per size from ``--data`` or synthetic, with their share missing printed -> (inputs, source)."""
    # inputs per size, the same for every path
    inputs = {}
    source = "synthetic"
    if a.data:
        info, samples = read_samples(a.data, a.split, n)
        if info.num_classes != cfg.num_classes and not cfg.class_agnostic:  # a class-agnostic model takes any ids
            raise SystemExit(f"{a.data} has {info.num_classes} classes but the model {cfg.num_classes}")
        source = f"{a.data} [{a.split}]"
        for hw in a.sizes:
            inputs[hw] = real_inputs(samples, hw, a.ratio, a.seed)
    else:
        for hw in a.sizes:
            inputs[hw] = synthetic_inputs(n, hw, cfg.num_classes, cfg.size, a.ratio, a.seed)
    for hw, (_, labels) in inputs.items():
        frac = float(np.mean([(lab == MISSING).float().mean().item() for lab in labels]))
        print(f"inputs {size_name(hw)}: {n} from {source}, {100 * frac:.1f}% of pixels missing (holes + void)")
    if max(a.batch_sizes) > n:
        print(f"note: batch sizes above --images {n} run as one batch of {n}")
    return inputs, source


def measure_flops(completer: LabelCompleter, inputs: dict) -> dict:
    """FLOPs per image, per size (keyed by the size's name)."""
    flops = {}
    for hw, (images, labels) in inputs.items():
        f, k = flops_per_image(completer, images, labels)
        flops[size_name(hw)] = dict(flops_per_image=f, gflop_per_image=f / 1e9, images_counted=k)
    return flops


def measure_rooflines(devices: list[torch.device], completers: dict, n: int, repeats: int) -> dict:
    """The matmul roofline of every device in the model's precision (and float32 on the CPU), printed."""
    rooflines = {}
    for dev in devices:
        amp = completers[dev.type].autocast_dtype() or torch.float32
        # the CPU's bfloat16 roofline only where the model runs in it: without AMX a large bfloat16
        # matmul takes minutes (CHANGELOG)
        kinds = [amp] if dev.type == "cuda" else list(dict.fromkeys([amp, torch.float32]))
        for i, dt in enumerate(kinds):
            r = roofline(dev, n, repeats, dt)
            rooflines[dev.type if i == 0 else f"{dev.type}-{r['dtype']}"] = r
            print(f"roofline {dev.type}: {r['dtype']} {r['n']}x{r['n']} matmul, {r['gflops']:.1f} GFLOP/s")
        print(f"model precision on {dev.type}: {str(amp).replace('torch.', '')}")
    return rooflines


def bench_baselines(inputs: dict, n: int, rw_images: int, repeats: int) -> list[dict]:
    """Rows of the classical baselines (CPU, on the same images): nearest fill, and the random walker."""
    baselines = []
    for hw, (images, labels) in inputs.items():
        runs = [("nearest", nearest_fill, n)]
        if rw_images > 0:
            try:
                import skimage  # noqa: F401

                runs.append((f"rw b{RW_BETA:g}", random_walker(RW_BETA), min(rw_images, n)))
            except ImportError:
                print("random walker skipped: scikit-image is not installed (pip install -e '.[bench]')")
        for name, method, k in runs:
            secs = run_baseline(method, images[:k], labels[:k], repeats)
            baselines.append(row(device="cpu", size=size_name(hw), path=name, batch=None, images=k, seconds=secs))
    return baselines


def time_path(
    completer: LabelCompleter, path: str, model, dev: torch.device, images, labels, b: int, a: argparse.Namespace
) -> list[float]:
    """Seconds per timing of one path: ``api*`` through ``complete_batch`` with ``model`` swapped in, else raw."""
    if path.startswith("api"):
        original = completer.model
        completer.model = model
        try:
            return bench_api(completer, images, labels, b, a.repeats, a.warmup)
        finally:
            completer.model = original
    amp = completer.autocast_dtype()
    return bench_raw(model, dev, amp, images, labels, b, a.repeats, a.warmup)


def bench_paths(
    a: argparse.Namespace, dev: torch.device, completer, compiled, hw, images, labels, b: int, n: int, gflop, roof
) -> list[dict]:
    """Rows of the api and raw paths (and their compiled twins) at one size and batch size, with ``vs_raw``."""
    paths = [("api", completer.model), ("raw", completer.model)]
    if compiled is not None:
        paths += [("api-compiled", compiled), ("raw-compiled", compiled)]
    rows, done = [], {}
    for path, model in paths:
        reset_peak(dev)
        try:
            secs = time_path(completer, path, model, dev, images, labels, b, a)
        except Exception as e:  # e.g. a compile failure on a new shape, out of memory
            msg = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
            rows.append(dict(device=dev.type, size=size_name(hw), path=path, batch=b, error=msg))
            continue
        r = row(
            device=dev.type,
            size=size_name(hw),
            path=path,
            batch=b,
            effective_batch=min(b, n),
            images=n,
            seconds=secs,
            peak_mib=peak_mib(dev),
            peak_kind="cuda max_memory_allocated" if dev.type == "cuda" else "process peak RSS so far",
            gflop_per_image=gflop,
            precision=str(completer.autocast_dtype() or torch.float32).replace("torch.", ""),
        )
        r["achieved_gflops"] = gflop * r["images_per_s"]
        r["roofline_fraction"] = r["achieved_gflops"] / roof
        done[path] = r
        rows.append(r)
    for path, r in done.items():
        raw = done.get("raw-compiled" if path.endswith("compiled") else "raw")
        if path.startswith("api") and raw is not None:
            r["vs_raw"] = r["images_per_s"] / raw["images_per_s"]
    return rows


def transform_vs_batch(a: argparse.Namespace, dev: torch.device, completer, hw, images, labels, n_tf: int) -> dict:
    """The transform path against ``complete_batch`` on the same ``n_tf`` images -> one transform row."""
    ti, tl = images[:n_tf], labels[:n_tf]
    secs, how = bench_transform(completer, a.model, dev, ti, tl, a.workers, a.repeats)
    t = row(images=n_tf, seconds=secs)
    bsecs = bench_api(completer, ti, tl, a.transform_batch, a.repeats, a.warmup)
    bt = row(images=n_tf, seconds=bsecs)
    return dict(
        device=dev.type,
        size=size_name(hw),
        workers=a.workers,
        transform_holds=how,
        images=n_tf,
        transform_seconds=secs,
        transform_images_per_s=t["images_per_s"],
        batch_size=a.transform_batch,
        batch_seconds=bsecs,
        batch_images_per_s=bt["images_per_s"],
        ratio=t["images_per_s"] / bt["images_per_s"],
    )


def bench_device(
    a: argparse.Namespace, dev: torch.device, completer, inputs: dict, flops: dict, roof: float, n: int, n_tf: int
) -> tuple[list[dict], list[dict], dict | None]:
    """Every path, size and batch size on one device -> ``(rows, transform rows, compile info or None)``."""
    compiled, compile_info = None, None
    if a.compile:
        first_hw = a.sizes[0]
        compiled, err = try_compile(completer, inputs[first_hw][0][0], inputs[first_hw][1][0])
        compile_info = dict(ok=compiled is not None, error=err)
        print(f"torch.compile on {dev.type}: " + ("ok" if compiled is not None else f"skipped ({err})"))
    rows, transforms = [], []
    for hw in a.sizes:
        images, labels = inputs[hw]
        gflop = flops[size_name(hw)]["gflop_per_image"]
        for b in a.batch_sizes:
            rows += bench_paths(a, dev, completer, compiled, hw, images, labels, b, n, gflop, roof)
            print(f"  done {dev.type} {size_name(hw)} batch {b}", flush=True)

        if not a.no_transform:
            transforms.append(transform_vs_batch(a, dev, completer, hw, images, labels, n_tf))
    return rows, transforms, compile_info


def print_transforms(transforms: list[dict]) -> None:
    """The transform path's table."""
    head = (
        f"{'device':6s} {'size':>8s} {'workers':>7s} {'images':>6s} {'transform img/s':>15s} "
        f"{'complete_batch img/s':>20s} {'ratio':>6s}  transform holds"
    )
    print(head)
    print("-" * len(head))
    for t in transforms:
        print(
            f"{t['device']:6s} {t['size']:>8s} {t['workers']:7d} {t['images']:6d} "
            f"{t['transform_images_per_s']:15.1f} {t['batch_images_per_s']:12.1f} (b={t['batch_size']:>3d}) "
            f"{t['ratio']:6.2f}  {t['transform_holds']}"
        )


def print_summary(
    a: argparse.Namespace, n_params: int, source: str, rooflines: dict, rows, baselines, transforms
) -> None:
    """The run's summary line, the rooflines, the tables and the notes."""
    print()
    print(
        f"model {a.model} ({n_params / 1e6:.2f}M parameters), threads {torch.get_num_threads()}, "
        f"median of {a.repeats}; ratio {a.ratio} hidden; inputs: {source}"
    )
    for d, r in rooflines.items():
        print(f"roofline {d}: {r['gflops']:.1f} GFLOP/s ({r['dtype']} {r['n']}^2 matmul)")
    print()
    print_table(rows + baselines)
    if transforms:
        print()
        print_transforms(transforms)
    for note in NOTES:
        print(f"- {note}")


def settings_of(a: argparse.Namespace, n: int, n_tf: int, devices: list[torch.device], source: str) -> dict:
    """The options as the JSON records them: sizes, image counts, devices and inputs spelled out."""
    settings = {k: v for k, v in vars(a).items() if k != "sizes"}
    settings.update(
        sizes=[size_name(hw) for hw in a.sizes],
        images=n,
        transform_images=n_tf,
        devices=[d.type for d in devices],
        inputs=source,
    )
    return settings


def write_json(path: str, **sections) -> None:
    """Write ``sections`` (one top-level key each, in order) as JSON to ``path`` and say so."""
    Path(path).write_text(json.dumps(sections, indent=2))
    print(f"wrote {path}")


def main(argv=None) -> int:
    """Time every path on every device and size, print the tables, write the JSON -> exit status 0."""
    a, devices = parse_args(argv)
    torch.set_num_threads(a.threads)
    n = a.images or max(a.batch_sizes)
    n_tf = min(a.transform_images or n, n)
    machine = describe_machine(devices, n, a.repeats)

    completers = {d.type: load_completer(a.model, d, a.precision) for d in devices}
    first = completers[devices[0].type]
    cfg = first.config
    n_params = describe_model(a.model, first)
    inputs, source = make_inputs(a, cfg, n)
    flops = measure_flops(first, inputs)
    rooflines = measure_rooflines(devices, completers, a.roofline_n, a.repeats)
    baselines = [] if a.no_baselines else bench_baselines(inputs, n, a.rw_images, a.repeats)

    rows, transforms, compile_info = [], [], {}
    for dev in devices:
        roof = rooflines[dev.type]["gflops"]
        dev_rows, dev_transforms, info = bench_device(a, dev, completers[dev.type], inputs, flops, roof, n, n_tf)
        rows += dev_rows
        transforms += dev_transforms
        if info is not None:
            compile_info[dev.type] = info

    print_summary(a, n_params, source, rooflines, rows, baselines, transforms)
    machine["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    if a.json:
        write_json(
            a.json,
            machine=machine,
            settings=settings_of(a, n, n_tf, devices, source),
            model=dict(name=a.model, parameters=n_params, config=cfg.to_dict()),
            flops=flops,
            roofline=rooflines,
            compile=compile_info or None,
            results=rows,
            baselines=baselines,
            transform=transforms,
            notes=NOTES,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
