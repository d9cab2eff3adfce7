"""Test and example models: synthetic builders, bundled examples, the zoo loader."""
