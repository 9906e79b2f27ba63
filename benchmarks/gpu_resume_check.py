"""Kill −9 mid-task and resume, on the GPU (benchmarks/gpu_check.sh): an uninterrupted run and, in parallel, the same
run SIGKILLed as soon as task 0's checkpoint and an epoch checkpoint exist, then resumed in a new process; their
results are compared, and every step loop of the three processes reports its host syncs (CUDA:
`torch.cuda.set_sync_debug_mode("warn")`, counted) and where AdamW's `step` counters live (the host, after a resume
too). One JSON line `RESUME {...}` on stdout; its `ok` is true when both runs finished with equal accuracy matrices,
no step loop after a process's first (which compiles) made a host sync, and AdamW's counters stayed on the host.
`--twice` adds a second uninterrupted run (are two runs equal at all on this device?); `--deterministic on` runs all
of them with deterministic kernels (harness/core/determinism.py).

    python benchmarks/gpu_resume_check.py ROOT                         # pm on split-digits-2x5, device auto
    python benchmarks/gpu_resume_check.py ROOT --device cpu --overrides '{"backbone.preset": "vit-micro-test"}'
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing

BENCHMARK, SEED = "split-digits-2x5", 3
DEFAULT_OVERRIDES = {"train.epochs": 6, "train.epoch_repeats": 4}


def _cfg(args):
    from harness.resolve import resolve

    return resolve(BENCHMARK, args.method, seed=SEED, overrides={**DEFAULT_OVERRIDES, **json.loads(args.overrides)})


def child(args, root: Path, tag: str) -> None:
    """One run of the cell in this process, its step loops watched; the per-loop records go to ROOT/syncs-TAG.json."""
    import warnings

    import torch

    from harness.config import ExecConfig
    from harness.train import trainer
    from harness.train.run import execute

    stats: list[dict] = []
    original = trainer.run_epoch

    def watched(s, task, opt, batches, watch, heads):
        step_on = sorted({str(st["step"].device) for st in opt.state.values() if "step" in st})
        cuda = s.device.type == "cuda"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if cuda:
                torch.cuda.set_sync_debug_mode("warn")
            try:
                original(s, task, opt, batches, watch, heads)
            finally:
                if cuda:
                    torch.cuda.set_sync_debug_mode(0)
        syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
        where = collections.Counter(f"{'/'.join(Path(w.filename).parts[-2:])}:{w.lineno}" for w in syncs)
        stats.append({"task": task.index, "steps": len(watch.losses), "syncs": len(syncs),
                      "where": where.most_common(3), "adam_step_on": step_on})
        (root / f"syncs-{tag}.json").write_text(json.dumps(stats))

    trainer.run_epoch = watched
    execute(_cfg(args), ExecConfig(progress=False, device=args.device, deterministic=args.deterministic), root)


def spawn(args, root: Path, tag: str) -> subprocess.Popen:
    root.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, str(root), "--child", tag, "--method", args.method, "--device", args.device,
           "--overrides", args.overrides, "--deterministic", args.deterministic]
    return subprocess.Popen(cmd, stdout=open(root / f"{tag}.log", "w"), stderr=subprocess.STDOUT)


def _mid_task_1(d: Path) -> bool:
    """Task 0's checkpoint exists and an epoch checkpoint was written after it (an epoch of task 1 is done; the epoch
    file of task 0's last epoch is removed just after the task checkpoint is written, and is older than it)."""
    try:
        return (d / "checkpoint.epoch.pt").stat().st_mtime_ns > (d / "checkpoint.pt").stat().st_mtime_ns
    except FileNotFoundError:
        return False


