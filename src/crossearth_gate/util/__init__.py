"""Plumbing shared by every command: atomic writes, output checks, one-line errors, console."""
