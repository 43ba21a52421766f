"""Speed, latency, memory and quality of the memory-bank detectors (knn, patchcore) per search backend.

    python benchmarks/memory_bank.py --root ../shared/data --category magnetic_tile
    python benchmarks/memory_bank.py --root ../shared/data --category magnetic_tile \\
        --detectors patchcore --searches exact_fp32 exact_bf16 faiss
    python benchmarks/memory_bank.py --root ../shared/data --category magnetic_tile \\
        --detectors patchcore --searches auto --coresets exact probed --cpus native avx2 \\
        --config configs/demo/patchcore_magnetic_tile.yaml

Each (detector, search, coreset, cpu) runs in its own process (so peak RSS is its own) from its
demo config (offline EfficientNet-Lite0 weights; `--config` names another), exactly as
`python -m mvtec_ad fit/test` builds it: fit, then test, each timed as the Trainer runs it
(decoding, evaluation and plots included). `--cpus avx2` runs a row with MVTEC_AD_CPU=avx2: torch,
oneDNN, MKL, faiss and mvtec_ad's own checks limited to AVX2, as on a CPU without AVX-512 (most
factory PCs and laptops); the `cpu` column and the table's title name the hardware of each row.
In the same process it then measures, on the same decoded test images at the same size:

  backbone_img_s  the backbone alone (the model's FeatureExtractor forward, nothing else) in
                  batches of the test batch size: the ceiling a memory bank's test could reach
  ratio           test_img_s / backbone_img_s (the whole test run against the backbone alone)
  model_img_s     the whole model (backbone, search, map) on the same batches, alternating with
                  the backbone batch by batch (both see the same machine): no decoding,
                  evaluation or report, which every detector shares
  model_ratio     model_img_s / backbone_img_s: what the search costs on top of the backbone
  model_ms        median latency of one image through the whole model (batch 1, map included)
  backbone_ms     the same for the backbone alone
  recall@1        share of test patches whose nearest bank row is the one exact_fp32 finds
                  (patchcore; the bank is the fitted one, so all backends are compared on it)

  coreset         patchcore's coreset selection (auto, exact, probed), and what auto chose
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def median_ms(fn, inputs, warmup: int = 2) -> float:
    """Median wall time of fn(x) over inputs, in ms, after `warmup` untimed calls."""
    for x in inputs[:warmup]:
        fn(x)
    times = []
    for x in inputs:
        start = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def run_one(args: argparse.Namespace, detector: str, search: str) -> dict:
    """Fit + test one detector with one search backend in this process; returns the row."""
    import torch
    from lightning.pytorch import seed_everything
    from omegaconf import OmegaConf

    from mvtec_ad.commands.lightning import AnomalyTrainer
    from mvtec_ad.data.datamodule import AnomalyDataModule
    from mvtec_ad.data.dataset import collate_batch
    from mvtec_ad.models.knn import KNN
    from mvtec_ad.models.patchcore import PatchCore
    from mvtec_ad.search.nearest import nearest_neighbours

    seed_everything(42)
    from mvtec_ad.search import cpu

    config_path = Path(args.config) if args.config else REPO / "configs" / "demo" / f"{detector}.yaml"
    config = OmegaConf.to_container(OmegaConf.load(config_path))
    model_args = config["model"]["init_args"]
    if args.image_size is not None:
        model_args["image_size"] = args.image_size
    model_args["search"] = search
    model_args["faiss_index"] = args.faiss_index
    if args.faiss_nprobe is not None:
        model_args["faiss_nprobe"] = args.faiss_nprobe
    model_args["ivf_nprobe"] = args.ivf_nprobe
    if detector == "patchcore":
        if args.coreset_ratio is not None:
            model_args["coreset_ratio"] = args.coreset_ratio
        model_args["coreset"] = args.coreset
        if args.coreset_seed is not None:
            model_args["coreset_seed"] = args.coreset_seed
    model = {"knn": KNN, "patchcore": PatchCore}[detector](**model_args)
    batch_size = 32
    data = AnomalyDataModule(
        args.root, args.category, eval_batch_size=batch_size, train_batch_size=batch_size
    )
    with tempfile.TemporaryDirectory() as logs:
        trainer = AnomalyTrainer(
            max_epochs=1,
            accelerator=args.accelerator,
            devices=1,
            default_root_dir=logs,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            logger=False,
        )
        start = time.perf_counter()
        trainer.fit(model, datamodule=data)
        fit_seconds = time.perf_counter() - start
        start = time.perf_counter()
        trainer.test(model, datamodule=data, verbose=False)
        test_seconds = time.perf_counter() - start
    results = model.test_results
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n_fit, n_test = len(data.train_set) + len(data.val_set), len(data.test_set)

    # the same decoded test images (cached by the test run), on the model's device
    net = model.model.eval()
    device = next(net.parameters()).device
    items = [data.test_set[i] for i in range(n_test)]
    batches = [collate_batch(items[i : i + batch_size]) for i in range(0, n_test, batch_size)]
    with torch.inference_mode():
        images = [b.image.to(device) for b in batches]
        net.extractor(images[0])  # warm-up
        # backbone and model alternate batch by batch, so a slow spell of a shared machine slows
        # both alike instead of skewing their ratio (run one after the other, the backbone's
        # throughput swung 115-175 img/s between rows)
        backbone_seconds = model_seconds = 0.0
        for x in images:
            start = time.perf_counter()
            net.extractor(net.network_input(net.pre_processor(x)))
            middle = time.perf_counter()
            net(x)
            backbone_seconds += middle - start
            model_seconds += time.perf_counter() - middle
        singles = [b.image[i : i + 1].to(device) for b in batches for i in range(len(b.image))]
        singles = singles[:: max(1, len(singles) // args.latency_images)][: args.latency_images]
        model_ms = median_ms(lambda x: net(x), singles)
        backbone_ms = median_ms(lambda x: net.extractor(net.network_input(net.pre_processor(x))), singles)
        recall = None
        if detector == "patchcore":
            queries = []
            for x in images[:: max(1, len(images) // 4)][:4]:  # a few batches: exact_fp32 is slow
                patches = net.embed(x)
                queries.append(patches.permute(0, 2, 3, 1).reshape(-1, patches.shape[1]))
            queries = torch.cat(queries)
            _, exact = nearest_neighbours(queries, net.memory_bank)
            _, found = net.search(queries, net.memory_bank)
            recall = float((found[:, 0] == exact[:, 0]).float().mean())
    backbone_img_s = n_test / backbone_seconds
    coreset = results.get("coreset")
    return {
        "detector": detector,
        "config": config_path.name,
        "cpu": cpu.describe(),
        "search": net.search.describe(),
        "coreset": None
        if coreset is None
        else f"{args.coreset}: {coreset}"
        if args.coreset == "auto"
        else coreset,
        "fit_s": fit_seconds,
        "coreset_s": results.get("coreset_seconds"),
        "test_s": test_seconds,
        "test_img_s": n_test / test_seconds,
        "backbone_img_s": backbone_img_s,
        "ratio": (n_test / test_seconds) / backbone_img_s,
        "model_img_s": n_test / model_seconds,
        "model_ratio": backbone_seconds / model_seconds,
        "model_ms": model_ms,
        "backbone_ms": backbone_ms,
        "peak_rss_mb": peak_mb,
        "image_auroc": results["image_auroc"],
        "pixel_auroc": results["pixel_auroc"],
        "pixel_aupro": results["pixel_aupro"],
        "recall@1": recall,
        "fit_images": n_fit,
        "test_images": n_test,
        "bank": results.get("bank_patches") or results.get("bank_images"),
    }


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if value < 1.5 else f"{value:.1f}" if value < 100 else f"{value:.0f}"
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default="datasets/demo")
    parser.add_argument("--category", default="fabric")
    parser.add_argument("--detectors", nargs="+", default=["knn", "patchcore"])
    parser.add_argument("--searches", nargs="+", default=["exact_fp32", "exact_bf16", "faiss"])
    parser.add_argument("--config", help="a patchcore/knn config (default: configs/demo/<detector>.yaml)")
    parser.add_argument("--image_size", type=int, default=None, help="default: the config's")
    parser.add_argument("--coreset_ratio", type=float, default=None, help="default: the config's")
    parser.add_argument("--coreset_seed", type=int, default=None, help="default: the config's")
    parser.add_argument("--coresets", nargs="+", default=["auto"], help="patchcore: auto exact probed")
    parser.add_argument("--cpus", nargs="+", default=["native"], help="native, avx2 (MVTEC_AD_CPU)")
    parser.add_argument(
        "--faiss_index", default="auto", help="faiss index_factory string (Flat, IVF256,Flat, HNSW32)"
    )
    parser.add_argument("--faiss_nprobe", type=int, default=None, help="default: the model's")
    parser.add_argument("--ivf_nprobe", type=int, default=24)
    parser.add_argument("--latency_images", type=int, default=30)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--out", help="also write the rows as JSON lines to this file")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--coreset", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("ROW " + json.dumps(run_one(args, *args.one)), flush=True)
        return

    rows, notes = [], []
    for detector in args.detectors:
        for search in args.searches:
            for coreset in args.coresets if detector == "patchcore" else ["auto"]:
                for level in args.cpus:
                    env = os.environ | {"MVTEC_AD_CPU": level}
                    one = ["--one", detector, search, "--coreset", coreset]
                    out = subprocess.run(
                        [sys.executable, __file__, *sys.argv[1:], *one],
                        capture_output=True,
                        text=True,
                        cwd=REPO,
                        env=env,
                    )
                    line = next((x for x in out.stdout.splitlines() if x.startswith("ROW ")), None)
                    name = f"{detector} / {search} / coreset {coreset} / cpu {level}"
                    if line is None and "faiss package" in out.stderr:
                        notes.append(f"{name} skipped: faiss is not installed (pip install faiss-cpu).")
                        continue
                    if line is None:
                        sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
                    rows.append(json.loads(line[4:]))
                    print(f"{name}: done", file=sys.stderr, flush=True)
                    if args.out:
                        with open(args.out, "a") as f:
                            f.write(json.dumps(rows[-1]) + "\n")
    if not rows:
        sys.exit("no row ran: " + " ".join(notes))
    # the cpu column is long: each distinct one gets a number, listed above the table
    cpus = list(dict.fromkeys(row["cpu"] for row in rows))
    keys = [k for k in rows[0] if k != "cpu"] + ["cpu"]
    config = args.config or "configs/demo/<detector>.yaml"
    print(f"\n{args.root}/{args.category}, {config}, image_size {args.image_size or 'of the config'}")
    for number, described in enumerate(cpus, 1):
        print(f"cpu {number}: {described}")
    print()
    for row in rows:
        row["cpu"] = cpus.index(row["cpu"]) + 1
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(fmt(row[k]) for k in keys) + " |")
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
