"""One module per continual-learning method. Each registers itself with `@harness.registry.register`;
`clmerge list methods` shows them. To add a method, add a file here (see README, "Adding a method")."""
