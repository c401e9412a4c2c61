"""Workflow YAML files, installed with the package so `cslr-pipe demo` finds its own."""
