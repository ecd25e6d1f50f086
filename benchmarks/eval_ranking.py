"""Benchmark: chunked exact retrieval metrics vs the full-argsort way, side by side.

Builds an ICFG-sized synthetic test set (19,848 captions x 19,848 images, ~1,000
ids, ~20 images per id, L2-normalised 512-d features), computes the float32
similarity, then times and measures peak memory of

- ``chunked``: :func:`tbps.metrics.retrieval_metrics` (O(query_chunk x G) memory);
- ``full-argsort``: the usual approach, one stable argsort of the whole Q x G matrix
  followed by dense cumulative sums (same definitions, same tie order).

Each method runs in its own subprocess so the peaks are separate. CPU peak is the
process's VmHWM (reset through /proc/self/clear_refs just before the method)
minus VmRSS at that point, i.e. the extra resident memory the method needed on top
of the similarity matrix; on CUDA it is torch's peak allocated memory on top of
what was allocated before. Both results must agree (R@K exactly, mAP/mINP to 1e-9).

    .venv/bin/python benchmarks/eval_ranking.py                     # full size, both methods
    .venv/bin/python benchmarks/eval_ranking.py --baseline-size 8000  # smaller argsort run too
    .venv/bin/python benchmarks/eval_ranking.py --size 5000 --query-chunk 256 --device cuda
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time

import rss  # benchmarks/rss.py, beside this script
import torch
from train import machine_info  # benchmarks/train.py: the shared measuring helpers

from tbps.fileio import write_json_atomic
from tbps.metrics import retrieval_metrics

DIM = 512
KS = (1, 5, 10)
METHODS = ("chunked", "full-argsort")


def make_case(size: int, num_ids: int, noise: float, seed: int, device: str):
    """Caption and image features scattered around one random centre per identity."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.arange(size) % num_ids
    ids = ids[torch.randperm(size, generator=gen)]
    centres = torch.randn(num_ids, DIM, generator=gen)
    images = torch.nn.functional.normalize(
        centres[ids] + noise * torch.randn(size, DIM, generator=gen), dim=1
    )
    captions = torch.nn.functional.normalize(
        centres[ids] + noise * torch.randn(size, DIM, generator=gen), dim=1
    )
    similarity = (captions.to(device) @ images.to(device).T).float()
    return similarity, ids.to(device), ids.to(device)


def full_argsort_metrics(
    similarity: torch.Tensor, query_ids: torch.Tensor, gallery_ids: torch.Tensor
) -> dict:
    """Spec §8 the simple way: rank every query's whole gallery at once."""
    num_q, num_g = similarity.shape
    order = torch.argsort(similarity, dim=1, descending=True, stable=True)  # Q x G int64
    matches = gallery_ids[order] == query_ids.unsqueeze(1)
    del order
    hits_so_far = matches.cumsum(dim=1)
    num_pos = hits_so_far[:, -1].double()
    result = {f"R{k}": 100.0 * int((hits_so_far[:, min(k, num_g) - 1] > 0).sum()) / num_q for k in KS}
    rank = torch.arange(1, num_g + 1, device=similarity.device, dtype=torch.float64)
    ap = (hits_so_far / rank * matches).sum(dim=1) / num_pos
    last_rank = num_g - torch.argmax(matches.flip(1).to(torch.uint8), dim=1)
    inp = num_pos / last_rank.double()
    result["mAP"] = 100.0 * math.fsum(ap.tolist()) / num_q
    result["mINP"] = 100.0 * math.fsum(inp.tolist()) / num_q
    return result


def run_worker(args: argparse.Namespace) -> None:
    """One method in this process; prints one JSON line."""
    torch.manual_seed(0)
    similarity, query_ids, gallery_ids = make_case(args.size, args.ids, args.noise, args.seed, args.device)
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        # The peak below then belongs to this method alone.
        before = rss.reset_peak()
    start = time.perf_counter()
    if args.worker == "chunked":
        result = retrieval_metrics(similarity, query_ids, gallery_ids, ks=KS, query_chunk=args.query_chunk)
    else:
        result = full_argsort_metrics(similarity, query_ids, gallery_ids)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if cuda else rss.peak_bytes()
    print(
        json.dumps(
            {
                "method": args.worker,
                "size": args.size,
                "seconds": seconds,
                "peak_increase_bytes": peak - before,
                "metrics": result,
            }
        )
    )


