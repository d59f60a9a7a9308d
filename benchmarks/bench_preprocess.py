"""How fast is preprocessing, and is the DataLoader ever the bottleneck?

Run: ``python benchmarks/bench_preprocess.py [--n 16] [--size 512]``

1. Writes ``--n`` DICOMs the size of VinBigData's (2880 x 2453, 14 bits stored,
   uncompressed, a VOI window, half of them MONOCHROME1) to a temporary folder.
2. Converts them to 512 px PNGs three ways, on warm file caches:
   - the **seed notebook's way** (``pydicom`` + ``apply_voi_lut`` in float64,
     MONOCHROME1 fix, min-max to uint8, ``cv2.resize``, ``cv2.imwrite``; one process),
   - :func:`cxrkit.preprocess.preprocess_dicoms` with ``workers=1``,
   - the same with all cores (and with 2 workers when there are more than 2).
   Targets: cxrkit at least 10x the seed per worker, 2 workers at least 1.7x one.
3. Times the training DataLoader alone (train transforms at 512, batch 4,
   ``num_workers`` 0 and 2) and one Faster R-CNN training step (mobilenet v3 FPN,
   random weights, 512 px, batch 4), both in images/s: the loader should feed
   images faster than the model eats them.

The numbers depend on the machine: the script prints them and an honest
PASS/FAIL per target, it does not assert.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # before pandas/pydicom import tqdm: clean output

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pydicom  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid  # noqa: E402

ROWS, COLS, BITS = 2880, 2453, 14  # a typical VinBigData image


def write_vinbig_like_dicom(path: Path, seed: int) -> None:
    """An uncompressed 14-bit DICOM of VinBigData's size with a VOI window."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, ROWS, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, COLS, dtype=np.float32)[None, :]
    body = np.exp(-(((x - 0.5) / 0.35) ** 2) - ((y - 0.55) / 0.5) ** 2)
    noise = rng.standard_normal((ROWS, COLS), dtype=np.float32) * 0.02
    arr = ((body + noise).clip(0, 1) * (2**BITS - 1)).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "DX", ROWS, COLS, 1
    ds.PhotometricInterpretation = "MONOCHROME1" if seed % 2 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, BITS, BITS - 1, 0
    ds.WindowCenter, ds.WindowWidth = 8000, 12000
    ds.PixelData = arr.tobytes()
    ds.save_as(path, enforce_file_format=True)


# --------------------------------------------------------------------------- the seed's way


def seed_read_xray(path: Path, voi_lut: bool = True, fix_monochrome: bool = True) -> np.ndarray:
    """The seed notebook's reader, verbatim in spirit: float64 all the way."""
    from pydicom.pixels import apply_voi_lut

    dicom = pydicom.dcmread(path)
    data = apply_voi_lut(dicom.pixel_array, dicom) if voi_lut else dicom.pixel_array
    if fix_monochrome and dicom.PhotometricInterpretation == "MONOCHROME1":
        data = np.amax(data) - data
    data = data - np.min(data)
    data = data / np.max(data)
    return (data * 255).astype(np.uint8)


def seed_convert(src: Path, out: Path, size: int) -> None:
    """Seed: read, ``cv2.resize`` to size x size, ``cv2.imwrite``; one process."""
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.glob("*.dicom")):
        image = cv2.resize(seed_read_xray(path), (size, size))
        cv2.imwrite(str(out / f"{path.stem}.png"), image)


# --------------------------------------------------------------------------- helpers


