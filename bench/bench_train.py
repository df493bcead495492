"""One CIFAR-sized training epoch of the CIFAR ResNet-18, data pipeline and augmentation included.

50,000 random uint8 images 3x32x32, 100 classes, batch 256, SGD with the term project's settings. Pipelines:

- ``compute``: one batch already on the device, reused: the network's forward + backward + step alone;
- ``term_project``: the term project's loader: a DataLoader over PIL images with per-image torchvision transforms
  (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize), ``--workers`` worker processes;
- ``per_image``: vvm's per-image path (the datamodules' own loaders: the same transforms with torchvision v2 on
  uint8 tensors), ``--workers`` workers;
- ``resident``: vvm.train.gpu_data.DeviceBatches: the split on the device, crop + flip + normalise batched there;
- ``lightning``: what ``python -m vvm`` runs: a Lightning Trainer fitting VisionModule on the resident pipeline.

Every pipeline first runs ``--warmup`` steps (cuDNN autotuning, torch.compile), then one timed epoch. On a GPU
the default is bf16 autocast + channels_last (``--precision fp32`` / ``--no-channels-last`` to compare); on a
CPU, bf16 autocast where the CPU has AMX (as ``train.precision: auto``), and ``--images N`` shrinks the epoch.
Prints seconds per epoch and images/s; ``--json FILE`` saves them.

    python bench/bench_train.py                          # on a GPU: every pipeline, 50,000 images
    python bench/bench_train.py --images 512 --pipelines resident per_image   # a quick CPU check
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from bench_common import cpu_name, sync
from torch.utils.data import DataLoader, Dataset

MEAN = (0.5071, 0.4865, 0.4409)  # CIFAR-100, as the term project
STD = (0.2673, 0.2564, 0.2762)
PIPELINES = ("compute", "term_project", "per_image", "resident", "lightning")


class PILImages(Dataset):
    """As torchvision's CIFAR100: HWC uint8 arrays, one PIL image per item, then the transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        self.data = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def term_project_loader(images, labels, batch_size, workers, pin) -> DataLoader:
    from torchvision import transforms as T

    tf = T.Compose(
        [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)]
    )
    return DataLoader(
        PILImages(images, labels, tf),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=workers > 0,
        drop_last=False,
    )


def per_image_loader(images, labels, batch_size, workers, pin) -> DataLoader:
    from torchvision.transforms import v2

    from vvm.data.cifar import UInt8ImageDataset, uint8_transforms

    tf = uint8_transforms(MEAN, STD, [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()])
    return DataLoader(
        UInt8ImageDataset(images, labels, tf),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=workers > 0,
        drop_last=False,
    )


def resident_batches(images, labels, batch_size, device, channels_last):
    from vvm.train.gpu_data import Augmentation, DeviceBatches

    return DeviceBatches(
        images.to(device),
        labels.to(device),
        batch_size=batch_size,
        mean=MEAN,
        std=STD,
        augmentation=Augmentation(crop_padding=4, flip=True),
        channels_last=channels_last,
    )


