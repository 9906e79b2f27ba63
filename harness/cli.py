"""`clmerge` command line. Heavy libraries are imported inside the commands so `clmerge --help` is instant."""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import time

from harness.core.errors import ConfigError, unknown


def _add_exec(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run")
    p.add_argument("--deterministic", default=os.environ.get("CLMERGE_DETERMINISTIC", "off"), choices=["off", "on"],
                   help="deterministic CUDA kernels: a resumed GPU run equals an uninterrupted one bit for bit, "
                        "slower (default: off, or CLMERGE_DETERMINISTIC; CPU runs are deterministic either way)")
    _add_log(p)


def _add_log(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log", default=None, choices=["tensorboard", "wandb"],
                   help="optional experiment tracking under <results>/tracking/ (needs the package; off by default)")


def _add_rerun_stale(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rerun-stale", action="store_true",
                   help="run again the finished cells whose code changed since they ran (default: keep them, "
                        "reported as stale)")


def _add_against(p: argparse.ArgumentParser) -> None:
    p.add_argument("--against", default="seq-lora", metavar="M1,M2",
                   help="reference method(s) of the paired comparison in the report (default: seq-lora; '' for none)")


def _methods_arg(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def cmd_list(args) -> int:
    if args.what == "methods":
        from harness.method.registry import get_method, method_names

        for name in method_names():
            cls = get_method(name)
            tag = " [reconstruction]" if cls.reconstruction else ""
            print(f"{name:<18} {cls.description}{tag}")
    elif args.what == "benchmarks":
        from harness.data.spec import available_benchmarks, load_spec

        from harness.data.cache import is_prepared

        for name in available_benchmarks():
            spec = load_spec(name)
            state = ""
            if spec.source.kind == "images":
                state = f"  [protocol {spec.protocol}; " + ("prepared]" if is_prepared(spec) else "not prepared]")
            print(f"{name:<18} {spec.description}{state}")
    elif args.what == "protocols":
        from harness.data.protocol import available_protocols, load_protocol

        for name in available_protocols():
            print(f"{name:<18} {load_protocol(name).description}")
    elif args.what == "backbones":
        from harness.model.backbone import PRESETS

        for p in PRESETS.values():
            print(f"{p.name:<24} {p.description}")
    elif args.what == "grids":
        from harness.dispatch.grid import available_grids, load_grid

        for name in available_grids():
            print(f"{name:<18} {load_grid(name).description}")
    elif args.what == "tables":
        from harness.report.leaderboard import list_tables

        for name, description in list_tables():
            print(f"{name:<18} {description}")
    return 0


def cmd_run(args) -> int:
    from harness.config import ExecConfig, check_seed, parse_set
    from harness.resolve import resolve
    from harness.train.run import execute

    from harness.dispatch import preflight
    from harness.train.tracking import check_backend

    check_seed(args.seed, "--seed")
    check_seed(args.order_seed, "--order-seed", optional=True)
    cfg = resolve(args.benchmark, args.method, args.seed, args.order_seed, parse_set(args.set or []), where="--set")
    check_backend(args.log)
    readiness = preflight.check([cfg])
    if not readiness.ok:
        print(preflight.message(readiness, f"{cfg.benchmark} × {cfg.method}", skip_hint=False), file=sys.stderr)
        return 2
    outcome = execute(cfg, ExecConfig(device=args.device, threads=args.threads, log=args.log,
                                      deterministic=args.deterministic,
                                      rerun_stale=args.rerun_stale), force=args.force)
    print(f"{outcome.status}: {outcome.run_dir}" + (f" ({outcome.message})" if outcome.message else ""))
    if args.log and outcome.status == "skipped":
        print(_nothing_logged(1, args.log), file=sys.stderr)
    if outcome.status in ("done", "skipped"):
        from harness.core.io import read_json

        m = read_json(os.path.join(outcome.run_dir, "result.json"))["metrics"]
        ta = m.get("task_aware_a_last", math.nan)  # NaN in domain-il: one head, no task-aware accuracy
        print(f"A_last {100 * m['a_last']:.2f}  A_avg {100 * m['a_avg']:.2f}  forgetting (Chaudhry) {100 * m['forgetting']:.2f}"
              + (f" (mammoth) {100 * m['forgetting_mammoth']:.2f}" if "forgetting_mammoth" in m else "") + "  "
              + (f"task-aware A_last {100 * ta:.2f}" if ta == ta else "task-aware: none (domain-il)")
              + "  (accuracy after each task: "
              + ", ".join(f"{100 * a:.1f}" for a in m["acc_curve"]) + ")")
    return 0 if outcome.status in ("done", "skipped") else 1


def _target(name_or_file: str, seeds: int | None = None, against: str = "", focus: list[str] | None = None):
    """A grid (file or name in grids/) or a published table: (name, cells, function printing its report; `focus`:
    the methods whose paired rows it shows, all when None)."""
    if _is_grid(name_or_file):
        from harness.dispatch.grid import expand, load_grid

        grid = load_grid(name_or_file)
        if seeds is not None:
            raise ConfigError(f"--seeds {seeds}: {name_or_file} is a grid, which runs the seeds its file lists "
                              f"(seeds: {grid.seeds} in {grid.file}); --seeds is for published tables. Edit the "
                              "grid's seeds (or a copy of it) instead")
        return grid.name, _grid_cells(grid), lambda: _print_report(grid.name, expand(grid), grid,
                                                                   _methods_arg(against), focus)
    from harness.report.leaderboard import available_tables, table_cells, write_report

    if name_or_file not in available_tables():
        from harness.dispatch.grid import available_grids

        raise unknown("grid or table", name_or_file, sorted(set(available_grids()) | set(available_tables())))

    def show() -> None:
        md, paths = write_report(name_or_file, seeds=seeds)
        print(md)
        for kind, path in paths.items():
            print(f"{kind}: {path}")

    return name_or_file, table_cells(name_or_file, seeds=seeds), show


def _grid_cells(grid, tuning=None) -> list:
    """A grid's cells: its expansion, then (tuned sweeps with refit) the refit cells of the selections the finished
    sweep cells settle (harness/report/selection.py refit_cells)."""
    from harness.dispatch.grid import expand
    from harness.report.grid_report import collect
    from harness.report.selection import refit_cells

    tuning = tuning if tuning is not None else expand(grid)
    if not (grid.tune and grid.refit and (grid.sweep or grid.method_sweep)):
        return tuning
    ids = {c.run_id() for c in tuning}
    return tuning + [c for c in refit_cells(grid, tuning, collect(tuning)) if c.run_id() not in ids]


def _run_grid(name_or_file: str, args, report_after: bool, pack: bool = False) -> int:
    from harness.dispatch.executors import dispatch
    from harness.train.run import clear

    from harness.dispatch import plan
    from harness.dispatch import preflight
    from harness.train.tracking import check_backend

    check_backend(args.log)
    seeds = args.seeds if args.command == "reproduce" else None  # `compare --seeds` is its own (already applied)
    name, cells, show_report = _target(name_or_file, seeds, args.against, getattr(args, "focus", None))
    if not cells:
        print(f"{name}: no runnable cells yet (their benchmarks or methods are not implemented)")
    readiness = preflight.check(cells)
    if args.dry_run:
        print(plan.render(name, cells, readiness, _resolved_table(name_or_file, seeds),
                          rerun_stale=args.rerun_stale, setting_of=_setting_labeler(name_or_file)))
        note = _refit_note(name_or_file, cells)
        if note:
            print("\n" + note)
        return 0
    if not readiness.ok:
        if not args.skip_unready:
            print(preflight.message(readiness, name), file=sys.stderr)
            return 2
        print(f"--skip-unready: skipping {len(readiness.unready)} cells with missing inputs "
              + "; ".join(f"{p.kind}: {p.subject} ({len(p.cells)})" for p in readiness.problems))
        cells = readiness.ready
    if args.executor == "slurm":
        return _run_grid_slurm(name, cells, args, show_report if report_after else None)
    if args.profile or args.wait:
        raise ConfigError("--profile and --wait are for --executor slurm")
    if args.force:
        for c in cells:
            clear(c)
    if args.retry_failed:
        cells = _failed(cells)
        print(f"--retry-failed: {len(cells)} failed cell(s) to run again")
    per_job = args.cells_per_job or 1
    if args.cells_per_job is None and pack and args.executor == "local":
        # `reproduce`: small CPU cells, so about three jobs per worker instead of one process per cell.
        workers = args.max_parallel or os.cpu_count() or 1
        per_job = max(1, -(-len(cells) // (3 * workers)))
    start = time.time()
    setting_of = _setting_labeler(name_or_file)
    outcomes = dispatch(cells, executor=args.executor, max_parallel=args.max_parallel, cells_per_job=per_job,
                        track=args.log, rerun_stale=args.rerun_stale, setting_of=setting_of)
    refit = _new_refit_cells(name_or_file, cells, args)
    if refit:  # the sweep settled: retrain the selected settings on all training data
        print(f"refit: {len(refit)} cell(s) of the selected settings, trained on all training data")
        outcomes += dispatch(refit, executor=args.executor, max_parallel=args.max_parallel, cells_per_job=per_job,
                             track=args.log, rerun_stale=args.rerun_stale,
                             setting_of=(lambda c: f"{setting_of(c)}, refit") if setting_of else None)
    wall_s = time.time() - start if any(o.status == "done" for o in outcomes) else None
    finished_before = sum(o.status == "skipped" for o in outcomes)
    if args.log and finished_before:
        print(_nothing_logged(finished_before, args.log), file=sys.stderr)
    failed = [o for o in outcomes if o.status == "failed"]
    if report_after:
        show_report()
    differs = 0
    if pack and _is_grid(name_or_file):
        differs = _against_reference(name, cells, getattr(args, "update_reference", False), wall_s)
    if failed:
        print(f"\n{len(failed)} cell(s) failed:", file=sys.stderr)
        for o in failed:
            print(f"  {o.benchmark} × {o.method} × seed {o.seed} (run {o.run_id}): {o.message}", file=sys.stderr)
        return 1
    return differs


def _nothing_logged(n: int, backend: str) -> str:
    return (f"--log {backend}: {n} cell(s) had already finished and were not run, so nothing was logged for them "
            "(tracking records a run as it trains); add --force to run them again with tracking")


def _against_reference(name: str, cells, update: bool, wall_s: float | None) -> int:
    """`reproduce GRID`: compare the finished cells with the grid's committed reference (1 if a row is not
    reproduced), or with --update-reference write the reference from them."""
    from harness.report.grid_reference import all_reproduced, compare, load_reference, render, write_reference
    from harness.report.grid_report import collect
    from harness.store import load_result

    runs = collect(cells)
    if update:
        env = dict(load_result(cells[0])["env"]) if runs["done"].all() else {}
        path = write_reference(name, runs, env, f"clmerge reproduce {name} --update-reference", wall_s)
        print(f"\nreference written: {path} ({len(runs)} cells); commit it with the README table it backs")
        return 0
    reference = load_reference(name)
    if reference is None:
        return 0
    rows = compare(runs, reference)
    print("\n" + render(rows, reference, name))
    return 0 if all_reproduced(rows) else 1


def _refit_note(name_or_file: str, cells) -> str:
    """For the plan of a tuned sweep with refit: which selections are settled (their refit cells are in the plan)."""
    if not _is_grid(name_or_file):
        return ""
    from harness.dispatch.grid import load_grid

    grid = load_grid(name_or_file)
    if not (grid.tune and grid.refit and (grid.sweep or grid.method_sweep)):
        return ""
    pairs = {(c.benchmark, c.method) for c in cells if c.tune}
    settled = {(c.benchmark, c.method) for c in cells if not c.tune}
    return (f"refit: each benchmark × method's selected setting is retrained on all training data (tune off) once its "
            f"sweep cells are finished; {len(settled)} of {len(pairs)} selections settled (their refit cells are "
            "listed above with ', refit'), the others follow when their sweep finishes.")


def _new_refit_cells(name_or_file: str, cells, args) -> list:
    """Refit cells the finished sweep now settles that `cells` did not hold (none with --retry-failed)."""
    if not _is_grid(name_or_file) or args.retry_failed:
        return []
    from harness.dispatch.grid import load_grid

    grid = load_grid(name_or_file)
    tuning = [c for c in cells if c.tune or not grid.tune]
    ids = {c.run_id() for c in cells}
    return [c for c in _grid_cells(grid, tuning) if c.run_id() not in ids]


def _setting_labeler(name_or_file: str):
    """For a grid with a sweep: cell → its setting label ('epsilon=0.25'), shown by the plan, progress and status;
    None otherwise."""
    if not _is_grid(name_or_file):
        return None
    from harness.dispatch.grid import load_grid
    from harness.dispatch.sweep import method_keys, setting_label

    grid = load_grid(name_or_file)
    if not (grid.sweep or grid.method_sweep):
        return None
    refit = lambda cell: ", refit" if grid.tune and not cell.tune else ""  # noqa: E731
    return lambda cell: setting_label(cell, list(method_keys(grid, cell.method))) + refit(cell)


def _resolved_table(name_or_file: str, seeds):
    """The resolved published table behind `name_or_file` (for the plan), None for a grid."""
    if _is_grid(name_or_file):
        return None
    from harness.report.leaderboard import resolve_table

    return resolve_table(name_or_file, seeds)


def _failed(cells):
    from harness.dispatch.status import cell_statuses

    return [s.cfg for s in cell_statuses(cells) if s.state == "failed"]


def _run_grid_slurm(name: str, cells, args, show_report) -> int:
    """Submit the unfinished cells as job arrays that fit the cluster and return (default: a grid can run for days; `status` follows
    it), or with --wait block until every cell is done or failed, then report."""
    from harness.dispatch.slurm import load_profile, submit, wait
    from harness.dispatch.slurm_queue import slurm_available
    from harness.dispatch.status import cell_statuses, format_statuses
    from harness.train.run import clear

    if not args.profile:
        raise ConfigError("--executor slurm needs --profile slurm/NAME.yaml (see slurm/example.yaml)")
    if args.log:
        raise ConfigError("--log: experiment tracking runs with the local and debug executors, not --executor slurm")
    if args.cells_per_job not in (None, 1) or args.max_parallel:
        raise ConfigError("--cells-per-job/--max-parallel are for the local executor; on SLURM the profile's `pack` sets "
                          "the cells per array element and its array_parallelism caps how many run at once")
    profile = load_profile(args.profile)
    unavailable = slurm_available()
    if unavailable:
        raise ConfigError(f"--executor slurm: {unavailable}")
    if args.force:
        busy = {s.cfg.run_id() for s in cell_statuses(cells) if s.state in ("pending", "running")}
        for c in cells:
            if c.run_id() not in busy:  # never pull a run directory from under a live job
                clear(c)
    sub = submit(cells, profile, grid=name, retry_failed=args.retry_failed, wait_for_room=args.wait,
                 rerun_stale=args.rerun_stale)
    reasons: dict[str, int] = {}
    for why in sub.skipped.values():
        reasons[why.split(" (")[0]] = reasons.get(why.split(" (")[0], 0) + 1
    if reasons:
        print("not submitted: " + ", ".join(f"{n} {k}" for k, n in reasons.items()))
    where = args.file if hasattr(args, "file") else args.table
    results_opt = f"--results {shlex.quote(os.environ['CLMERGE_RESULTS'])} " if os.environ.get("CLMERGE_RESULTS") else ""
    if not args.wait:
        print(f"watch with:  clmerge {results_opt}status {where}\n"
              f"then:        clmerge {results_opt}report {where}   (failed cells: clmerge {results_opt}grid {where} "
              f"--executor slurm --profile {args.profile} --retry-failed)")
        return 0
    statuses = wait(cells)
    failed = [s for s in statuses if s.state not in ("done", "stale")]
    if show_report is not None:
        show_report()
    if failed:
        print("\n" + format_statuses(failed), file=sys.stderr)
        return 1
    return 0


def _print_report(name: str, cells, grid=None, against: list[str] = (), focus: list[str] | None = None) -> None:
    from harness.report.grid_report import report

    md, paths = report(name, cells, grid=grid, against=against, focus=focus)
    print(md)
    for kind, path in paths.items():
        print(f"{kind}: {path}")


def cmd_grid(args) -> int:
    return _run_grid(args.file, args, report_after=args.report)


def cmd_reproduce(args) -> int:
    return _run_grid(args.table, args, report_after=True, pack=True)


def cmd_compare(args) -> int:
    """`clmerge compare`: the method and its references × one benchmark × seeds, run through the executor (only
    the missing cells), then the paired table."""
    from harness.config import parse_set
    from harness.core.io import atomic_write_text
    from harness.core.paths import results_dir
    from harness.dispatch.grid import expand
    from harness.report.compare import compare_grid

    against = _methods_arg(args.against)
    if not against:
        raise ConfigError("--against: give at least one reference method, e.g. --against seq-lora")
    if args.seeds < 2:
        raise ConfigError(f"--seeds {args.seeds}: a paired comparison needs at least 2 seeds (one pair gives no "
                          "interval and no test); use --seeds 5 (the default; fewer than 5 get a warning) or more")
    import yaml

    grid = compare_grid(args.method, against, args.benchmark, args.seeds, parse_set(args.set or []),
                        _parse_sweep(args.sweep or []))
    expand(grid)  # every check before anything runs (or is written)
    # The grid as a file: `status`/`report`/`--retry-failed` work on it like on any grid.
    path = results_dir() / "grids" / f"{grid.name}.yaml"
    atomic_write_text(path, yaml.safe_dump({k: v for k, v in grid.__dict__.items() if k != "file"}, sort_keys=False))
    args.against, args.file, args.focus = ",".join(against), str(path), [args.method]
    return _run_grid(str(path), args, report_after=True)


def _parse_sweep(items: list[str]) -> dict:
    """`['method.epsilon=0.25,0.5']` → {'method.epsilon': [0.25, 0.5]} (each value read as YAML, like --set)."""
    from harness.config import parse_set

    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        values = [v for v in raw.split(",") if v.strip()]
        if not sep or not key.strip() or not values:
            raise ConfigError(f"--sweep {item!r}: expected KEY=V1,V2,..., e.g. --sweep method.epsilon=0.25,0.5,1")
        out[key.strip()] = [parse_set([f"{key}={v.strip()}"])[key.strip()] for v in values]
    return out


def cmd_status(args) -> int:
    from harness.dispatch.status import cell_statuses, format_statuses

    statuses = cell_statuses(_target(args.file)[1], tail_lines=args.lines)
    print(format_statuses(statuses, _setting_labeler(args.file)))
    return 1 if any(s.state == "failed" for s in statuses) else 0


def _is_grid(name: str) -> bool:
    from harness.dispatch.grid import available_grids

    return os.path.exists(name) or name in available_grids()


def cmd_report(args) -> int:
    """A grid's report (mean ± std per benchmark × method), or a published table's (ours vs paper, verdicts)."""
    _, _, show_report = _target(args.file, args.seeds, args.against)
    show_report()
    return 0


def cmd_stream(args) -> int:
    """Tasks and their classes (names where known): from the prepared cache of an image benchmark, from the
    benchmark's known class names (counts unknown) when it is not prepared yet."""
    import numpy as np

    from harness.data.cache import is_prepared
    from harness.data.protocol import run_spec
    from harness.data.sources import load_source
    from harness.data.stream import build_stream, stream_of
    from harness.resolve import resolve

    overrides = {"protocol": args.protocol} if args.protocol else {}
    cfg = resolve(args.benchmark, "seq-lora", order_seed=args.order_seed, overrides=overrides, where="stream")
    spec = run_spec(cfg)
    prepared = spec.source.kind != "images" or is_prepared(spec)
    if prepared:
        data = load_source(spec)
        names, split = data.class_names, data.split_hash[:12]
        stream = stream_of(spec, cfg.order_seed, data)
    else:
        names = sorted(spec.source.class_names) if spec.source.class_names else [str(c) for c in range(spec.num_classes)]
        split = "not prepared"
        empty = np.zeros(0, dtype=np.int64)
        stream = build_stream(spec, cfg.order_seed, empty, empty)
    order = spec.class_order if isinstance(spec.class_order, str) else "explicit"
    seed = f" (seed {cfg.order_seed})" if cfg.order_seed is not None else ""
    proto = f", protocol {cfg.protocol}" if cfg.protocol else ""
    print(f"{spec.name}: {len(stream.tasks)} tasks, class order {order}{seed}{proto}, split {split}")
    for t in stream.tasks:
        shown = ", ".join(f"{c}:{names[c]}" if names[c] != str(c) else str(c) for c in t.classes)
        counts = f"{len(t.train_indices)} train / {len(t.test_indices)} test — " if prepared else ""
        print(f"task {t.index}: {counts}domain {t.domain}, all {t.num_classes} classes" if t.domain is not None
              else f"task {t.index}: {counts}classes {shown}")
    if not prepared:
        from harness.data.cache import prepare_command

        print(f"(not prepared: class ids only where names are unknown; run `{prepare_command(spec)}`)")
    return 0


def cmd_pretrain(args) -> int:
    """Rerun a clmerge-pretrained backbone's recipe and compare the result's SHA-256 with the shipped file's."""
    import torch

    from harness.model.backbone import PRESETS
    from harness.model.pretrain import regenerate

    if args.preset not in PRESETS:
        raise unknown("backbone preset", args.preset, [n for n, p in PRESETS.items() if p.pretrain_recipe], "pretrain")
    if args.threads:
        torch.set_num_threads(args.threads)
    r = regenerate(PRESETS[args.preset], force=args.force)
    print(f"{args.preset}: recipe {PRESETS[args.preset].pretrain_recipe} → {r.path}\nSHA-256 {r.sha256}")
    if r.matches:
        print("matches the shipped weights: this machine reproduces the pre-training bit for bit")
        return 0
    print(f"differs from the shipped weights ({r.pinned}). Expected on another CPU or thread count (float kernels "
          "differ); runs keep loading the shipped file. To train on this file instead: "
          f"--set backbone.weights={r.path}")
    return 1


def cmd_prepare(args) -> int:
    from harness.data.prepare import prepare
    from harness.data.spec import load_spec

    prepare(
        load_spec(args.benchmark),
        source=args.source,
        split_files=args.split_file,
        classes_file=args.classes,
        storage_size=args.storage_size,
        workers=args.workers,
        skip_corrupt=args.skip_corrupt,
        force=args.force,
    )
    return 0


def _grid_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executor", default="local", choices=["local", "debug", "slurm"],
                   help="submitit executor (default: local); slurm submits job arrays that fit the cluster and returns")
    p.add_argument("--profile", default=None, metavar="slurm/NAME.yaml", help="SLURM profile (file or name in slurm/)")
    p.add_argument("--wait", action="store_true", help="slurm: keep submitting as the queue frees up, then block until every cell finished or failed")
    p.add_argument("--retry-failed", action="store_true",
                   help="run only the cells that failed (error recorded, or their job ended without a result)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (cells to run / done / failed per benchmark × method, inputs, overrides); run nothing")
    p.add_argument("--skip-unready", action="store_true",
                   help="run the cells whose inputs are ready; skip (and name) those with missing data or weights")
    p.add_argument("--max-parallel", type=int, default=None, help="jobs in flight at once (local; default: CPU count)")
    p.add_argument("--cells-per-job", type=int, default=None,
                   help="cells run one after another in each job (default: 1 for grid; reproduce packs ~3 jobs per worker)")
    p.add_argument("--force", action="store_true", help="delete the grid's results and run every cell again")
    _add_rerun_stale(p)
    _add_log(p)
    _add_against(p)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="clmerge", description="Continual learning by model merging on pre-trained ViTs.")
    ap.add_argument("--results", default=None, help="results directory (default: ./results of the checkout, or $CLMERGE_RESULTS)")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list methods, benchmarks, backbones, grids or published tables")
    p.add_argument("what", choices=["methods", "benchmarks", "protocols", "backbones", "grids", "tables"])
    p.set_defaults(fn=cmd_list)

    p = sub.add_parser("run", help="run one cell in the foreground")
    p.add_argument("--benchmark", required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--order-seed", type=int, default=None, help="class-order seed (default: the benchmark's)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. train.epochs=3, method.epsilon=0.5")
    p.add_argument("--force", action="store_true", help="run again even if finished")
    _add_rerun_stale(p)
    _add_exec(p)
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("grid", help="run a grid's unfinished cells through submitit")
    p.add_argument("file", help="grid YAML file, or a name in grids/")
    p.add_argument("--report", action="store_true", help="print the report when done (slurm: with --wait)")
    _grid_args(p)
    p.set_defaults(fn=cmd_grid)

    p = sub.add_parser("reproduce", help="run a published table's (or a grid's) missing cells, then report")
    p.add_argument("table", help="table from `clmerge list tables` (e.g. pm-merging), or a grid (e.g. smoke)")
    p.add_argument("--seeds", type=int, default=None, help="published tables: seeds per cell (default: the table's)")
    p.add_argument("--update-reference", action="store_true",
                   help="grids: write results/reference/grids/GRID.json from this run (maintainers; commit it)")
    _grid_args(p)
    p.set_defaults(fn=cmd_reproduce)

    p = sub.add_parser("status", help="every cell of a grid: done / running / pending / failed (+ log tail), job, time")
    p.add_argument("file", help="grid YAML file, a name in grids/, or a published table")
    p.add_argument("--lines", type=int, default=12, help="log lines shown per failed cell (default: 12)")
    p.set_defaults(fn=cmd_status)

    p = sub.add_parser("report", help="tables (Markdown, CSV; LaTeX for published tables) and plots of finished cells")
    p.add_argument("file", help="grid YAML file, a name in grids/, or a published table (clmerge list tables)")
    p.add_argument("--seeds", type=int, default=None, help="published tables: seeds per cell (default: the table's)")
    _add_against(p)
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("compare", help="a method against reference methods on one benchmark: run what is missing, "
                                          "print the paired table")
    p.add_argument("--method", required=True)
    p.add_argument("--benchmark", required=True)
    p.add_argument("--seeds", type=int, default=5,
                   help="training seeds 0..N-1 (default: 5; fewer get a warning in the paired table)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override for every run (e.g. train.epochs=3)")
    p.add_argument("--sweep", action="append", metavar="KEY=V1,V2",
                   help="sweep a key of --method (e.g. method.epsilon=0.25,0.5,1; repeatable: cartesian product): "
                        "tune: true is set, the setting is selected on validation and retrained on all training data")
    _grid_args(p)
    p.set_defaults(fn=cmd_compare)

    p = sub.add_parser("stream", help="print a benchmark's tasks and classes (names where known)")
    p.add_argument("benchmark")
    p.add_argument("--order-seed", type=int, default=None, help="class-order seed (default: the protocol's)")
    p.add_argument("--protocol", default=None, help="protocol preset (image benchmarks; default: the benchmark's)")
    p.set_defaults(fn=cmd_stream)

    p = sub.add_parser("pretrain", help="rerun the pre-training recipe of clmerge's own backbone; compare with the "
                                        "shipped weights' SHA-256")
    p.add_argument("preset", nargs="?", default="vit-tiny-digits-mnist", help="backbone preset (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="train again even if this machine's result is cached")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.set_defaults(fn=cmd_pretrain)

    p = sub.add_parser("prepare", help="decode an image benchmark once into the memory-mapped cache runs read")
    p.add_argument("benchmark")
    p.add_argument("--source", default=None,
                   help="a local folder (root/<class>/<image>, train/+test/, CUB or DomainNet archive layout) or a "
                        "Hugging Face Hub id (default: the benchmark's Hub id)")
    p.add_argument("--split-file", action="append", default=None, metavar="FILE",
                   help="external split (repeatable): a train/test folder, a path list (*train*.txt / *test*.txt), "
                        "a CODA-Prompt yaml, or a manifest JSON")
    p.add_argument("--classes", default=None, metavar="FILE", help="class subset, one name per line (e.g. DN*)")
    p.add_argument("--storage-size", type=int, default=None, help="stored side S (default: the benchmark's)")
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: CPU count)")
    p.add_argument("--skip-corrupt", action="store_true", help="leave unreadable images out (listed in the manifest)")
    p.add_argument("--force", action="store_true", help="prepare again, replacing the existing cache")
    p.set_defaults(fn=cmd_prepare)
    return ap


def main(argv: list[str] | None = None) -> int:
    from harness.core.errors import ConfigError, TrainingDiverged

    args = build_parser().parse_args(argv)
    try:
        if args.results:
            os.environ["CLMERGE_RESULTS"] = _results_option(args.results, "--results")
        elif os.environ.get("CLMERGE_RESULTS"):
            _results_option(os.environ["CLMERGE_RESULTS"], "CLMERGE_RESULTS")
        return args.fn(args)
    except (ConfigError, TrainingDiverged) as exc:
        print(f"clmerge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C: each interrupted cell recorded itself as `interrupted` (harness/train/run.py) and keeps its
        # checkpoints; finished cells are untouched. 130 = 128 + SIGINT, the shell's convention.
        print("\nclmerge: interrupted (Ctrl-C). Finished cells are kept; interrupted cells resume from their last "
              "checkpoint when the same command is run again.", file=sys.stderr)
        return 130


def _results_option(path: str, option: str) -> str:
    """`--results DIR` (or $CLMERGE_RESULTS): an existing directory or a path that can become one (not a file)."""
    full = os.path.abspath(path)
    probe = full
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        what = "is a file" if probe == full else f"is under the file {probe}"
        raise ConfigError(f"{option} {path}: {what}, not a directory; give a directory (it is created if missing), "
                          "e.g. --results ./results")
    return full


if __name__ == "__main__":
    sys.exit(main())
