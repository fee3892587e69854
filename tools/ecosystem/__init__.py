"""Exporters that play mambadiff scenarios on the ecosystem's Mamba2 kernels (docs/external.md)."""