def compare(args, root: Path) -> dict:
    from harness.store import run_dir

    cfg = _cfg(args)
    clean_root, killed_root, again_root = root / "clean", root / "killed", root / "again"
    t0 = time.time()
    clean, victim = spawn(args, clean_root, "clean"), spawn(args, killed_root, "killed")
    again = spawn(args, again_root, "again") if args.twice else None  # a second uninterrupted run: run-to-run noise
    d = run_dir(cfg, killed_root)
    out: dict = {"method": args.method, "deterministic": args.deterministic, "killed_after_s": None}
    while victim.poll() is None:
        if _mid_task_1(d):
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait()
            out["killed_after_s"] = round(time.time() - t0, 1)
            break
        time.sleep(0.01)
    out["victim_rc"] = victim.returncode
    if out["killed_after_s"] is not None:
        import torch

        try:
            e = torch.load(d / "checkpoint.epoch.pt", map_location="cpu", weights_only=False)
            out["epoch_checkpoint_at_kill"] = f"task {e['task']}, epochs done {e['epochs_done']}"
        except Exception as exc:  # noqa: BLE001 - reported, not fatal: the resume decides
            out["epoch_checkpoint_at_kill"] = f"unreadable: {type(exc).__name__}"
    resumed = spawn(args, killed_root, "resumed")
    resumed.wait()
    clean.wait()
    if again is not None:
        again.wait()
    out["rc"] = {"clean": clean.returncode, "resumed": resumed.returncode}
    results = {}
    for tag, r in (("clean", clean_root), ("resumed", killed_root), ("again", again_root)):
        f = run_dir(cfg, r) / "result.json"
        results[tag] = json.loads(f.read_text()) if f.exists() else None
    events = run_dir(cfg, killed_root) / "events.log"
    if events.exists():
        out["resume_events"] = [line.split(" ", 4)[-1] for line in events.read_text().splitlines() if "resumed" in line]
    a, b = results["clean"], results["resumed"]
    if a and b:
        flat = [x for row in a["acc_matrix"] for x in row], [x for row in b["acc_matrix"] for x in row]
        out.update(device=a["env"].get("device"), acc_equal=a["acc_matrix"] == b["acc_matrix"],
                   acc_max_abs_diff=max(abs(x - y) for x, y in zip(*flat)),
                   records_equal=a["method_records"] == b["method_records"], grad_norms_equal=a["grad_norms"] == b["grad_norms"])
    if a and results["again"]:  # two uninterrupted runs: equal unless the device's kernels are not deterministic
        out["uninterrupted_twice_acc_equal"] = a["acc_matrix"] == results["again"]["acc_matrix"]
        out["uninterrupted_twice_grad_norms_equal"] = a["grad_norms"] == results["again"]["grad_norms"]
    for tag, r in (("clean", clean_root), ("killed", killed_root), ("resumed", killed_root)):
        f = r / f"syncs-{tag}.json"
        if f.exists():
            loops = json.loads(f.read_text())
            out[f"{tag}_loops"] = len(loops)
            out[f"{tag}_syncs"] = sum(e["syncs"] for e in loops)
            # a process's first step loop compiles (torch.compile's passes and autotuning synchronise): its syncs
            # are a one-off cost; the steady-state loops after it must make none
            out[f"{tag}_syncs_after_first_loop"] = sum(e["syncs"] for e in loops[1:])
            out[f"{tag}_adam_step_on"] = sorted({d for e in loops for d in e["adam_step_on"]})
            out[f"{tag}_sync_sites"] = [e["where"] for e in loops if e["syncs"]][:3]
    out["ok"] = bool(a and b and out.get("acc_equal") and out["rc"] == {"clean": 0, "resumed": 0}
                     and out.get("resumed_adam_step_on") in (["cpu"], [])
                     and all(out.get(f"{t}_syncs_after_first_loop", 0) == 0 for t in ("clean", "killed", "resumed")))
    return out


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path)
    p.add_argument("--method", default="pm")
    p.add_argument("--device", default="auto")
    p.add_argument("--overrides", default="{}", help="JSON: config overrides on top of epochs 6 × 4 passes")
    p.add_argument("--deterministic", default="off", choices=["off", "on"], help="ExecConfig.deterministic of the runs")
    p.add_argument("--twice", action="store_true", help="also a second uninterrupted run, to tell run-to-run noise "
                   "of the device's kernels from a resume defect")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args, args.root, args.child)
        return None
    out = compare(args, args.root)
    print("RESUME " + json.dumps(out, default=str), flush=True)
    return out


if __name__ == "__main__":
    main()
