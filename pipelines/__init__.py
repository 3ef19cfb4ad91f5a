"""Concrete five-phase pipelines. Task-specific code only; greenknobs finds them by name through
the ``greenknobs.pipelines`` entry-point group in pyproject.toml."""
