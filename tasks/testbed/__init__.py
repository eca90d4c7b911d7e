"""The test bed: fixtures for the demo, the tests and the benchmarks, not product. A tiny Llama family
pretrained on the CPU from fixed seeds, with a skill to fine-tune (`build`, `corpus`), and synthetic
Llama-shaped families of any size for the engine's benchmarks (`synthetic`)."""

from .build import PretrainSpec, Testbed, build_testbed

__all__ = ["PretrainSpec", "Testbed", "build_testbed"]
