"""Test support that ships with greenknobs (as Optuna ships its sampler test cases):

    fixtures        tiny config-built models, small CSVs, a tiny experiment, a one-call trial runner
    knob_contract   the contract every knob keeps: ``check_knob(name, pipeline)`` in one line
    meter_contract  the contract every meter keeps: ``check_meter(meter)`` in one line
    fakes           a fake NVML and a fake RAPL powercap tree, so GPU/RAPL paths run without hardware
"""