def timed(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def warm_cache(folder: Path) -> None:
    """Read every file once so that all methods start from the same (warm) page cache."""
    for path in folder.rglob("*.dicom"):
        path.read_bytes()


def fake_annotations(meta: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """3 radiologists x 2 boxes per image in original pixels, like train.csv."""
    from cxrkit.labels import CLASS_NAMES

    rng = np.random.default_rng(seed)
    rows = []
    for image_id, dim0, dim1 in meta[["image_id", "dim0", "dim1"]].itertuples(index=False):
        for rad in ("R8", "R9", "R10"):
            for _ in range(2):
                c = int(rng.integers(0, 14))
                x0, y0 = rng.uniform(0, 0.7) * dim1, rng.uniform(0, 0.7) * dim0
                w, h = rng.uniform(0.05, 0.25) * dim1, rng.uniform(0.05, 0.25) * dim0
                rows.append([image_id, CLASS_NAMES[c], c, rad, x0, y0, x0 + w, y0 + h])
    columns = ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
    return pd.DataFrame(rows, columns=columns)


def bench_loader(png_root: Path, size: int, num_workers: int, passes: int) -> float:
    """Images per second of the training DataLoader alone (after one warm-up pass)."""
    import torch
    from torch.utils.data import DataLoader

    from cxrkit.data import XrayDataset, collate_fn, worker_init_fn
    from cxrkit.transforms import train_transforms

    meta = pd.read_csv(png_root / "train_meta.csv")
    ds = XrayDataset(fake_annotations(meta), png_root / "train", train_transforms(size, seed=0))
    loader = DataLoader(
        ds,
        batch_size=4,
        shuffle=True,
        num_workers=num_workers,
        collate_fn=collate_fn,
        worker_init_fn=worker_init_fn,
        persistent_workers=num_workers > 0,
    )
    torch.manual_seed(0)
    for _ in loader:  # warm-up: worker start, first reads
        pass
    start, n = time.perf_counter(), 0
    for _ in range(passes):
        for images, _targets, _ids in loader:
            n += len(images)
    return n / (time.perf_counter() - start)


def bench_train_step(size: int, steps: int, model_name: str) -> float:
    """Seconds per Faster R-CNN training step (batch 4, random weights, CPU or GPU)."""
    import torch
    import torchvision

    builder = getattr(torchvision.models.detection, model_name)
    model = builder(
        weights=None, weights_backbone=None, num_classes=15, min_size=size, max_size=size
    )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, size, size, generator=g, device="cpu").to(device) for _ in range(4)]
    box = torch.tensor([[50.0, 60.0, 200.0, 220.0], [300.0, 100.0, 420.0, 300.0]], device=device)
    targets = [{"boxes": box, "labels": torch.tensor([1, 4], device=device)} for _ in range(4)]

    def step() -> None:
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    return sum(timed(step) for _ in range(steps)) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=48, help="number of DICOMs")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps")
    parser.add_argument("--passes", type=int, default=2, help="timed DataLoader passes")
    parser.add_argument("--model", default="fasterrcnn_mobilenet_v3_large_fpn")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp folder")
    args = parser.parse_args()

    from cxrkit.preprocess import default_workers, preprocess_dicoms

    n, size = args.n, args.size
    cores = default_workers()
    root = Path(tempfile.mkdtemp(prefix="cxrkit-bench-", dir=args.workdir))
    try:
        src = root / "dicoms"
        (src / "train").mkdir(parents=True)
        t = timed(
            lambda: [
                write_vinbig_like_dicom(src / "train" / f"img{i:03d}.dicom", i) for i in range(n)
            ]
        )
        mb = sum(p.stat().st_size for p in src.rglob("*.dicom")) / 1e6
        print(f"wrote {n} DICOMs {ROWS}x{COLS}, {BITS} bits stored, {mb:.0f} MB in {t:.1f} s")
        print(f"CPU cores available: {cores} (os.cpu_count() = {os.cpu_count()})")
        warm_cache(src)

        seed_s = timed(seed_convert, src / "train", root / "seed", size)
        results = {"seed (1 process)": n / seed_s}
        worker_counts = sorted({1, 2, cores} if cores > 2 else {1, cores})
        # Worker processes come from a server process started once per Python session
        # (about a second, see cxrkit.preprocess._mp_context): start it outside the timing,
        # as in a notebook or a long run over 18,000 images where it does not count.
        (root / "two" / "train").mkdir(parents=True)
        for name in ("img000.dicom", "img001.dicom"):
            shutil.copy(src / "train" / name, root / "two" / "train")
        startup = preprocess_dicoms(root / "two", root / "warm-up", size=size, workers=2).seconds
        print(f"worker pool start-up, first call only: {startup:.2f} s (not in the rates below)")
        for w in worker_counts:
            out = root / f"cxrkit-{w}"
            report = preprocess_dicoms(src, out, size=size, workers=w, splits=("train",))
            assert report.converted == n and not report.failed, report.summary()
            results[f"cxrkit workers={w}"] = report.images_per_second
        print(f"\nDICOM -> PNG {size}x{size} ({n} images, warm cache)")
        for name, ips in results.items():
            print(f"  {name:<22} {ips:7.2f} images/s")

        seed_ips, one = results["seed (1 process)"], results["cxrkit workers=1"]
        ratio = one / seed_ips
        print(f"  cxrkit 1 worker / seed: {ratio:5.1f}x   target >= 10x   {verdict(ratio >= 10)}")
        if 2 in worker_counts and cores >= 2:
            r2 = results["cxrkit workers=2"] / one
            print(f"  2 workers / 1 worker:   {r2:5.2f}x   target >= 1.7x  {verdict(r2 >= 1.7)}")
        else:
            print("  2 workers / 1 worker:   n/a (one core)")
        if cores > 2:
            rc = results[f"cxrkit workers={cores}"] / one
            print(f"  {cores} workers / 1 worker:  {rc:5.2f}x   (ideal {cores}x)")
        a = cv2.imread(str(root / "seed" / "img000.png"), cv2.IMREAD_GRAYSCALE).astype(int)
        b = cv2.imread(str(root / "cxrkit-1" / "train" / "img000.png"), cv2.IMREAD_GRAYSCALE)
        print(
            f"  pixels, cxrkit vs seed: max |diff| {np.abs(a - b).max()} gray levels "
            f"(cxrkit resizes with INTER_AREA, the seed with INTER_LINEAR)"
        )

        import torch

        torch.set_num_threads(max(1, cores))
        png_root = root / "cxrkit-1"
        print(f"\nTraining input pipeline at {size} px, batch 4 ({n} images, {args.passes} passes)")
        loader = {w: bench_loader(png_root, size, w, args.passes) for w in (0, 2)}
        for w, ips in loader.items():
            print(f"  DataLoader num_workers={w}:   {ips:7.1f} images/s")
        step_s = bench_train_step(size, args.steps, args.model)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model_ips = 4 / step_s
        print(
            f"  {args.model} train step ({device}): {step_s:.2f} s/step = {model_ips:.1f} images/s"
        )
        for w, ips in loader.items():
            print(
                f"  loader (num_workers={w}) / model: {ips / model_ips:6.1f}x   "
                f"target > 1x   {verdict(ips > model_ips)}"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
