"""Many cells: grids and sweeps, pre-flight checks and plans, local/debug executors, SLURM job arrays and their ledger, cell status."""
