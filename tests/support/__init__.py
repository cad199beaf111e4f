"""Test helpers that do not depend on pytest (usable from scripts too)."""
