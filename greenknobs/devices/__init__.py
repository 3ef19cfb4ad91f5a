"""Hardware interfaces below the meters and knobs: NVML device discovery and GPU power limits."""
