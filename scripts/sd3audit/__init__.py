"""The parity audit behind scripts/audit.py: random real-layout weights, the diffusers reference,
forward hooks on paired modules, and the report. Imports diffusers and transformers, which the
library itself never does."""
