"""Analysis speed: ``run_report`` over 100 synthetic runs (16k contexts × 65 classes, 11 checkpoints).

Target (issue 4): under 60 s and under 4 GB peak RSS on the 2-core dev machine.

    python benchmarks/report_speed.py                      # 5 activations × 20 seeds, 3 report repeats
    python benchmarks/report_speed.py --activations 10 --seeds 10 --repeats 1

Generation and each report repeat run in separate child processes, so the wall time and the peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) printed for the report are the report's alone.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ACTS = ("relu", "gelu", "gelu_tanh", "swish", "smelu_1.0", "smelu_0.5", "swiglu", "elu", "mish", "softplus")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def generate(args: argparse.Namespace) -> None:
    from nanoact.analysis.synthetic import SyntheticSpec, log_synthetic_runs

    spec = SyntheticSpec(
        experiment="bench", activations=ACTS[: args.activations], seeds=tuple(range(42, 42 + args.seeds)),
        n_contexts=args.contexts, vocab_size=args.vocab,
        steps=tuple(round(i * 1000 / (args.steps - 1)) for i in range(args.steps)),
        quality={a: 1.0 - 0.02 * i for i, a in enumerate(ACTS)},
    )
    t = time.perf_counter()
    log = log_synthetic_runs(args.uri, spec, artifact_root=args.artifacts)
    print(json.dumps({"phase": "generate", "runs": len(log.run_ids), "wall_s": round(time.perf_counter() - t, 2),
                      "peak_rss_mb": round(_rss_mb(), 1)}))


def report(args: argparse.Namespace) -> None:
    from nanoact.analysis.report import run_report

    t = time.perf_counter()
    res = run_report(["bench"], tracking_uri=args.uri, out_dir=args.out, log_to_parent=True)
    print(json.dumps({"phase": "report", "wall_s": round(time.perf_counter() - t, 2),
                      "peak_rss_mb": round(_rss_mb(), 1), "anomalies": len(res.anomalies),
                      "headline": res.headline}))


def _child(args: argparse.Namespace, phase: str) -> dict:
    cmd = [sys.executable, __file__, "--phase", phase, "--uri", args.uri, "--artifacts", args.artifacts,
           "--out", args.out, "--activations", str(args.activations), "--seeds", str(args.seeds),
           "--contexts", str(args.contexts), "--vocab", str(args.vocab), "--steps", str(args.steps)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--activations", type=int, default=5)
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--contexts", type=int, default=16384)
    p.add_argument("--vocab", type=int, default=65)
    p.add_argument("--steps", type=int, default=11)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", default=None, help="keep the store here (default: a temp dir, removed after)")
    p.add_argument("--phase", choices=("all", "generate", "report"), default="all", help=argparse.SUPPRESS)
    p.add_argument("--uri", default=None, help=argparse.SUPPRESS)
    p.add_argument("--artifacts", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase == "generate":
        return generate(args)
    if args.phase == "report":
        return report(args)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="nanoact-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    args.uri = f"sqlite:///{work / 'mlflow.db'}"
    args.artifacts, args.out = str(work / "artifacts"), str(work / "report")
    try:
        print(f"{args.activations} activations × {args.seeds} seeds, {args.contexts} contexts × {args.vocab} "
              f"classes, {args.steps} checkpoints; store {work}")
        g = _child(args, "generate")
        print(f"generate: {g['runs']} runs in {g['wall_s']:.1f} s (peak RSS {g['peak_rss_mb']:.0f} MB)")
        walls, rss = [], []
        for i in range(args.repeats):
            r = _child(args, "report")
            walls.append(r["wall_s"])
            rss.append(r["peak_rss_mb"])
            print(f"report #{i + 1}: {r['wall_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB, "
                  f"{r['anomalies']} anomalies")
        print(f"report median over {len(walls)}: {statistics.median(walls):.1f} s wall, "
              f"max peak RSS {max(rss):.0f} MB (targets: < 60 s, < 4096 MB)")
        print(f"headline: {r['headline']}")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
