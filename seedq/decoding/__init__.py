"""Decoding: sampling math, model adapters and the ar/batch/sd/mcsd/seed engines."""
