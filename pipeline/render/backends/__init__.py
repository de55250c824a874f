"""Renderer backends: each module here registers one (pipeline/render/registry.py).

A module must stay light at import (no torch, no model code): the settings loader imports every one
of them to learn their `[render.<name>]` sections. Heavy imports go inside the build function.
"""
