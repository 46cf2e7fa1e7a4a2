"""Bit allocation: choose one candidate per group. Solvers know nothing of torch."""
