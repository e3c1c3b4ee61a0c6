"""DeepCluster's clustering step: mmssl's k-means (`mmssl.models.kmeans`, torch, k-means++ seeding) vs faiss's
k-means run directly, on the same features: N points of D dimensions in blobs around random centres (L2
normalised, as DeepCluster's PCA-whitened features), k clusters, the same iterations; each side in its own
process, alternating; medians. mmssl uses faiss itself when it is installed (``backend: auto``); this compares
the fallback with it.

    python scripts/bench_kmeans.py                      # 100,000 x 128, k 1,000, 20 iterations, 2 repeats
    python scripts/bench_kmeans.py --points 20000 --k 100 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def features(n: int, d: int, centres: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    means = torch.randn(centres, d, generator=g)
    x = means[torch.randint(centres, (n,), generator=g)] + 0.5 * torch.randn(n, d, generator=g)
    return torch.nn.functional.normalize(x, dim=1)


def inertia(x, centroids, assign) -> float:
    return float((x - centroids[assign]).pow(2).sum(dim=1).mean())


def worker(impl: str, args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    x = features(args.points, args.dim, args.k)
    start = time.perf_counter()
    if impl == "mmssl":
        from mmssl.models.kmeans import torch_kmeans

        centroids, assign = torch_kmeans(x, args.k, args.iterations, seed=0)
    else:
        import faiss

        faiss.omp_set_num_threads(args.threads)
        data = x.numpy()
        km = faiss.Kmeans(args.dim, args.k, niter=args.iterations, seed=0, verbose=False, min_points_per_centroid=1)
        km.train(data)
        _, found = km.index.search(data, 1)
        centroids, assign = torch.from_numpy(km.centroids), torch.from_numpy(found[:, 0]).long()
    seconds = time.perf_counter() - start
    used = int((torch.bincount(assign, minlength=args.k) > 0).sum())
    return {"seconds": seconds, "inertia": inertia(x, centroids, assign), "clusters_used": used}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", choices=["mmssl", "faiss"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args)), flush=True)
        return
    print(f"# {args.points} x {args.dim} features, k {args.k}, {args.iterations} iterations, {args.threads} threads")
    results: dict[str, list[dict]] = {"mmssl": [], "faiss": []}
    for repeat in range(args.repeats):
        for impl in (["mmssl", "faiss"] if repeat % 2 == 0 else ["faiss", "mmssl"]):
            cmd = [sys.executable, __file__, "--worker", impl, "--points", str(args.points), "--dim", str(args.dim),
                   "--k", str(args.k), "--iterations", str(args.iterations), "--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                                  env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": str(args.threads)})
            line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(f"{impl} failed:\n{done.stderr[-3000:]}")
            r = json.loads(line[7:])
            results[impl].append(r)
            print(f"  repeat {repeat + 1} {impl:6s}: {r['seconds']:7.2f} s  inertia {r['inertia']:.4f}  "
                  f"clusters used {r['clusters_used']}", flush=True)
    med = {k: statistics.median(r["seconds"] for r in v) for k, v in results.items()}
    print(f"k-means per epoch: mmssl (torch) {med['mmssl']:.2f} s vs faiss {med['faiss']:.2f} s -> "
          f"faiss is {med['mmssl'] / med['faiss']:.2f}x faster; inertia {results['mmssl'][0]['inertia']:.4f} vs "
          f"{results['faiss'][0]['inertia']:.4f}")


if __name__ == "__main__":
    main()