class Repeat:
    """``n`` batches that are all the same device tensor: no data pipeline at all."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, n_images: int) -> None:
        self.x, self.y, self.n = x, y, n_images

    def __len__(self) -> int:
        return -(-self.n // len(self.y))

    def __iter__(self):
        b = len(self.y)
        for i in range(len(self)):
            k = min(b, self.n - i * b)
            yield self.x[:k], self.y[:k]


def build_model(device, channels_last, compile_model):
    from vvm.models import create

    model = create("r18", num_classes=100, seed=0).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    step_model = torch.compile(model) if compile_model else model
    return model, step_model, opt


def run_steps(
    model, opt, batches: Iterable, device, amp: bool, channels_last: bool, max_steps: int | None = None
):
    """Train on ``batches``; returns the number of images. The loss stays on the device (no sync per step)."""
    model.train()
    n = 0
    for step, (x, y) in enumerate(batches):
        if max_steps is not None and step >= max_steps:
            break
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(y)
    sync(device)
    return n


def time_loop(name, make_batches, args, device, amp, channels_last) -> dict:
    _, step_model, opt = build_model(device, channels_last, args.compile)
    batches = make_batches()
    run_steps(step_model, opt, batches, device, amp, channels_last, max_steps=args.warmup)
    t = time.perf_counter()
    n = run_steps(step_model, opt, batches, device, amp, channels_last)
    seconds = time.perf_counter() - t
    return {"pipeline": name, "seconds": seconds, "images": n, "images_per_s": n / seconds}


def time_lightning(images, labels, args, device, amp, channels_last) -> dict:
    import pytorch_lightning as pl

    from vvm.data.base import VisionDataModule
    from vvm.models import create
    from vvm.train.gpu_data import Augmentation, DeviceResidentDataModule
    from vvm.train.module import VisionModule

    class Fake(VisionDataModule):
        name = "cifar100"
        num_classes = 100
        mean, std = MEAN, STD

        def as_tensors(self, split):
            return images, labels

        def val_dataloader(self):
            return []

    class EpochTimer(pl.Callback):
        def __init__(self):
            self.times = []

        def on_train_epoch_start(self, trainer, pl_module):
            sync(device)
            self.t = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            sync(device)
            self.times.append(time.perf_counter() - self.t)

    dm = DeviceResidentDataModule(
        Fake(),
        batch_size=args.batch_size,
        seed=0,
        channels_last=channels_last,
        augmentation=Augmentation(4, True),
    )
    timer = EpochTimer()
    module = VisionModule(
        create("r18", num_classes=100, seed=0), epochs=2, compile=args.compile, channels_last=channels_last
    )
    trainer = pl.Trainer(
        accelerator=device.type,
        devices=1,
        precision="bf16-mixed" if amp else "32-true",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[timer],
        benchmark=device.type == "cuda",
    )
    trainer.fit(module, datamodule=dm)
    seconds = timer.times[-1]  # the second epoch: the first one autotunes (and compiles)
    return {
        "pipeline": "lightning",
        "seconds": seconds,
        "images": len(labels),
        "images_per_s": len(labels) / seconds,
        "first_epoch_seconds": timer.times[0],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--images", type=int, default=50_000, help="images per epoch (50,000: CIFAR's training split)"
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader workers")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps before the timed epoch")
    p.add_argument("--pipelines", nargs="+", choices=PIPELINES, default=list(PIPELINES))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--precision",
        choices=("bf16", "fp32"),
        default=None,
        help="default: bf16 on CUDA and on CPUs with AMX (as training does), else fp32",
    )
    p.add_argument("--no-channels-last", action="store_true", help="default: channels_last on CUDA")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--json", default=None, help="write the results to this file")
    args = p.parse_args()

    device = torch.device(args.device)
    from vvm.train.fit import fit_precision

    auto = (
        "bf16"
        if fit_precision("auto", "32-true", device) == "bf16-mixed" or device.type == "cuda"
        else "fp32"
    )
    amp = (args.precision or auto) == "bf16"
    channels_last = device.type == "cuda" and not args.no_channels_last
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(
        f"device: {name} ({device}); torch {torch.__version__}; {args.images} images, batch {args.batch_size}, "
        f"{'bf16 autocast' if amp else 'float32'}{', channels_last' if channels_last else ''}"
        f"{', torch.compile' if args.compile else ''}; {args.workers} loader workers; CPU threads "
        f"{torch.get_num_threads()}"
    )

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 100, (args.images,), generator=g)
    pin = device.type == "cuda"
    makers = {
        "compute": lambda: Repeat(
            ((images[: args.batch_size].float() / 255 - 0.5) / 0.25).to(device),
            labels[: args.batch_size].to(device),
            args.images,
        ),
        "term_project": lambda: term_project_loader(images, labels, args.batch_size, args.workers, pin),
        "per_image": lambda: per_image_loader(images, labels, args.batch_size, args.workers, pin),
        "resident": lambda: resident_batches(images, labels, args.batch_size, device, channels_last),
    }
    results = []
    for pipe in args.pipelines:
        if pipe == "lightning":
            r = time_lightning(images, labels, args, device, amp, channels_last)
        else:
            r = time_loop(pipe, makers[pipe], args, device, amp, channels_last)
        results.append(r)
        print(f"  {pipe:<10} {r['seconds']:8.2f} s/epoch {r['images_per_s']:10.0f} images/s", flush=True)

    by = {r["pipeline"]: r for r in results}
    if "resident" in by:
        base = by["resident"]["seconds"]
        print("relative to the resident pipeline (time ratio):")
        for r in results:
            print(f"  {r['pipeline']:<10} {r['seconds'] / base:6.2f}x")
    if args.images != 50_000:
        scale = 50_000 / args.images
        print(
            f"(scaled to 50,000 images: x{scale:.1f}; e.g. resident ~{by.get('resident', results[0])['seconds'] * scale:.1f} s)"
        )
    if args.json:
        meta = {
            "device": name,
            "torch": torch.__version__,
            "images": args.images,
            "batch_size": args.batch_size,
            "bf16": amp,
            "channels_last": channels_last,
            "compile": args.compile,
            "workers": args.workers,
        }
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
