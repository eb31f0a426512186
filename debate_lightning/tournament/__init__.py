"""Tournaments: schedules, append-only results, metrics and reports (knows no optimiser)."""
