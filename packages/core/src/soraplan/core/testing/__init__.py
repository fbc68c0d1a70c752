"""Test kits that ship with soraplan: synthetic media and the toy world, for tests, demos and benches."""
