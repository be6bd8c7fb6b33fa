"""The ``gpuprune`` command line: a thin layer where each command maps to one library call."""
