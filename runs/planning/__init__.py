"""Before launch: run-config presets, the checks that name a field and its fix, what the reference trainer can
run, and the plan (parameters, memory per GPU, compute and time) the form shows as fields change."""
