"""A shim: the project's metadata and packages live in pyproject.toml."""
from setuptools import setup

setup()