def run_method(args: argparse.Namespace, method: str, size: int) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        method,
        "--size",
        str(size),
        "--ids",
        str(args.ids),
        "--noise",
        str(args.noise),
        "--seed",
        str(args.seed),
        "--query-chunk",
        str(args.query_chunk),
        "--device",
        args.device,
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        reason = "killed (out of memory?)" if done.returncode in (-9, 137) else f"exit {done.returncode}"
        print(f"[{method} @ {size}] failed: {reason}\n{done.stderr[-2000:]}", file=sys.stderr)
        return {"method": method, "size": size, "failed": reason}
    return json.loads(done.stdout.strip().splitlines()[-1])


def agree(a: dict, b: dict) -> bool:
    return all(a[k] == b[k] for k in a if k.startswith("R")) and all(
        abs(a[k] - b[k]) <= 1e-9 for k in ("mAP", "mINP")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size", type=int, default=19848, help="queries = gallery items (default: ICFG test, 19848)"
    )
    parser.add_argument(
        "--baseline-size",
        type=int,
        default=None,
        help="also compare both methods at this smaller size (for when the full argsort is too slow)",
    )
    parser.add_argument(
        "--query-chunk", type=int, default=1024, help="queries per chunk for the chunked method"
    )
    parser.add_argument("--ids", type=int, default=1000, help="number of identities (~size/ids images each)")
    parser.add_argument("--noise", type=float, default=2.7, help="feature noise around each identity centre")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS)
    )
    parser.add_argument("--out", help="also write the rows as JSON here")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args)
        return

    machine = machine_info(torch.device(args.device))
    print(machine)
    print(f"similarity float32 on {args.device}, {args.ids} ids, dim {DIM}, query_chunk {args.query_chunk}")
    methods = [m for m in args.methods.split(",") if m]
    sizes = [args.size] + ([args.baseline_size] if args.baseline_size else [])
    rows = []
    for size in sizes:
        for method in methods:
            rows.append(run_method(args, method, size))
            if args.out:  # after every method: a time cap keeps what was measured
                write_json_atomic(args.out, {"machine": machine, "torch_version": torch.__version__,
                                             "device": args.device, "query_chunk": args.query_chunk, "rows": rows})

    header = f"{'method':<13} {'size':>6} {'seconds':>8} {'peak +MiB':>10}  R1 / R5 / R10 / mAP / mINP"
    print(header)
    print("-" * len(header))
    for row in rows:
        if "failed" in row:
            print(f"{row['method']:<13} {row['size']:>6} {'failed: ' + row['failed']}")
            continue
        m = row["metrics"]
        print(
            f"{row['method']:<13} {row['size']:>6} {row['seconds']:>8.1f} {row['peak_increase_bytes'] / 2**20:>10.0f}  "
            + " / ".join(f"{m[k]:.4f}" for k in ("R1", "R5", "R10", "mAP", "mINP"))
        )
    for size in sizes:
        done = [row for row in rows if row["size"] == size and "failed" not in row]
        if len(done) == 2:
            a, b = done[0]["metrics"], done[1]["metrics"]
            diff = max(abs(a[k] - b[k]) for k in a)
            verdict = (
                f"agree (max abs diff {diff:.1e})" if agree(a, b) else f"DIFFERENT (max abs diff {diff:.1e})"
            )
            print(
                f"size {size}: results {verdict}; chunked {done[1]['seconds'] / done[0]['seconds']:.1f}x faster, "
                f"{done[1]['peak_increase_bytes'] / max(done[0]['peak_increase_bytes'], 1):.1f}x less extra memory"
            )


if __name__ == "__main__":
    main()
