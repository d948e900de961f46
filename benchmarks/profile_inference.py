"""Where the time of one completion batch goes: a torch profiler table of ``complete_tensors``.

Runs the shipped model (or ``--model``) on real or synthetic inputs at one batch size and size,
after warm-up, and prints the operators that take the most time, grouped into the stages of the
method (prior, encoder, decoder, head, ...), so the gap to the matmul roofline can be read off::

    python benchmarks/profile_inference.py --data ../shared/data/camvid --batch 32 --size 224x224
    python benchmarks/profile_inference.py --precision float32 --json profile.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from common import MISSING, parse_size, read_samples, real_inputs, synthetic_inputs
from torch.profiler import ProfilerActivity, profile, record_function

from torch_label_mae.completer import PRECISIONS, LabelCompleter
from torch_label_mae.fusion import normalize_image
from torch_label_mae.inference import class_and_probability, complete_tensors
from torch_label_mae.io import resize_image, resize_label
from torch_label_mae.masking import hidden_from_missing

STAGES = ("resize", "prior", "encoder", "decoder", "head", "reduce")


def staged_complete(completer: LabelCompleter, img, lab, miss):
    """``complete_tensors`` at the model's size, split into named stages for the profiler. It checks
    its result against ``complete_tensors`` itself, so the stages are the real computation."""
    model, cfg = completer.model, completer.config
    with record_function("resize"):
        x = resize_image(img, cfg.size)
        known = torch.where(miss, torch.full_like(lab, cfg.ignore_index), lab)
        known = resize_label(known, cfg.size)
        hidden = hidden_from_missing(miss, cfg.grid)
    with record_function("prior"):
        prior = model.prior(known, image=x) if model.prior is not None else None
    with record_function("encoder"):
        patches = model.patchify(normalize_image(x))
        latent, ids, valid = model.forward_encoder(patches, known, hidden)
    with record_function("decoder"):
        tokens = model.forward_decoder(latent, ids, valid, model.supplement(patches, prior, hidden), hidden)
    with record_function("head"):
        p, n = cfg.patch_size, cfg.num_classes
        rows = model.head(tokens[hidden]).unflatten(-1, (p * p, n)).float()
        if prior is not None:
            rows = prior.rows(hidden, model.patchify).add_to(rows, model.prior_scale, inplace=True, dim=-1)
    with record_function("reduce"):
        pred, prob = class_and_probability(rows, dim=-1)
    return pred, prob, hidden


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="camvid-m0.5")
    ap.add_argument("--data", help="dataset folder; synthetic inputs without it")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=parse_size, default=(224, 224), metavar="WxH")
    ap.add_argument("--precision", default="auto", choices=PRECISIONS)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--runs", type=int, default=3, help="profiled batches (after one warm-up)")
    ap.add_argument("--rows", type=int, default=15, help="operators listed")
    ap.add_argument("--json", help="write the stage and operator times here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    completer = LabelCompleter.from_pretrained(a.model, device="cpu", precision=a.precision)
    cfg = completer.config
    if a.size != cfg.size:
        ap.error(f"--size must be the model's size {cfg.size[1]}x{cfg.size[0]}: stages are profiled at that size")
    if a.data:
        _, samples = read_samples(a.data, "val", a.batch)
        images, labels = real_inputs(samples, a.size, 0.5, 0)
    else:
        images, labels = synthetic_inputs(a.batch, a.size, cfg.num_classes, cfg.size, 0.5, 0)
    img, lab = torch.stack(images[: a.batch]), torch.stack(labels[: a.batch])
    miss = lab == MISSING
    amp = completer.autocast_dtype()

    def run():
        with torch.inference_mode(), torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            return staged_complete(completer, img, lab, miss)

    with torch.inference_mode(), torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
        done, _ = complete_tensors(completer.model, img, lab, miss)
    pred, _, hidden = run()
    grid = pred.new_zeros(hidden.shape[0], hidden.shape[1], pred.shape[-1])
    grid[hidden] = pred
    staged = completer.model.unpatchify(grid, channels=1)[:, 0]
    if not torch.equal(staged[miss], done[miss]):
        raise SystemExit("the staged computation differs from complete_tensors: the profile would not be of it")
    t0 = time.perf_counter()
    for _ in range(a.runs):
        run()
    wall = (time.perf_counter() - t0) / a.runs  # without the profiler's overhead
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(a.runs):
            run()
    events = prof.key_averages()
    stages = {e.key: e.cpu_time_total / a.runs / 1e3 for e in events if e.key in STAGES}
    total = sum(stages.values())
    precision = str(amp or torch.float32).replace("torch.", "")
    print(
        f"model {a.model}, batch {a.batch} at {a.size[1]}x{a.size[0]}, {precision}, {a.threads} threads: "
        f"{wall * 1e3:.1f} ms per batch ({a.batch / wall:.1f} img/s without the profiler)"
    )
    print(f"{'stage':10s} {'ms/batch':>9s} {'share':>6s}")
    for s in STAGES:
        if s in stages:
            print(f"{s:10s} {stages[s]:9.1f} {100 * stages[s] / total:5.1f}%")
    ops = sorted(
        (e for e in events if e.key not in STAGES and not e.key.startswith("ProfilerStep")),
        key=lambda e: -e.self_cpu_time_total,
    )[: a.rows]
    print(f"\n{'operator (self time)':48s} {'ms/batch':>9s} {'share':>6s} {'calls':>6s}")
    for e in ops:
        ms = e.self_cpu_time_total / a.runs / 1e3
        print(f"{e.key[:48]:48s} {ms:9.1f} {100 * ms / total:5.1f}% {e.count // a.runs:6d}")
    if a.json:
        out = dict(
            model=a.model,
            batch=a.batch,
            precision=precision,
            threads=a.threads,
            ms_per_batch=wall * 1e3,
            stages_ms=stages,
            operators_ms={e.key: e.self_cpu_time_total / a.runs / 1e3 for e in ops},
        )
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
