"""From stored results to tables and plots: grid reports, published tables and their verdicts, paired comparisons, sweep selection, the reference of a grid."""
