"""One module per continual-learning method. Each registers itself with `@register` (from harness.method.base import Method, register);
`clmerge list methods` shows them. To add a method, add a file here (see docs/adding-a-method.md)."""
