"""clmerge engine, in rooms along the data flow (lowest first; a room imports only itself and the rooms before it,
tests/test_architecture.py):

    core      errors, schema checks, atomic I/O, paths, seeding, environment records, Markdown, autocast
    model     named ViT presets, the LoRA ViT with per-task heads, the shipped weights
    math      merge coefficients, task-vector merges, Fisher, subspaces, trajectory merging, CL metrics
    config    RunConfig (a cell, hashed into its run id), TrainConfig, ExecConfig
    data      spec → prepare/cache → sources and splits → augmentation and image banks → task stream
    method    the Method base class and `register`: `from harness.method import Method, register`
    resolve   defaults + spec + protocol + overrides → one cell's RunConfig
    store     results/runs/<benchmark>/<method>/<run_id>/: locks, events, atomic result.json
    train     one cell: setup, the shared loop, checkpoints, execution, tracking, compile
    dispatch  many cells: grids, sweeps, pre-flight, plans, local/debug/SLURM executors, status
    report    grid reports, published tables and verdicts, paired comparisons, selection, references
    cli       the `clmerge` command

Nothing heavy is imported here so that `clmerge --help` stays fast; import the submodules you need.
"""

__version__ = "0.1.0"
