"""The test kit that tests/ and benchmarks/ share: the API server and its emulator, the Kubeflow stand-ins, the
fault proxy, free ports, and the TrainingRun documents they apply (`kit.objects`). Not shipped in the wheel."""
