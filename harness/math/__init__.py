"""Pure math of the methods: merge coefficients, task-vector merges, Fisher estimates, subspaces, trajectory merging, continual-learning metrics. Formulas and sources in each docstring."""
