"""Foundations every layer may use: errors, YAML schema checks, atomic (and background) I/O, paths, seeding,
environment records, Markdown tables, the autocast choice, non-blocking device copies and the auto|on|off CUDA
switches."""
