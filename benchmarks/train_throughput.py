"""Training throughput (tokens/s) of a FourM run config on synthetic token shards.

    .venv/bin/python benchmarks/train_throughput.py                       # the bundled config, 2 threads
    .venv/bin/python benchmarks/train_throughput.py --config configs/fm/shapes_tiny.yaml --steps 30
    .venv/bin/python benchmarks/train_throughput.py model.dim=192 data.batch_size=32   # overrides

Writes synthetic token shards with the config's modalities (fourm.training.synthetic) into a
temporary folder, builds the Trainer of the config (steps, checkpoints and logging are overridden
so that nothing else is timed), runs ``--warmup`` steps, then times ``--steps`` optimizer steps.
Tokens are the input + target tokens of the masked batches (what the model sees). It also times
the data side alone (``--data-batches`` micro-batches through the DataLoader workers, masking
included) and one forward + backward on a fixed batch, so that the printout shows which side
limits the step. With ``--estimate`` it prints how long ``config.steps`` steps would take.

The machine is shared: run it twice and quote the better figure.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fourm.training import FourMTask, Trainer, load_train_config
from fourm.training.synthetic import write_synthetic_token_shards
from fourm.training.trainer import to_device

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "fm" / "shapes_bundled.yaml"))
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--samples", type=int, default=2048, help="synthetic samples to write")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the training process")
    p.add_argument("--data-batches", type=int, default=20, help="micro-batches for the data-only timing")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        base = load_train_config(args.config, [f"out_dir={tmp}/run", f"data.train.shapes.shards={tmp}/tok",
                                               "val=null", *args.overrides])
        write_synthetic_token_shards(f"{tmp}/tok", base.registry(), args.samples, shard_size=512)
        total = args.warmup + args.steps
        cfg = load_train_config(args.config, [
            f"out_dir={tmp}/run", f"data.train.shapes.shards={tmp}/tok", "val=null", f"threads={args.threads}",
            f"steps={max(base.steps, total)}", "checkpoint.every=1000000", "logging.progress=false",
            *args.overrides])
        trainer = Trainer(FourMTask(cfg))
        trainer._open_logs()
        for _ in range(args.warmup):
            trainer.train_step()
        tokens0, samples0 = trainer.interval.tokens, trainer.interval.samples
        times = []
        t_all = time.perf_counter()
        for _ in range(args.steps):
            t = time.perf_counter()
            trainer.train_step()
            times.append(time.perf_counter() - t)
        wall = time.perf_counter() - t_all
        tokens = trainer.interval.tokens - tokens0
        samples = trainer.interval.samples - samples0

        t = time.perf_counter()
        for _ in range(args.data_batches):
            trainer.data.next()
        data_ms = (time.perf_counter() - t) / args.data_batches * 1e3
        mb = trainer.data.next()
        batch = to_device(mb.batch, trainer.accelerator.device)
        fb = []
        for _ in range(5):
            t = time.perf_counter()
            trainer.compute_loss(batch).objective.backward()
            fb.append(time.perf_counter() - t)
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.close()

    n_params = sum(p.numel() for p in trainer.model.parameters())
    step_s = statistics.median(times)
    print(f"config {args.config} {' '.join(args.overrides)}")
    print(f"  model: dim {cfg.model.dim or '-'} size {cfg.model.size or '-'}, {n_params / 1e6:.2f} M parameters; "
          f"batch {cfg.data.batch_size} x accum {cfg.optim.grad_accum}; {cfg.num_encoder_tokens} input + "
          f"{cfg.num_decoder_tokens} target tokens per sample; {cfg.data.num_workers} workers; "
          f"{args.threads} torch threads")
    print(f"  step: median {step_s * 1e3:.0f} ms over {args.steps} steps; {tokens / wall:.0f} tokens/s, "
          f"{samples / wall:.1f} samples/s")
    print(f"  parts: data alone {data_ms:.0f} ms per micro-batch (workers, masking included); "
          f"forward+backward {statistics.median(fb) * 1e3:.0f} ms per micro-batch")
    est = cfg.steps * step_s if base.steps >= total else None
    if est is not None:
        print(f"  estimate for config.steps={base.steps}: {est / 60:.0f} min "
              f"({base.steps * cfg.data.batch_size * cfg.optim.grad_accum} samples)")
    print(f"  torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
